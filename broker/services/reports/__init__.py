"""Reports: cost reports from the usage ledger, their renderings and schedules; live status."""
