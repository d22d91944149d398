"""One runner for every accuracy experiment: conditions x seeds through the real stages, a result
file per run, tables of mean ± spread.

A study (experiments/proxy_benchmark.py, experiments/frame_flexible.py) says only what differs:
its tables, each a set of conditions (config overrides; `@key=value` picks the prepared base a
condition trains from: its data set, teacher cache and heads), how a run's config is made and how a
base is prepared. The runner does the rest:

- a run is (base, table settings + condition, seed, epochs); its key hashes its base and its whole
  config but the paths, so tables that share a run share its result, and a change of settings (a
  new default in pipeline.yaml included) never reuses an old one, unless it is provably the same
  run (experiments/legacy.py; docs/experiments.md);
- every finished run writes `<work>/results/<key>.json` atomically (its validation curve, top-1 per
  evaluated frame count, the plateau verdict, the teacher head, where the code and device came from);
  a rerun trains only what is missing, and `--export` / `--restore` move results as JSON lines;
- `--parallel N` trains N runs side by side, each a process of its own;
- a table shows mean ± population spread per condition, the runs per seed, how many sat on a
  plateau (pipeline/student/health.py) and which conditions need more seeds (spread above 0.03).
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from experiments import legacy
from pipeline import config
from pipeline.runtime.atomic import write_text
from pipeline.runtime.progress import format_duration, setup_logging
from pipeline.runtime.provenance import code_version, provenance
from pipeline.student import health, train

log = logging.getLogger("experiments.runner")
SPREAD_LIMIT = 0.03  # above it a condition needs more seeds (docs/proxy_benchmark.md)
DEFAULT_EPOCHS = 15  # at 40 labelled videos per class, for tables that set no budget


@dataclass(frozen=True)
class Table:
    """Conditions compared on one budget, evaluated at `counts` frames."""

    conditions: dict[str, tuple[str, ...]]
    counts: tuple[int, ...] = (8,)
    settings: tuple[str, ...] = ()  # overrides every run of the table gets before its condition's
    epochs: int | None = None  # the table's own budget (at 40 labels per class); None: --epochs
    # text under the table from its finished runs (given a condition's name, its runs): a verdict
    summary: Callable[[Callable[[str], list[dict]]], str] | None = None


@dataclass
class Study:
    """What an experiment is: its tables and how its runs are made."""

    module: str  # `python -m <module>` trains one (condition, seed) in a process of its own
    tables: dict[str, Table]
    base_defaults: dict  # the `@key=value` selectors and their defaults
    make_config: Callable[..., config.Config]  # (work, run_dir, base, overrides) -> the run's config
    base_dir: Callable[[Path, dict], Path]  # (work, base) -> the prepared folder runs link to (shards, cache, heads)
    prepare_base: Callable[..., None]  # (work, base, *, cache: bool, ffmpeg: bool, extra): make that folder
    epochs_for: Callable[[dict, int], int] = lambda base, epochs: epochs
    # (base, the run's config) -> its relative cost: side by side, the longest runs start first, so the
    # last minutes of a call (or a timeout) meet only short ones
    cost: Callable[[dict, config.Config], float] = lambda base, cfg: cfg.train.epochs
    measure: Callable[..., dict] | None = None  # (cfg, summary) -> more numbers for the result
    preface: Callable[[Path], str] | None = None  # text printed before the tables (the teacher)
    extra: list[str] = field(default_factory=list)  # --set overrides of this invocation (every run)


def split_condition(study: Study, overrides: tuple[str, ...]) -> tuple[dict, tuple[str, ...]]:
    """The '@key=value' base selectors of a condition apart from its config overrides."""
    base, rest = dict(study.base_defaults), []
    for o in overrides:
        if o.startswith("@"):
            key, value = o[1:].split("=", 1)
            if key not in base:
                raise ValueError(f"{o}: not a base selector ({', '.join(base)})")
            base[key] = type(base[key])(value)
        else:
            rest.append(o)
    return base, tuple(rest)


def run_spec(study: Study, table: str, name: str) -> tuple[dict, tuple[str, ...]]:
    """A condition's base and its overrides (the table's settings first, then the condition's, then --set)."""
    spec = study.tables[table]
    base, overrides = split_condition(study, (*spec.settings, *spec.conditions[name]))
    return base, (*overrides, *study.extra)


def run_epochs(study: Study, table: str, name: str, epochs: int | None) -> int:
    """The epochs a run trains: --epochs if given, else the table's budget (else 15), scaled by the study for its base."""
    base, _ = run_spec(study, table, name)
    return study.epochs_for(base, epochs or study.tables[table].epochs or DEFAULT_EPOCHS)


def run_cost(study: Study, work: Path, table: str, name: str, epochs: int | None) -> float:
    """A run's relative cost (`Study.cost` of its base and config)."""
    cfg = run_config(study, work, work, table, name, seed=0, epochs=epochs)
    return study.cost(run_spec(study, table, name)[0], cfg)


def longest_first(study: Study, work: Path, runs: list[tuple[str, str, int]], *, epochs: int | None) -> list:
    """`runs` by cost, the longest first (equal costs keep their order)."""
    return sorted(runs, key=lambda r: -run_cost(study, work, r[0], r[1], epochs))


def run_config(study: Study, work: Path, run_dir: Path, table: str, name: str, *, seed: int, epochs: int) -> config.Config:
    """The whole config of one run."""
    base, overrides = run_spec(study, table, name)
    counts = list(study.tables[table].counts)
    n_epochs = run_epochs(study, table, name, epochs)
    extra = (*overrides, f"train.seed={seed}", f"train.epochs={n_epochs}", f"train.eval_frame_counts={counts}")
    return study.make_config(work, run_dir, base, extra)


def run_settings(study: Study, work: Path, table: str, name: str, seed: int, epochs: int) -> tuple[dict, dict]:
    """A run's base and its whole config but the paths (work folders differ between machines)."""
    base, _ = run_spec(study, table, name)
    settings = config.to_dict(run_config(study, work, work, table, name, seed=seed, epochs=epochs))
    settings.pop("paths")
    return base, settings


def run_key(study: Study, work: Path, table: str, name: str, seed: int, epochs: int) -> str:
    """A run's identity: its base and every setting of its config but the paths, so a changed default
    never reuses an old result and tables share runs."""
    return legacy.settings_key(*run_settings(study, work, table, name, seed, epochs), str(work))


def needs_cache(study: Study, work: Path, table: str, name: str) -> bool:
    """Whether a condition distils (then its base needs a teacher cache and heads)."""
    return run_config(study, work, work, table, name, seed=0, epochs=1).loss.mode == "distill"


def train_one(study: Study, work: Path, table: str, name: str, *, seed: int, epochs: int) -> dict:
    """One student in its own folder, linked to its base's shards and cache; its result, also written to disk."""
    base, _ = run_spec(study, table, name)
    key = run_key(study, work, table, name, seed, epochs)
    run_dir = work / "runs" / key
    run_dir.mkdir(parents=True, exist_ok=True)
    source = study.base_dir(work, base)
    for shared in ("shards", "teacher_cache.zarr", "teacher_heads"):
        link, target = run_dir / shared, source / shared
        if not link.exists() and target.exists():
            link.symlink_to(target.resolve())
    cfg = run_config(study, work, run_dir, table, name, seed=seed, epochs=epochs)
    summary = train.run(cfg)
    history = summary.progress.history
    curve = [h["val"]["top1"] for h in history]
    if not curve:
        raise ValueError(f"{table} / {name} seed {seed} ended before its first validation (train.max_steps below an epoch?)")
    verdict = health.plateau(curve, history[-1].get("train_top1") if history else None)
    result = {
        "key": key,
        "table": table,
        "name": name,
        "seed": seed,
        "epochs": cfg.train.epochs,
        "best": max(curve),
        "counts": {str(c): r.top1 for c, r in summary.frame_counts.items()},
        "curve": curve,
        "plateau": bool(verdict and verdict.flagged),
        "overfit": bool(verdict and verdict.overfit),  # flat over learned training clips: not a failed optimisation
        "train_top1": history[-1].get("train_top1") if history else None,
        "seconds": summary.seconds,
        "teacher_head": _json_or_none(cfg.paths.student_dir / "teacher_head.json"),
        "provenance": provenance(cfg.train.device) | code_at_start(),  # main() read it when the process began
    }
    if study.measure is not None:
        result |= study.measure(cfg, summary)
    write_text(work / "results" / f"{key}.json", json.dumps(result, indent=1))
    return result


@functools.cache
def code_at_start() -> dict:
    """The commit this process's code was loaded from: one made while its runs train is not their code."""
    return code_version()


def _json_or_none(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def result(study: Study, work: Path, table: str, name: str, seed: int, epochs: int) -> dict | None:
    """The result of one (condition, seed) if it was run."""
    f = work / "results" / f"{run_key(study, work, table, name, seed, epochs)}.json"
    return json.loads(f.read_text()) if f.exists() else None


def pending_runs(study: Study, work: Path, tables: list[str], seeds: list[int], epochs: int) -> list[tuple[str, str, int]]:
    """(table, condition, seed) of every run not done, seed-major, a run shared by tables once."""
    out, keys = [], set()
    for seed in seeds:
        for table in tables:
            for name in study.tables[table].conditions:
                key = run_key(study, work, table, name, seed, epochs)
                if key not in keys and result(study, work, table, name, seed, epochs) is None:
                    keys.add(key)
                    out.append((table, name, seed))
    return out


def side_by_side(study: Study, work: Path, runs: list[tuple[str, str, int]], *, parallel: int, epochs: int) -> None:
    """Each run in a process of its own (one thread each), `parallel` at once, with progress and ETA."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    pending = longest_first(study, work, runs, epochs=epochs)
    running, failed = [], 0
    total, start = len(pending), time.monotonic()
    log.info("%d runs to train, %d at once", total, parallel)
    while pending or running:
        while pending and len(running) < parallel:
            table, name, seed = pending.pop(0)
            command = [sys.executable, "-m", study.module, table, "--work", str(work), "--seeds", str(seed)]
            command += [*(["--epochs", str(epochs)] if epochs else []), "--only", name, "--no-prepare"]
            command += [f"--set={o}" for o in study.extra]
            running.append(subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL))
        time.sleep(1)
        for p in [p for p in running if p.poll() is not None]:
            running.remove(p)
            if p.returncode:
                failed += 1
                log.error("%s exited with %d", " ".join(p.args[3:]), p.returncode)
            done = total - len(pending) - len(running)
            elapsed = time.monotonic() - start
            eta = format_duration(elapsed / done * (total - done))
            log.info(
                "runs: %d/%d ended (%.2f runs/min, %s elapsed, ETA %s)",
                done,
                total,
                60 * done / elapsed,
                format_duration(elapsed),
                eta,
            )
    log.info(
        "Trained %d runs in %s, %d at once; %d failed (their logs: rerun one with --only NAME --seeds S).",
        total,
        format_duration(time.monotonic() - start),
        parallel,
        failed,
    )


def mean_spread(values: list[float]) -> str:
    """'mean ± population standard deviation' of `values`."""
    return f"{statistics.mean(values):.3f} ± {statistics.pstdev(values):.3f}"


def condition_runs(study: Study, work: Path, table: str, name: str, seeds: list[int], epochs: int) -> list[dict]:
    """The finished runs of one condition, in seed order."""
    return [r for r in (result(study, work, table, name, s, epochs) for s in seeds) if r]


def table_text(study: Study, work: Path, table: str, seeds: list[int], epochs: int) -> str:
    """Mean ± spread over seeds of top-1 at each evaluated count, per-seed values, plateaus and spreads to fix."""
    counts = study.tables[table].counts
    head = " | ".join(f"top-1 at {c} frames" for c in counts)
    lines = [
        f"| student | {head} | best during training | per seed (at {max(counts)}) | seeds | plateaus | flat, overfit |",
        "|" + " --- |" * (len(counts) + 6),
    ]
    wide = []
    for name in study.tables[table].conditions:
        runs = condition_runs(study, work, table, name, seeds, epochs)
        if not runs:
            continue
        cells = [mean_spread([r["counts"][str(c)] for r in runs]) for c in counts]
        top = [r["counts"][str(max(counts))] for r in runs]
        per_seed = ", ".join(f"{v:.3f}{_mark(r)}" for v, r in zip(top, runs))
        plateaus = sum(_mark(r) == "*" for r in runs)
        overfit = sum(_mark(r) == "+" for r in runs)
        if len(runs) > 1 and statistics.pstdev(top) > SPREAD_LIMIT:
            wide.append(name)
        best = mean_spread([r["best"] for r in runs])
        lines.append(f"| {name} | {' | '.join(cells)} | {best} | {per_seed} | {len(runs)} | {plateaus} | {overfit} |")
    if any(_mark(r) for name in study.tables[table].conditions for r in condition_runs(study, work, table, name, seeds, epochs)):
        lines.append(
            "\n\\* this seed's run sat on a plateau: its validation top-1 never left its first epochs' level while its "
            "training top-1 stayed low too (or was not recorded). + its validation curve was as flat, over training clips it "
            "had learned (training top-1 0.9 or more, or 0.5 above its best validation top-1): overfitting, not a failed "
            "optimisation."
        )
    if wide:
        lines.append(f"\nSpread above {SPREAD_LIMIT} at {max(counts)} frames (run more seeds): {'; '.join(wide)}.")
    summary = study.tables[table].summary
    if summary is not None:
        lines.append("\n" + summary(lambda name: condition_runs(study, work, table, name, seeds, epochs)))
    return "\n".join(lines)


def _mark(result: dict) -> str:
    """'*' for a run on a plateau, '+' for one whose flat curve is overfitting, '' otherwise."""
    if not result.get("plateau"):
        return ""
    # overfitting judged again from the recorded curve, so every result meets today's rule
    return "+" if health.plateau(result["curve"], result.get("train_top1")).overfit else "*"


def export_results(work: Path, path: Path) -> int:
    """Every result in `work` as one JSON line each in `path` (sorted by table, condition, seed); the count."""
    results = [json.loads(f.read_text()) for f in sorted((work / "results").glob("*.json"))]
    results.sort(key=lambda r: (r["table"], r["name"], r["seed"]))
    write_text(path, "".join(json.dumps(r) + "\n" for r in results))
    return len(results)


def restore_results(study: Study, work: Path, path: Path) -> int:
    """Put exported results back into `work/results` (a rerun then trains only what is missing); the count.
    A result recorded before a later setting existed is filed under today's key where it is the same
    run (experiments/legacy.py), under its own condition's name or, where the table renamed it, another
    of the table's; one that matches no run of today's tables is kept under its own key."""
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    moved = unmatched = 0
    todays: dict[tuple, tuple[str, frozenset[str], dict]] = {}
    for r in lines:
        key = r["key"]
        match = _todays_run(study, work, r, todays)
        if match is None:
            unmatched += 1
        elif match != (key, r.get("name")):
            recorded = {"recorded_key": key} if match[0] != key else {}
            recorded |= {"recorded_name": r.get("name")} if match[1] != r.get("name") else {}
            r = {**r, **recorded, "key": match[0], "name": match[1]}
            key, moved = match[0], moved + 1
        target = work / "results" / f"{key}.json"
        if "recorded_key" in r and target.exists():
            continue  # a result of today's layout is already there: an older one never replaces it
        write_text(target, json.dumps(r, indent=1))
    if moved:
        log.info("%d of them recorded before a later setting or name and the same run today", moved)
    if unmatched:
        # every --set is part of a run's key, worker counts too: the usual cause of a miss
        log.warning(
            "%d of %d restored results match no run of today's tables (they stay under their own keys and will be "
            "trained again): restore with the --set they were trained with, or they were trained under settings that "
            "changed since (their provenance commit; docs/experiments.md)",
            unmatched,
            len(lines),
        )
    return len(lines)


def _todays_run(study: Study, work: Path, record: dict, todays: dict) -> tuple[str, str] | None:
    """(today's key, condition) of the run an exported result is, in its table: its own condition
    first, then the table's others (a renamed condition); None where no run of today's is it.
    `todays` caches each candidate's key and the keys of its earlier layouts."""
    table, name, seed, epochs = (record.get(k) for k in ("table", "name", "seed", "epochs"))
    if table not in study.tables or seed is None or not epochs:
        return None
    conditions = study.tables[table].conditions
    current = legacy.frame_targets_current(record)
    for candidate in ([name] if name in conditions else []) + [c for c in conditions if c != name]:
        per_40 = epochs // study.epochs_for(run_spec(study, table, candidate)[0], 1)
        run = (table, candidate, seed, per_40, current)
        if run not in todays:
            base, settings = run_settings(study, work, table, candidate, seed, per_40)
            earlier = legacy.earlier_keys(base, settings, str(work), frame_targets_current=current)
            todays[run] = (legacy.settings_key(base, settings, str(work)), earlier, settings)
        today, earlier, settings = todays[run]
        if legacy.superseded(record, settings):  # today's key, another run's result: filed apart, never reused
            if record["key"] == today:
                return f"{today}-superseded", candidate
            continue
        if record["key"] == today or record["key"] in earlier:
            return today, candidate
    return None


def prepare(study: Study, work: Path, tables: list[str], *, ffmpeg: bool, match: list[str] | None = None) -> None:
    """Every base the tables' conditions (those `match` names, if given) train from: data and shards,
    and a teacher cache with heads where a condition distils."""
    bases: list[tuple[dict, bool]] = []
    for table in tables:
        for name in study.tables[table].conditions:
            if match and not any(m in name for m in match):
                continue
            base, _ = run_spec(study, table, name)
            cache = needs_cache(study, work, table, name)
            known = next((i for i, (b, _) in enumerate(bases) if b == base), None)
            if known is None:
                bases.append((base, cache))
            elif cache:
                bases[known] = (base, True)
    for base, cache in bases:
        study.prepare_base(work, base, cache=cache, ffmpeg=ffmpeg, extra=tuple(study.extra))


def parser(study: Study, doc: str) -> argparse.ArgumentParser:
    """The command line every study shares."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("table", nargs="+", choices=[*study.tables, "all", "none"], help="tables, all, or none (the preface)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=None, help="every run's epochs at 40 labels per class (default: the table's)")
    p.add_argument("--work", type=Path, default=None)
    p.add_argument("--prepare-only", action="store_true", help="make the data, teacher, shards, caches and heads, then stop")
    p.add_argument("--tabulate", action="store_true", help="only print the tables of the results in --work")
    p.add_argument("--parallel", type=int, default=0, metavar="N", help="N runs at once, each a process of its own")
    p.add_argument("--no-prepare", action="store_true", help="use what is already prepared in --work")
    p.add_argument("--no-ffmpeg", action="store_true", help="render the data straight into shards (GPU machines)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a config override for every run")
    p.add_argument("--only", default=None, help="train this one condition (its name in the table)")
    p.add_argument("--match", nargs="+", default=None, metavar="TEXT", help="only conditions whose name has one of these")
    p.add_argument("--export", type=Path, default=None, metavar="FILE", help="write every result in --work as JSON lines")
    p.add_argument("--restore", type=Path, default=None, metavar="FILE", help="put exported results back into --work first")
    return p


def main(study: Study, doc: str, argv: list[str] | None = None) -> None:
    """Prepare, train what is missing (here or side by side), print the tables."""
    code_at_start()
    p = parser(study, doc)
    args = p.parse_args(argv)
    study.extra.extend(args.set)
    setup_logging()
    logging.getLogger("pipeline").setLevel(logging.WARNING)
    work = (args.work or Path(tempfile.mkdtemp(prefix=study.module.rsplit(".", 1)[-1] + "-"))).resolve()
    tables = list(study.tables) if "all" in args.table else [t for t in args.table if t != "none"]
    if args.only is not None and (len(tables) != 1 or args.only not in study.tables[tables[0]].conditions):
        p.error(f"--only {args.only!r}: not a condition of {' '.join(args.table)}")
    if args.restore:
        log.info("restored %d results from %s", restore_results(study, work, args.restore), args.restore)
    start = time.monotonic()
    if not args.tabulate:
        if not args.no_prepare:
            match = args.match or ([args.only] if args.only else None)
            prepare(study, work, tables, ffmpeg=not args.no_ffmpeg, match=match)
        runs = pending_runs(study, work, tables, args.seeds, args.epochs)
        if args.only is not None:
            runs = [r for r in runs if r[1] == args.only]
        if args.match:
            runs = [r for r in runs if any(m in r[1] for m in args.match)]
        if not args.prepare_only and args.parallel:
            side_by_side(study, work, runs, parallel=args.parallel, epochs=args.epochs)
        elif not args.prepare_only:
            for table, name, seed in runs:
                r = train_one(study, work, table, name, seed=seed, epochs=args.epochs)
                log.info(
                    "%s / %s seed %d: %s%s (%.0f s)",
                    table,
                    name,
                    seed,
                    r["counts"],
                    " PLATEAU" if r["plateau"] else "",
                    r["seconds"],
                )
    if args.export:
        log.info("exported %d results to %s", export_results(work, args.export), args.export)
    if args.only:
        return
    budget = f"--epochs {args.epochs}" if args.epochs else "each table's epochs"
    print(f"\n{study.module} in {work}: seeds {args.seeds}, {budget}, {time.monotonic() - start:.0f} s\n")
    if study.preface is not None:
        print(study.preface(work) + "\n")
    for table in tables:
        print(f"{table}\n\n{table_text(study, work, table, args.seeds, args.epochs)}\n")
