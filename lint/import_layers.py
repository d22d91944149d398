"""The import layers, checked (`make lint`): every import runs one way.

    slurm -> stages -> pipeline                      (pipeline imports neither; stages never import slurm)
    inside pipeline, a package imports only packages of a lower level, never one of its own level:
        runtime < accel, config < ssv2 < shards < cache, models < teacher, student < report, sweep, verify, cli

`accel` is the speed machinery (pools, overlap threads, CUDA graphs, kernels): it imports nothing but
`runtime`. `cache` (the teacher cache's format, fingerprints, head records and reader) and `models`
(the students) are what the teacher and student stages share, so neither of those imports the other.
Prints each violation as `file:line: a imports b (rule)` and exits 1 when there is any.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOP = {"pipeline": 0, "stages": 1, "slurm": 2}  # a top package imports only lower ones (or itself)
LEVELS = {
    "runtime": 0,
    "accel": 1,
    "config": 1,
    "ssv2": 2,
    "shards": 3,
    "cache": 4,
    "models": 4,
    "teacher": 5,
    "student": 5,
    "report": 6,
    "sweep": 6,
    "verify": 6,
    "cli": 6,
}
ONLY = {"accel": {"runtime"}}  # packages held to a narrower rule than their level


def _package(module: str) -> tuple[str, str | None]:
    """('pipeline', 'cache') for pipeline.cache.store; ('stages', None) for stages.shards."""
    parts = module.split(".")
    return parts[0], (parts[1] if parts[0] == "pipeline" and len(parts) > 1 else None)


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every absolute import of a project package in `path`, function-level ones included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names] if node.module == "pipeline" else [node.module]
            found += [(node.lineno, n) for n in names]
    return [(line, n) for line, n in found if n.split(".")[0] in TOP]


def violations(root: Path = REPO) -> list[str]:
    """Each import that runs against the layers, as 'file:line: message'."""
    out = []
    for top in TOP:
        for path in sorted((root / top).rglob("*.py")):
            module = ".".join(path.relative_to(root).with_suffix("").parts)
            src_top, src_pkg = _package(module)
            for line, target in _imports(path):
                dst_top, dst_pkg = _package(target)
                where = f"{path.relative_to(root)}:{line}: {module} imports {target}"
                if TOP[dst_top] > TOP[src_top]:
                    out.append(f"{where} ({src_top} is below {dst_top}: slurm -> stages -> pipeline)")
                elif src_top == dst_top == "pipeline" and src_pkg and dst_pkg and src_pkg != dst_pkg:
                    if src_pkg in ONLY and dst_pkg not in ONLY[src_pkg]:
                        out.append(f"{where} (pipeline.{src_pkg} imports only {', '.join(sorted(ONLY[src_pkg]))})")
                    elif LEVELS.get(dst_pkg, 99) >= LEVELS.get(src_pkg, -1):
                        out.append(f"{where} (pipeline.{dst_pkg} is not below pipeline.{src_pkg})")
    return out


def main() -> int:
    """Print the violations; 1 when there is any."""
    found = violations()
    for line in found:
        print(line)
    if found:
        print(f"{len(found)} import(s) against the layers (lint/import_layers.py says which way they run)", file=sys.stderr)
    return int(bool(found))


if __name__ == "__main__":
    sys.exit(main())
