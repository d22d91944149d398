"""Stage 1 (`stages/shards.py` runs `build.run`): the plan of shards, ffmpeg's decode, the builder."""
