"""Reproducible accuracy experiments (each script prints its table; the tables are in docs/)."""
