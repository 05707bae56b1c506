"""Experiment trackers through accelerate: `report_to` names any of accelerate's trackers, and tables (the
policy stage's rollouts, the evaluation's completions and report) go to each tracker in the form it has.

    report_to: tensorboard            # or trackio, wandb, mlflow, comet_ml, aim, clearml, dvclive, swanlab
    report_to: tensorboard,trackio    # several
    report_to: all                    # every tracker accelerate finds installed

The names are accelerate's own (`accelerate.tracking.LOGGER_TYPE_TO_CLASS`), so a tracker accelerate adds is
accepted without a change here. Tables: trackers with a `log_table` method (wandb, clearml) get it; tensorboard
gets a markdown table through `add_text` (shown in its Text tab); trackio gets a `trackio.Table`; mlflow gets
`mlflow.log_table` (an artifact); the others get none (a notice says so once), the JSONL files having every row.
"""

from __future__ import annotations

import importlib.util
import sys
from typing import Any

# Tracker name -> the package it needs, where the two differ.
PACKAGES = {"tensorboard": "tensorboard"}


def tracker_names() -> list[str]:
    """accelerate's tracker names (its LOGGER_TYPE_TO_CLASS)."""
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    return list(LOGGER_TYPE_TO_CLASS)


def parse(report_to: str) -> list[str]:
    """'none' -> [], 'all' -> ['all'], 'a,b' -> ['a', 'b']."""
    names = [n.strip() for n in str(report_to).split(",") if n.strip()]
    return [] if names in ([], ["none"]) else names


def check_report_to(report_to: str) -> None:
    """ConfigError naming report_to for an unknown tracker or one whose package is not installed."""
    from rlhf.config import ConfigError

    names = parse(report_to)
    if "none" in names or ("all" in names and len(names) > 1):
        raise ConfigError(f"report_to '{report_to}': give none, all, or tracker names")
    known = tracker_names()
    for name in names:
        if name == "all":
            continue
        if name not in known:
            raise ConfigError(f"report_to '{report_to}': '{name}' is not one of accelerate's trackers "
                              f"{['none', 'all', *known]}")
        package = PACKAGES.get(name, name)
        if importlib.util.find_spec(package) is None:
            raise ConfigError(f"report_to '{report_to}' needs the {package} package: "
                              f"pip install {package}  (or pip install -e '.[tracking]')")


def log_with(report_to: str) -> list[str] | None:
    """accelerate's `log_with` for `report_to`."""
    names = parse(report_to)
    return names or None


_warned: set[str] = set()


def _markdown(columns: list[str], rows: list[list[Any]]) -> str:
    cell = lambda v: " ".join(str(v).replace("|", "\\|").split())  # one line per row, whitespace collapsed
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return "\n".join(lines + ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows])


def log_table(accelerator, name: str, columns: list[str], rows: list[list[Any]], step: int | None = None) -> None:
    """Send a table to every tracker of `accelerator` (main process only; a no-op without trackers)."""
    if not accelerator.is_main_process:
        return
    for tracker in getattr(accelerator, "trackers", []):
        kind = getattr(tracker, "name", type(tracker).__name__)
        if hasattr(tracker, "log_table"):  # wandb, clearml
            tracker.log_table(table_name=name, columns=columns, data=rows, step=step)
        elif kind == "tensorboard":
            tracker.writer.add_text(name, _markdown(columns, rows), global_step=step)
            tracker.writer.flush()
        elif kind == "trackio":
            import pandas as pd
            import trackio

            tracker.log({name: trackio.Table(dataframe=pd.DataFrame(rows, columns=columns))}, step=step)
        elif kind == "mlflow":
            import mlflow

            mlflow.log_table(data={c: [r[i] for r in rows] for i, c in enumerate(columns)},
                             artifact_file=f"{name.replace('/', '_')}_{step or 0}.json")
        elif kind not in _warned:
            _warned.add(kind)
            print(f"[rlhf] the {kind} tracker takes no tables here; they are in the run's JSONL files",
                  file=sys.stderr)
