"""Scheduler benchmark: seeded fleets (synthetic, catalog replay, adversarial) and a runner."""
