"""Test infrastructure shared across areas: local servers and fixtures for real parts."""
