"""Stage 2 (`stages/teacher_cache.py` runs `run.run`): the CLIP model, its loader, the Zarr store."""
