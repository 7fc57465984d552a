"""Planning: pending jobs and current offers in, a validated plan (and estimates) out."""
