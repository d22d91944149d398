"""`pipeline.ssv2.synthetic` for the benchmarks, importable where ffmpeg-python is missing (GPU machines).

That module needs ffmpeg-python only to write .webm files, which no GPU benchmark does (they render
frames and encode them with Pillow). While ffmpeg-python is missing it is imported here with a
stand-in for `ffmpeg` that raises ImportError when used; the stand-in is not left in `sys.modules`,
so any other `import ffmpeg` still fails as it should.
"""

from __future__ import annotations

import importlib
import sys
import types


class _Missing(types.ModuleType):
    """A module whose every attribute raises ImportError (ffmpeg-python is not installed)."""

    def __getattr__(self, name: str):
        raise ImportError(f"ffmpeg-python is not installed (needed for ffmpeg.{name}: writing .webm videos)")


def _import_synthetic() -> types.ModuleType:
    """pipeline.ssv2.synthetic, with a stand-in for ffmpeg-python only while importing it if it is missing."""
    try:
        import ffmpeg  # noqa: F401
    except ImportError:
        pass
    else:
        return importlib.import_module("pipeline.ssv2.synthetic")
    sys.modules["ffmpeg"] = _Missing("ffmpeg")
    try:
        return importlib.import_module("pipeline.ssv2.synthetic")
    finally:
        del sys.modules["ffmpeg"]


synthetic = _import_synthetic()
