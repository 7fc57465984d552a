"""Use cases over the database and the providers, one subpackage per stage of a job."""
