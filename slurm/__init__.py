"""Submission of the stages as SLURM jobs through submitit."""
