"""The fields of one planned allocation as ``plan`` reports it, in display order.

Kept apart from ``plan`` so that the CLI can name its columns without loading the
planner (and SQLAlchemy) on ``gpubroker --help``.
"""

ALLOCATION_KEYS = (
    "job",
    "provider",
    "region",
    "zone",
    "instance_type",
    "pricing",
    "nodes",
    "gpus",
    "est_hours",
    "est_cost",
)
