"""The data set itself: annotation files, the record of a video inside a shard, which frames a
model sees, JPEG frames to pixels, and a tiny synthetic set in SSv2's format."""
