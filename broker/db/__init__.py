"""The database: typed models, engine and sessions, and queries shared by services."""
