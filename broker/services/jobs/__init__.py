"""Jobs: the store of submitted jobs, their states and their event log."""
