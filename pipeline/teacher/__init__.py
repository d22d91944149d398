"""Stage 2 (`stages/teacher_cache.py` runs `run.run`): the CLIP model, its loader and the cache writer;
stage 2b the heads fitted on the cache. The cache's format and reader are in pipeline/cache."""
