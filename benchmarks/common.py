"""What every benchmark and results script shares: the machine it ran on, the statistics over seeds and
updates, and the closing block that writes the results file.

`finish(results, out, argv)` adds the machine, the package versions, the load average and the exact command
to the results, writes them to `out` (atomically: a temporary name, then a rename) and prints them as the last
line of output, one JSON object. The command is what remakes `out`: `python benchmarks/<script>.py <args>`,
with paths inside the repository written relative to it (tests/test_benchmarks.py parses every recorded
command with its script's `parse_args`).

A learning result records which seeds chose its settings and which it reports on (`seed_record`, the
protocol of benchmarks/README.md): settings are chosen on selection seeds, figures reported on report seeds
never used for a choice, with intervals over seeds (`t_interval`; `paired` where two methods share a seed).
"""

from __future__ import annotations

import json
import math
import os
import platform
import shlex
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PACKAGES = ("torch", "transformers", "accelerate", "trl", "peft", "datasets", "gymnasium", "sb3-contrib")

# Flags that build a results file from earlier outputs (finished runs, another results file) instead of
# computing it: a file in benchmarks/results/ must not be made with them (tests/test_benchmarks.py).
REUSE_FLAGS = ("--reuse", "--skip_missing", "--from_results", "--from_json")


# ------------------------------------------------------------------------------------------ machine


def load_average() -> list[float] | None:
    """The 1-, 5- and 15-minute load averages (None where the platform has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine() -> dict:
    """Platform, cores, load, torch's threads and device, and the versions of the libraries the numbers depend
    on (None for one that is not installed)."""
    from importlib import metadata

    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(), "cpu_count": os.cpu_count()}
    for name in PACKAGES:
        try:
            info[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            info[name] = None
    info["load_average"] = load_average()
    if "torch" in sys.modules:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return info


# ------------------------------------------------------------------------------------------ seeds

# Seeds 0-5, and the evaluation episodes seeded from them, are selection seeds: configurations, features and
# hyperparameters were chosen on them. Report seeds start at 100 and are never used for a choice.
SELECTION_SEEDS = (0, 1, 2, 3, 4, 5)
REPORT_SEEDS = (100, 101, 102)
SEED_RECORD_KEYS = {"selection", "report", "disjoint", "note"}


def seed_record(report, selection=SELECTION_SEEDS, note: str = "") -> dict:
    """The `seeds` field of a learning results file: the seeds its settings were chosen on (`selection`) and the
    seeds its figures come from (`report`). `disjoint` is False when a run reports on a selection seed (a smoke
    run, or a rerun of a figure made before the protocol): such figures are not report figures."""
    report, selection = [int(s) for s in report], sorted({int(s) for s in selection})
    return {"selection": selection, "report": report, "disjoint": not set(report) & set(selection), "note": note}


def check_seed_record(record) -> None:
    """Refuse a `seeds` field that is not a `seed_record` (a bare list says nothing of selection vs report)."""
    if not (isinstance(record, dict) and set(record) == SEED_RECORD_KEYS
            and all(isinstance(record[k], list) for k in ("selection", "report"))):
        raise ValueError(f"results['seeds'] must be benchmarks.common.seed_record(...) "
                         f"({sorted(SEED_RECORD_KEYS)}), not {record!r}")


# ------------------------------------------------------------------------------------------ statistics

# two-sided 95% quantiles of Student's t by degrees of freedom; the normal 1.96 beyond 30 (within 4%)
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
       11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093,
       20: 2.086, 21: 2.080, 22: 2.074, 23: 2.069, 24: 2.064, 25: 2.060, 26: 2.056, 27: 2.052, 28: 2.048,
       29: 2.045, 30: 2.042}


def mean_sd(xs, ddof: int = 1) -> tuple[float, float]:
    """Mean and standard deviation (ddof 1: the sample's, over seeds; ddof 0: the population's); the
    deviation of a single value is 0."""
    xs = [float(x) for x in xs]
    m = statistics.fmean(xs)
    if len(xs) <= ddof:
        return m, 0.0
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - ddof))


def t_interval(xs) -> dict:
    """Mean with a 95% t interval over independent values (seeds): `ci95` is the half-width, `low`/`high` the
    ends; with one value there is no interval (ci95 None, low/high nan)."""
    xs = [float(x) for x in xs]
    m = statistics.fmean(xs)
    if len(xs) < 2:
        return {"mean": m, "ci95": None, "low": math.nan, "high": math.nan, "n": len(xs)}
    half = T95.get(len(xs) - 1, 1.96) * statistics.stdev(xs) / math.sqrt(len(xs))
    return {"mean": m, "ci95": half, "low": m - half, "high": m + half, "n": len(xs)}


def paired(a, b) -> dict:
    """`t_interval` of the per-seed differences a[i] - b[i] of two methods run on the same seeds (paired: the
    seed's shared data and episodes cancel), with the differences themselves."""
    a, b = [float(x) for x in a], [float(x) for x in b]
    if len(a) != len(b) or not a:
        raise ValueError(f"paired: {len(a)} and {len(b)} values (one per shared seed, at least one)")
    diffs = [x - y for x, y in zip(a, b)]
    return {**t_interval(diffs), "differences": diffs}


def proportion_ci95(p: float, n: int) -> float:
    """Half-width of the normal 95% interval of a proportion p measured on n trials."""
    return 1.96 * math.sqrt(p * (1 - p) / n)


def slope(ys) -> tuple[float, float]:
    """Least-squares slope of ys against 0..n-1 and its standard error (nan with fewer than 3 points)."""
    n = len(ys)
    xs = range(n)
    mx, my = (n - 1) / 2, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else math.nan
    if n < 3:
        return b, math.nan
    resid = sum((y - my - b * (x - mx)) ** 2 for x, y in zip(xs, ys))
    return b, math.sqrt(resid / (n - 2) / sxx)


def spearman(x, y) -> float:
    """Spearman's rank correlation: Pearson's on the ranks, ties ranked by position (0 for a single point)."""
    def ranks(v):
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0] * len(v)
        for rank, i in enumerate(order):
            r[i] = rank
        return r

    rx, ry = ranks(list(x)), ranks(list(y))
    mx, my = statistics.fmean(rx), statistics.fmean(ry)
    sy = sum((b - my) ** 2 for b in ry)
    if sy == 0:
        return 0.0
    sx = sum((a - mx) ** 2 for a in rx)
    return sum((a - mx) * (b - my) for a, b in zip(rx, ry)) / math.sqrt(sx * sy)


# ------------------------------------------------------------------------------------------ results


def _relative(arg: str) -> str:
    """A path inside the repository, relative to it (also in `--flag=path`); anything else unchanged."""
    flag, eq, value = arg.partition("=") if arg.startswith("--") and "=" in arg else ("", "", arg)
    path = Path(value)
    if path.is_absolute():
        try:
            value = str(path.resolve().relative_to(ROOT))
        except ValueError:
            pass
    return f"{flag}{eq}{value}"


def command(argv: list[str] | None = None, script: str | Path | None = None) -> str:
    """The command that remakes the results: the script, relative to the repository, with its arguments."""
    script = Path(script or sys.argv[0]).resolve()
    try:
        script = script.relative_to(ROOT)
    except ValueError:
        pass
    args = sys.argv[1:] if argv is None else list(argv)
    return " ".join(["python", shlex.quote(str(script)), *(shlex.quote(_relative(a)) for a in args)])


def write_json(results: dict, out: str | Path) -> Path:
    """Write `results` to `out` atomically (a temporary name, then a rename), parent folders made."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=2, default=str) + "\n")
    os.replace(tmp, out)
    return out


def finish(results: dict, out: str | Path, argv: list[str] | None = None, script: str | Path | None = None) -> dict:
    """Record the command and the machine (keeping any machine fields the script recorded itself), write
    `out`, print the one-line JSON last. A `seeds` field must be a `seed_record`."""
    if "seeds" in results:
        check_seed_record(results["seeds"])
    results = {**results, "command": command(argv, script),
               "machine": {**machine(), **results.get("machine", {})}}
    write_json(results, out)
    print(json.dumps(results, default=str), flush=True)
    return results


def upstream_run(tiny: bool, make_run: bool, run_dir: str, scratch: Path) -> Path:
    """A finished run of the pipeline up to the reward model (sft, collect, label, reward): a tiny one built in
    `scratch`, the quickstart's built (or completed: done stages are skipped) in `run_dir`, or `run_dir` as it is."""
    if not (tiny or make_run):
        return Path(run_dir)
    from rlhf.pipeline import main as run_main

    pipeline, out = ("configs/tiny/quickstart.yaml", scratch / "run") if tiny else ("configs/quickstart.yaml",
                                                                                  Path(run_dir))
    run_main([pipeline, "--output_dir", str(out), "--only", "sft,collect,label,reward"])
    return out


# ------------------------------------------------------------------------------- kept, resumable runs
# A long benchmark keeps its stage runs under a work directory named by a key of everything they depend on, so
# the same command run again (another session) reuses the finished runs, resumes an interrupted one, and never
# mixes in runs made from other models or settings.


def work_key(parts: dict) -> str:
    """A 16-hex key of `parts` (JSON-able: content digests of the inputs, settings)."""
    import hashlib

    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def run_state(out: Path) -> str:
    """"done" (the stage wrote metrics.json, its last file), "resume" (started: its config.yaml is there) or
    "new"."""
    if (out / "metrics.json").exists():
        return "done"
    return "resume" if (out / "config.yaml").exists() else "new"


def kept_run(train, cfg_class, yaml: Path, overrides: dict, out: Path, what: str) -> dict:
    """Run a stage into `out` (config `yaml` with `overrides`), or reuse it there (finished), or resume it
    (interrupted); its metrics, with `resumed`: whether any part of it ran before this call, in which case the
    stage's own wall time covers only its last part. The mark is kept beside the run (its directory is the
    stage's own)."""
    from rlhf.config import load_config

    state, marker = run_state(out), out.with_name(out.name + ".resumed")
    if state == "done":
        print(f"[benchmark] reusing {what} in {out}", flush=True)
        return {**json.loads((out / "metrics.json").read_text()), "resumed": marker.exists()}
    if state == "resume":
        print(f"[benchmark] resuming {what} in {out}", flush=True)
        marker.write_text("")
    cfg = load_config(cfg_class, yaml, {**overrides, "output_dir": str(out), "resume": str(state == "resume").lower()})
    return {**train(cfg), "resumed": marker.exists()}


# ------------------------------------------------------------------------- kept units of a long results run
# The learning-results scripts (dialogue, POMDP, DT) are hours of CPU made of independent units, one
# environment (or config) and seed each. With --keep_runs each finished unit is kept in a file named by a key of
# its settings, beside the sources it ran with, so the same command run again (another session) computes only
# the units that are missing. A unit is reused only while every source file it ran with is unchanged: an edit to
# the algorithm's code (or to the script) makes its units run again rather than mixing old and new results.


def loaded_sources(script: str | Path | None = None) -> list[str]:
    """The repository's source files this process runs: the script and every module of the `rlhf` package
    imported so far, relative to the repository, sorted."""
    package = ROOT / "rlhf"
    files = {Path(script or sys.argv[0]).resolve()}
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if path and Path(path).resolve().is_relative_to(package):
            files.add(Path(path).resolve())
    return sorted(str(f.relative_to(ROOT)) if f.is_relative_to(ROOT) else str(f) for f in files)


def sources_digest(files: list[str]) -> str | None:
    """A sha256 of each file's name and contents (paths relative to the repository), or None when one is gone."""
    import hashlib

    digest = hashlib.sha256()
    for name in sorted(files):
        path = Path(name) if Path(name).is_absolute() else ROOT / name
        if not path.is_file():
            return None
        digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def kept_unit(work_dir: str | Path | None, parts: dict, compute, what: str, sources=loaded_sources,
              outputs_match=None) -> tuple[dict, dict]:
    """(result, provenance) of one unit (`parts`: JSON-able, everything its result depends on but the code).

    With `work_dir` None, `compute()` runs and nothing is kept. Otherwise the unit's file is
    `work_dir/<work_key(parts)>.json`: when it is there and every source file it records (`sources()` when it
    finished) still has the same contents, and `outputs_match(result)` (if given: the unit's files on disk, a
    trained network say, are still those of the kept result) holds, its result is reused; else `compute()` runs
    and the file is written atomically. The provenance records when and on what load the result was computed, and whether this call
    reused it."""
    from rlhf.fsio import atomic_write_json

    def stamp() -> str:
        import datetime

        return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")

    if work_dir is None:
        return json.loads(json.dumps(compute())), {"what": what, "computed_utc": stamp(), "reused": False}
    path = Path(work_dir) / f"{work_key(parts)}.json"
    if path.is_file():
        kept = json.loads(path.read_text())
        if (kept.get("parts") == parts and kept.get("digest") is not None
                and sources_digest(kept["sources"]) == kept["digest"]
                and (outputs_match is None or outputs_match(kept["result"]))):
            print(f"[benchmark] reusing {what} from {path} (computed {kept['provenance']['computed_utc']} UTC)",
                  file=sys.stderr, flush=True)
            return kept["result"], {**kept["provenance"], "reused": True}
        print(f"[benchmark] {what}: the kept result in {path} ran on other sources or its outputs changed; "
              "running it again",
              file=sys.stderr, flush=True)
    load_before = load_average()
    result = json.loads(json.dumps(compute()))  # as a reuse reads it back: string keys, lists
    files = sources()
    provenance = {"what": what, "computed_utc": stamp(), "load_average_before": load_before,
                  "load_average_after": load_average(), "reused": False}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, {"parts": parts, "sources": files, "digest": sources_digest(files),
                             "provenance": provenance, "result": result}, what=f"kept {what}")
    return result, provenance
