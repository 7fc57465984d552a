"""Offers: the catalog of what providers sell, kept fresh (imports, live refresh, checks)."""
