"""Telling a file name from a name of something to download (weights tags)."""

from __future__ import annotations

WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")


def looks_like_path(source: str) -> bool:
    """Whether a weights setting names a file (a slash or a weights suffix) rather than a tag."""
    return "/" in source or source.endswith(WEIGHT_SUFFIXES)
