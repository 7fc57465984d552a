"""Alembic environment and revisions; shipped inside the wheel and run on first use."""
