"""Estimates against current offers.

For a training spec: per GPU type, the cheapest feasible (offer, node count) with its GPUs,
hours, cost, assumed MFU and memory headroom, judged by the planner's own rules; for the
GPU types that cannot run it, why. For an inference spec: per GPU type and user area, the
cheapest offer with the replicas that serve the request rate within the SLO, and the cost
per hour. Calibrations replace the default MFU where one was measured.
"""

from broker.services.planning.estimates.report import EstimateReport, InfeasibleGpu, Option
from broker.services.planning.estimates.service import estimate_spec

__all__ = ["EstimateReport", "InfeasibleGpu", "Option", "estimate_spec"]
