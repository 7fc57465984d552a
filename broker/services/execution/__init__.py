"""Execution: provisioning, running and releasing planned allocations, and whole jobs."""
