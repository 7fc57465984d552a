"""Use cases over the database and the providers: catalog, jobs, planning, execution, reports."""
