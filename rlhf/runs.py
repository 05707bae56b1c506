"""The output contract shared by every stage, and resumable checkpoints.

    <output_dir>/config.yaml     the resolved config
    <output_dir>/inputs.json     content hashes of the files and model directories the stage read (a stage of
                                 `rlhf run`; `rlhf.fingerprint`), so a run records what it actually consumed
    <output_dir>/log.jsonl       one JSON object per logging step, namespaced keys ("train/loss", "eval/loss")
    <output_dir>/metrics.json    final metrics (with the number of processes that produced them and the stage's
                                 own peak memory, memory/peak_rss_mb: rlhf.memory)
    <output_dir>/checkpoints/step-NNNNNN/   model or adapter, optimizer, scheduler (if any), RNG, trainer state
    <output_dir>/<artefact>      the stage's product (for SFT: model/)

Everything is written by the main process only, except each rank's RNG state in a checkpoint.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import yaml

from rlhf.config import ConfigError, save_config, to_dict
from rlhf.fsio import (append_jsonl, atomic_write_json, atomic_write_jsonl, atomic_write_text, fault_point, fsync_dir,
                       fsync_tree, read_jsonl)
from rlhf.memory import peak, reset_peak

CHECKPOINTS = "checkpoints"
SHARDED_STATE = "sharded_state"  # in a checkpoint under DeepSpeed/FSDP: every rank's model and optimiser shards


class RunExistsError(RuntimeError):
    pass


# Output directories this process set up for a fresh run, with the files it wrote there: a command that then
# fails on a user error removes them (`discard_fresh_runs`), so the corrected command is not refused as
# "already holds a run".
_FRESH: list[tuple[Path, bool]] = []
_SETUP_FILES = ("config.yaml", "inputs.json", "log.jsonl", "metrics.json")


def discard_fresh_runs() -> None:
    """Undo the set-up of fresh runs that wrote no checkpoint: their config.yaml, inputs.json and logs, and
    the directory itself where this process created it and nothing else is left in it."""
    while _FRESH:
        out, created = _FRESH.pop()
        if (out / CHECKPOINTS).exists():
            continue
        for name in _SETUP_FILES:
            (out / name).unlink(missing_ok=True)
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()


def forget_fresh_runs() -> None:
    """The runs set up so far finished (or stopped on purpose): a later error must leave them alone."""
    _FRESH.clear()


def record_inputs(cfg, out: Path) -> None:
    """Write <out>/inputs.json: the content hash of every input the stage reads (pipeline stages only)."""
    from rlhf.fingerprint import STAGE_OF, inputs_of

    stage = STAGE_OF.get(type(cfg).__name__)
    if stage is not None:
        (out / "inputs.json").write_text(json.dumps({"stage": stage, "inputs": inputs_of(stage, cfg)},
                                                    indent=2) + "\n")


def prepare_output_dir(cfg, accelerator) -> Path:
    """Create output_dir; refuse to mix a fresh run into an old one unless `resume` or `overwrite`.

    Resuming checks that the config is the one the run started with, except RESUMABLE_CHANGES. The main process
    first takes the directory's lock (rlhf.fsio.RunLock): a second process writing the same run is refused.
    Every stage calls it first, so it also starts the stage's own peak-memory span (rlhf.memory).
    """
    from rlhf.fsio import lock_run_collective

    reset_peak()
    out = Path(cfg.output_dir)
    lock_run_collective(out, accelerator.is_main_process)
    has_run = (out / "config.yaml").exists() or (out / CHECKPOINTS).exists()
    if has_run and not cfg.resume and not cfg.overwrite:
        resume = "" if getattr(cfg, "NOT_RESUMABLE", "") else "--resume true to continue it or "
        raise RunExistsError(f"{out} already holds a run; pass {resume}--overwrite true to start over")
    if cfg.resume and (out / "config.yaml").exists():
        try:
            old = yaml.safe_load((out / "config.yaml").read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise ConfigError(f"{out / 'config.yaml'} is damaged ({type(e).__name__}); cannot check the config "
                              "to resume: use --overwrite true to start over") from None
        if not isinstance(old, dict):
            raise ConfigError(f"{out / 'config.yaml'} is damaged (not a mapping); use --overwrite true to start over")
        new = to_dict(cfg)
        changed = sorted(k for k in new if k not in cfg.RESUMABLE_CHANGES and old.get(k, new[k]) != new[k])
        if changed:
            diffs = ", ".join(f"{k}: {old.get(k)!r} -> {new[k]!r}" for k in changed)
            raise ConfigError(f"cannot resume {out} with a different config ({diffs}); "
                              "use a new output_dir, or --overwrite true to start over")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if has_run and cfg.overwrite and not cfg.resume:
            for name in (CHECKPOINTS, "log.jsonl", "metrics.json"):
                p = out / name
                shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
        if not has_run:
            _FRESH.append((out, not out.exists()))
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
        record_inputs(cfg, out)
    accelerator.wait_for_everyone()
    return out


def _jsonable(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


def start_trackers(accelerator, cfg, project: str) -> bool:
    """Start the trackers `cfg.report_to` names, the resolved config as their hyperparameters; False (and nothing
    started) when it is "none"."""
    if cfg.report_to == "none":
        return False
    flat = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in to_dict(cfg).items()}
    accelerator.init_trackers(project, config=flat)
    return True


class RunLogger:
    """Rank-safe metrics: log.jsonl lines plus accelerate trackers (a no-op when `report_to` is "none")."""

    def __init__(self, accelerator, cfg, project: str, resume_step: int | None = None):
        self.accelerator = accelerator
        self.cfg, self.project = cfg, project
        self.path = Path(cfg.output_dir) / "log.jsonl"
        self.start = time.time()
        self.resumed: list[dict] = []  # rows kept from before a resume (main process), for whole-run metrics
        if accelerator.is_main_process:
            if resume_step is None:
                atomic_write_text(self.path, "", what="log")
            elif self.path.exists():  # drop lines logged after the checkpoint we resume from
                # a line torn by the interruption, or damaged otherwise, is dropped and named, never fatal
                rows, notes = read_jsonl(self.path, on_damaged="drop", what="log line")
                for note in notes:
                    print(f"[resume] {note}", flush=True)
                keep = [r for r in rows if isinstance(r, dict) and r.get("step", 0) <= resume_step]
                self.resumed = keep
                atomic_write_jsonl(self.path, keep, what="log")
        self.tracking = start_trackers(accelerator, cfg, project)

    def log(self, metrics: dict[str, Any], step: int, tracker_step: int | None = None) -> None:
        """One log.jsonl line at `step`; trackers get it at `tracker_step` where given (a run whose phases each
        count their steps from 1 in log.jsonl gives trackers, which want one increasing step, a running count)."""
        if not self.accelerator.is_main_process:
            return
        row = {"step": step, **{k: _jsonable(v) for k, v in metrics.items()}}
        append_jsonl(self.path, [row], what="log")
        if self.tracking:
            # `step` goes as the trackers' step; as a metric too only where it differs (a phase's own count).
            # (trackio reserves the name "step" and renames the metric, with a warning.)
            send = row if tracker_step is not None else {k: v for k, v in row.items() if k != "step"}
            self.accelerator.log({k: v for k, v in send.items() if isinstance(v, (int, float))},
                                 step=step if tracker_step is None else tracker_step)

    def finish(self, metrics: dict[str, Any]) -> dict[str, Any]:
        metrics = {**{k: _jsonable(v) for k, v in metrics.items()},
                   "num_processes": self.accelerator.num_processes, **peak()}
        if self.accelerator.is_main_process:
            atomic_write_json(self.path.parent / "metrics.json", metrics, what="metrics")
            from rlhf.model_card import write_for_run

            write_for_run(self.cfg, self.project, metrics)  # README.md in output_dir/model/, if saved
        if self.tracking:
            self.accelerator.end_training()
        return metrics


# ------------------------------------------------------------------------------------- checkpoints


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint (incomplete ones are written as *.tmp and never matched)."""
    root = Path(output_dir) / CHECKPOINTS
    done = sorted(p for p in root.glob("step-*") if p.is_dir() and not p.name.endswith(".tmp"))
    return done[-1] if done else None


def save_checkpoint(accelerator, output_dir, step: int, save_model, optimizer, scheduler,
                    state: dict[str, Any], keep: int) -> Path:
    """Write checkpoints/step-NNNNNN atomically: a .tmp directory renamed once every rank has written.

    `save_model(directory)` writes the model (called on the main process only); `state` is small JSON;
    `scheduler` may be None (a stage without one writes no scheduler.pt).
    Under DeepSpeed and FSDP, where each rank holds a shard of the optimiser state (and, with ZeRO-3/FSDP, of
    the weights), every rank writes its shards with `accelerator.save_state` instead of model/ and
    optimizer.pt.
    """
    from rlhf.backends import shards_optimizer

    sharded = shards_optimizer(accelerator)
    root = Path(output_dir) / CHECKPOINTS
    final = root / f"step-{step:06d}"
    tmp = root / (final.name + ".tmp")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    torch.save(_rng_state(), tmp / f"rng_rank{accelerator.process_index}.pt")
    if sharded:
        accelerator.save_state(str(tmp / SHARDED_STATE))
    if accelerator.is_main_process:
        if not sharded:
            save_model(tmp / "model")
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        if scheduler is not None:
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        (tmp / "trainer_state.json").write_text(json.dumps({"step": step, **state}, indent=2) + "\n")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        fault_point("checkpoint", final)
        fsync_tree(tmp)  # every file on disk before the rename makes the checkpoint visible
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        fsync_dir(root)
        old = sorted(p for p in root.glob("step-*") if p.is_dir() and not p.name.endswith(".tmp"))
        for p in old[:-keep] if keep > 0 else []:
            shutil.rmtree(p, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, ckpt: Path, optimizer, scheduler) -> dict[str, Any]:
    """Restore optimizer, scheduler (None: none) and this rank's RNG from `ckpt`, and return the trainer state
    (weights are the caller's job, except in a DeepSpeed/FSDP checkpoint, where `accelerator.load_state`
    restores weights and optimiser shards)."""
    if (ckpt / SHARDED_STATE).is_dir():
        accelerator.load_state(str(ckpt / SHARDED_STATE))
    else:
        optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=True, map_location="cpu"))
    if scheduler is not None:
        scheduler.load_state_dict(torch.load(ckpt / "scheduler.pt", weights_only=True))
    rng_file = ckpt / f"rng_rank{accelerator.process_index}.pt"
    if rng_file.exists():
        _set_rng_state(torch.load(rng_file, weights_only=True))
    return json.loads((ckpt / "trainer_state.json").read_text())


def _rng_state() -> dict[str, Any]:
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": [version, list(internal), gauss], "numpy": [name, keys.tolist(), pos, has_gauss, cached],
             "torch": torch.get_rng_state()}  # plain lists and tensors, so it loads with weights_only=True
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
