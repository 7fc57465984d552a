"""Pure optimisation: placement of many jobs on offer pools (no database, provider or Ray)."""
