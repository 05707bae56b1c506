"""`rlhf run`: the stages chained, SFT -> collect -> label -> reward -> policy -> evaluate.

    rlhf run configs/quickstart.yaml            # the embedded SmolLM2-135M, about 15 minutes on 2 CPU cores
    rlhf run configs/tiny/quickstart.yaml       # the tiny test model, about a minute
    rlhf run configs/quickstart.yaml --only reward,policy --set policy.num_updates=4

A pipeline file names an `output_dir` and, per stage, the stage's own YAML (`config`) and overrides
("{output_dir}" in a value stands for the pipeline's output_dir):

    output_dir: runs/quickstart
    stages:
      sft: {config: configs/sft.yaml}
      collect: {config: configs/collect.yaml, max_prompts: 64}
      ...

Each stage writes to <output_dir>/<stage>, and the runner wires each stage's inputs to the outputs of the stages
before it (the SFT model is the policy to sample from and to optimise, the labelled pairs train the reward
model, ...) unless the stage's section sets that key itself. A stage is the same stage as `rlhf <stage>` runs,
so any stage can also be run alone, under `accelerate launch` too.

Skipping and resuming: each stage is keyed, just before it runs, by its output-changing settings and the
content of every file, model directory and reward function it reads (`rlhf.fingerprint`), so an edited data
set, a retrained upstream model or a run with `--only` is keyed by what the stage actually consumes. A
stage about to run replaces its DONE.json by RUNNING.json (holding the key); a finished stage leaves
DONE.json (the key and the content hashes of its inputs). A second invocation skips every stage whose
DONE.json holds the present key; a stage interrupted with the present key resumes from its latest
checkpoint; a stage whose key changed runs again from scratch. pipeline.json records per-stage wall time and
headline numbers; the summary printed at the end says where everything is and what improved.

Labelling by a person may take several sittings: a person who quits leaves the label stage incomplete, and
the run stops there with a message (run the same command to continue labelling). `--partial_labels true`
instead trains the later stages on the pairs decided so far.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import importlib
import json
import sys
import time
from pathlib import Path

import yaml

from rlhf.config import ConfigError, load_config, read_yaml, to_dict
from rlhf.fsio import atomic_write_json, lock_run_collective, unlock_run

# stage -> (module, config class, entry function), in pipeline order
STAGES = {
    "sft": ("rlhf.stages.sft", "SFTConfig", "train"),
    "collect": ("rlhf.stages.collect", "CollectConfig", "run"),
    "label": ("rlhf.stages.label", "LabelConfig", "run"),
    "reward": ("rlhf.stages.reward", "RewardConfig", "train"),
    "policy": ("rlhf.stages.policy", "PolicyConfig", "train"),
    "dpo": ("rlhf.stages.dpo", "DPOConfig", "train"),  # beside policy: DPO on the same labelled pairs
    "evaluate": ("rlhf.stages.evaluate", "EvaluateConfig", "run"),
}
DONE = "DONE.json"
RUNNING = "RUNNING.json"  # written before a stage runs, with its key: an interruption resumes only with that key
# Keys that do not change what a stage produces (left out of its hash).
UNHASHED = {"resume", "overwrite", "report_to", "log_every", "sample_every", "save_every", "stop_after_update",
            "stop_after_step", "sample_count", "sample_max_new_tokens", "eval_every", "keep_checkpoints"}


def wiring(stage: str, root: Path, present: set[str]) -> dict:
    """Inputs of `stage` taken from earlier stages' outputs (only from stages that are in the pipeline)."""
    sft_model = str(root / "sft" / "model")
    w: dict = {}
    if stage == "collect" and "sft" in present:
        w["model_name_or_path"] = sft_model
    if stage == "label" and "collect" in present:
        w["candidates"] = str(root / "collect" / "candidates.jsonl")
    if stage == "reward" and "label" in present:
        w["train_pairs"] = str(root / "label" / "pairs.jsonl")
    if stage == "policy":
        if "sft" in present:
            w["model_name_or_path"] = sft_model
        if "reward" in present:
            w["reward_model"] = str(root / "reward" / "model")
    if stage == "dpo":
        if "sft" in present:
            w["model_name_or_path"] = sft_model
        if "label" in present:
            w["train_pairs"] = str(root / "label" / "pairs.jsonl")
    if stage == "evaluate":
        ckpts, names = [], []
        for s in ("sft", "policy", "dpo"):
            if s in present:
                ckpts.append(str(root / s / "model"))
                names.append(s)
        if ckpts:
            w["checkpoints"], w["names"] = ckpts, names
        if "reward" in present:
            w["reward_model"] = str(root / "reward" / "model")
    return w


DEPENDS = {"sft": [], "collect": ["sft"], "label": ["collect"], "reward": ["label"], "policy": ["sft", "reward"],
           "dpo": ["sft", "label"], "evaluate": ["sft", "reward", "policy", "dpo"]}


def config_hash(values: dict, upstream: list[str], unhashed=()) -> str:
    kept = {k: v for k, v in sorted(values.items()) if k not in UNHASHED and k not in unhashed}
    blob = json.dumps({"config": kept, "upstream": upstream}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def load_pipeline(path: str, sets: list[str], output_dir: str = "") -> tuple[Path, dict[str, dict]]:
    """(output_dir, {stage: {"config": file or None, **overrides}}) in pipeline order."""
    spec = read_yaml(path)
    unknown = set(spec) - {"output_dir", "stages"}
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {sorted(unknown)}; a pipeline file has output_dir and stages")
    if not isinstance(spec.get("stages"), dict) or not spec["stages"]:
        raise ConfigError(f"{path}: 'stages' must map stage names to their settings")
    for name in spec["stages"]:
        if name not in STAGES:
            raise ConfigError(f"{path}: unknown stage '{name}' (stages: {', '.join(STAGES)})")
    stages = {}
    for name in STAGES:  # pipeline order, whatever the file's order
        if name in spec["stages"]:
            section = spec["stages"][name] or {}
            if not isinstance(section, dict):
                raise ConfigError(f"{path}: stages.{name} must be a mapping")
            stages[name] = dict(section)
    for item in sets:
        key, eq, value = item.partition("=")
        stage, dot, field = key.partition(".")
        if not eq or not dot or stage not in stages:
            raise ConfigError(f"--set {item!r}: expected STAGE.KEY=VALUE with STAGE one of {list(stages)}")
        stages[stage][field] = yaml.safe_load(value)
    return Path(output_dir or spec.get("output_dir", "runs/pipeline")), stages


def resolve(stage: str, section: dict, root: Path, present: set[str]):
    module_name, cls_name, _ = STAGES[stage]
    cls = getattr(importlib.import_module(module_name), cls_name)
    # "{output_dir}" in a string value stands for the pipeline's output_dir (to name other stages' outputs).
    section = {k: v.replace("{output_dir}", str(root)) if isinstance(v, str) else v for k, v in section.items()}
    file = section.pop("config", None)
    values = {**wiring(stage, root, present), **section, "output_dir": str(root / stage)}
    if "output_dir" in section:
        raise ConfigError(f"stages.{stage}.output_dir: the runner puts each stage in <output_dir>/{stage}")
    return load_config(cls, file, values)


def _marker(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def stage_state(out: Path, digest: str) -> str:
    """'done' (same key), 'partial' (done with the same key on partial labels), 'changed' (done, or interrupted,
    with another key), 'interrupted' (with the same key, or before keys were recorded) or 'new'."""
    marker = out / DONE
    if marker.is_file():
        done = _marker(marker)
        if done.get("config_hash") != digest:
            return "changed"
        return "partial" if done.get("partial") else "done"
    running = out / RUNNING
    if running.is_file():
        return "interrupted" if _marker(running).get("config_hash") == digest else "changed"
    if (out / "config.yaml").exists() or (out / "checkpoints").exists():
        return "interrupted"
    return "new"


def key_of(name: str, cfg) -> tuple[str, dict]:
    """(the stage's key, {input: content hash}) from its settings and the files on disk now."""
    from rlhf.fingerprint import inputs_of, stage_key

    inputs = inputs_of(name, cfg)
    return stage_key(name, to_dict(cfg), inputs), inputs


def headline(stage: str, metrics: dict) -> str:
    pick = {
        "sft": [("eval/loss_at_start", "held-out loss {:.3f}"), ("eval/loss", " -> {:.3f}")],
        "collect": [("collect/completions_sampled", "{:.0f} completions"), ("collect/mean_tokens", ", {:.1f} tokens")],
        "label": [("label/pairs", "{:.0f} pairs"), ("label/gold_agreement", ", gold agreement {:.2f}")],
        "reward": [("eval/accuracy", "held-out accuracy {:.3f}")],
        "policy": [("objective/scores_first", "score {:.3f}"), ("objective/scores_last", " -> {:.3f}"),
                   ("objective/kl_last", ", KL {:.3f}")],
        "dpo": [("train/rewards/margins", "margin {:.3f}"), ("eval/rewards/accuracies", ", held-out accuracy {:.3f}")],
    }.get(stage, [])
    if stage == "evaluate":
        return f"report {metrics.get('report', '')}"
    return "".join(fmt.format(metrics[k]) for k, fmt in pick if isinstance(metrics.get(k), (int, float)))


def run_pipeline(path: str, only: list[str] | None = None, sets: list[str] | None = None,
                 output_dir: str = "", partial_labels: bool = False) -> dict:
    from accelerate.state import PartialState

    from rlhf.runs import forget_fresh_runs

    state = PartialState()
    root, stages = load_pipeline(path, sets or [], output_dir)
    present = set(stages)
    if only:
        bad = [s for s in only if s not in stages]
        if bad:
            raise ConfigError(f"--only {','.join(bad)}: not in {path} (stages: {', '.join(stages)})")
    cfgs = {name: resolve(name, section, root, present) for name, section in stages.items()}

    # One writer: the pipeline's directory and every stage's, held for the whole invocation (a stage run alone on
    # one of them, or a second `rlhf run`, is refused naming this process; the stages re-enter the locks).
    locks = [root, *(Path(cfg.output_dir) for cfg in cfgs.values())]
    for d in locks:
        lock_run_collective(d, state.is_main_process)
    record_path = root / "pipeline.json"
    try:
        record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    except ValueError:  # a file damaged outside the toolkit (its writes are atomic): the record starts afresh
        record = {}
    record.setdefault("stages", {})
    say = (lambda msg: print(msg, flush=True)) if state.is_main_process else (lambda msg: None)
    started = time.time()
    say(f"[run] {path}: {' -> '.join(stages)} in {root}")
    for i, (name, cfg) in enumerate(cfgs.items(), 1):
        out = Path(cfg.output_dir)
        # keyed now, after the stages before it ran: by the content of what it will read
        digest, inputs = key_of(name, cfg)
        status = stage_state(out, digest)
        if only and name not in only:
            say(f"[run] {i}/{len(cfgs)} {name}: not selected (--only), {status}")
            continue
        if status == "done" or (status == "partial" and partial_labels):
            say(f"[run] {i}/{len(cfgs)} {name}: done with the same config, skipped ({out})"
                + ("; on partial labels (--partial_labels)" if status == "partial" else ""))
            record["stages"].setdefault(name, {})["status"] = "skipped"
            continue
        if status == "partial":  # labelled in part before, now without --partial_labels: go on labelling
            cfg.resume, cfg.overwrite = True, False
            status = "labelled in part: continuing"
        elif status == "interrupted":
            cfg.resume, cfg.overwrite = True, False
            if not resumable(cfg, out):
                cfg.resume, cfg.overwrite = False, True
                status = "interrupted with another config: starting again"
        elif status == "changed":
            cfg.resume, cfg.overwrite = False, True
            status = "config or inputs changed: running again"
        say(f"[run] {i}/{len(cfgs)} {name}: {'resuming' if cfg.resume and status != 'new' else 'running'} ({status}) -> {out}")
        if state.is_main_process:  # the old DONE.json must not outlive this run, finished or not
            out.mkdir(parents=True, exist_ok=True)
            (out / DONE).unlink(missing_ok=True)
            atomic_write_json(out / RUNNING, {"config_hash": digest, "inputs": inputs}, what="running")
        state.wait_for_everyone()
        t0 = time.time()
        module_name, _, fn = STAGES[name]
        metrics = getattr(importlib.import_module(module_name), fn)(cfg) or {}
        forget_fresh_runs()  # this stage's run stands: an error in a later stage must not remove its files
        seconds = time.time() - t0
        state.wait_for_everyone()
        stopped = [k for k in metrics if k.startswith("stopped_at")]
        if stopped:  # the stage checkpointed and stopped early on request: not done, resumes next time
            say(f"[run] {name} stopped early ({stopped[0]} {metrics[stopped[0]]}); run the same command to resume")
            record["stages"][name] = {"status": "stopped", "seconds": round(seconds, 1), "output_dir": str(out)}
            break
        partial = metrics.get("label/complete") is False
        if partial and not partial_labels:
            say(f"[run] {name} is incomplete: {metrics.get('label/remaining', '?')} comparisons are still "
                "undecided, so nothing after it runs on partial labels. Run the same command to continue "
                "labelling, or add --partial_labels true to train the later stages on the pairs decided so far")
            record["stages"][name] = {"status": "incomplete", "seconds": round(seconds, 1), "output_dir": str(out),
                                      "headline": headline(name, metrics)}
            break
        if state.is_main_process:
            atomic_write_json(out / DONE, {"config_hash": digest, "inputs": inputs, "partial": partial,
                                           "seconds": seconds, "finished": time.strftime("%Y-%m-%dT%H:%M:%S")},
                                  what="done")
            (out / RUNNING).unlink(missing_ok=True)
            record["stages"][name] = {"status": "ran", "seconds": round(seconds, 1), "output_dir": str(out),
                                      "peak_rss_mb": metrics.get("memory/peak_rss_mb"),
                                      "headline": headline(name, metrics)}
            if "memory/peak_gpu_mb" in metrics:
                record["stages"][name]["peak_gpu_mb"] = metrics["memory/peak_gpu_mb"]
        say(f"[run] {name} finished in {seconds:.0f} s {headline(name, metrics)}")
        gc.collect()
    record["last_invocation_seconds"] = round(time.time() - started, 1)
    if state.is_main_process:
        record["improvement"] = improvement(root) if "evaluate" in cfgs else None
        root.mkdir(parents=True, exist_ok=True)
        atomic_write_json(record_path, record, what="pipeline")
        print_summary(root, cfgs, record)
    for d in locks:
        unlock_run(d)
    return record


def resumable(cfg, out: Path) -> bool:
    """Whether the run in `out` was started with this config (apart from the keys a resume may change)."""
    old_path = out / "config.yaml"
    if not old_path.is_file():
        return True
    try:
        old = yaml.safe_load(old_path.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError):  # damaged outside the toolkit (its writes are atomic)
        return False
    if not isinstance(old, dict):
        return False
    new = to_dict(cfg)
    return all(old.get(k, v) == v for k, v in new.items() if k not in cfg.RESUMABLE_CHANGES)


def improvement(root: Path) -> dict | None:
    """Aligned policy against SFT from the evaluation report: gold judge, reward, win rates and KL."""
    path = root / "evaluate" / "report.json"
    if not path.is_file():
        return None
    rep = json.loads(path.read_text())
    ck = rep["checkpoints"]
    if "sft" not in ck or "policy" not in ck:
        return None
    out = {}
    for mode in ("greedy", "sampled"):
        if mode not in ck["policy"]:
            continue
        s, p = ck["sft"][mode], ck["policy"][mode]
        for key in ("gold", "reward"):
            if key in p:
                out[f"{mode}/{key}"] = {"sft": s[key], "policy": p[key]}
        for key in ("win_rate_gold", "win_rate_reward", "kl_k1"):
            if key in p:
                out[f"{mode}/{key}"] = p[key]
    return out


def print_summary(root: Path, cfgs: dict, record: dict) -> None:
    print(f"\n[run] summary ({root})")
    print(f"{'stage':<10} {'status':<8} {'seconds':>8} {'peak MB':>8}  {'result':<48} where")
    for name, cfg in cfgs.items():
        r = record["stages"].get(name, {})
        mb = f"{r['peak_rss_mb']:.0f}" if isinstance(r.get("peak_rss_mb"), (int, float)) else "-"
        print(f"{name:<10} {r.get('status', '-'):<8} {r.get('seconds', 0):>8.0f} {mb:>8}  "
              f"{r.get('headline', ''):<48} {cfg.output_dir}")
    imp = record.get("improvement")
    if imp:
        fmt = lambda m: f"{m['mean']:.3f} [{m['ci_low']:.3f}, {m['ci_high']:.3f}]"
        print("\n[run] aligned policy against the SFT policy on held-out prompts (95% bootstrap intervals):")
        for key, v in imp.items():
            if "sft" in v:
                print(f"  {key:<22} sft {fmt(v['sft'])}   policy {fmt(v['policy'])}")
            else:
                print(f"  {key:<22} {fmt(v)}")
        print(f"  report: {root / 'evaluate' / 'report.md'}")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="rlhf run", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pipeline", help="Pipeline YAML (configs/quickstart.yaml, configs/tiny/quickstart.yaml).")
    parser.add_argument("--output_dir", default="", help="Put the stages here instead of the file's output_dir.")
    parser.add_argument("--only", default="", help="Comma-separated stages to run (others are left as they are).")
    parser.add_argument("--set", action="append", default=[], metavar="STAGE.KEY=VALUE",
                        help="Override one stage field, e.g. --set policy.num_updates=4 (repeatable).")
    parser.add_argument("--partial_labels", default="false", metavar="true|false",
                        help="Train the stages after label on the pairs decided so far when a person quit "
                             "labelling part-way (default: stop after the label stage).")
    args = parser.parse_args(argv)
    if not Path(args.pipeline).is_file():
        raise FileNotFoundError(f"pipeline file {args.pipeline} not found")
    if args.partial_labels.lower() not in ("true", "false"):
        raise ConfigError(f"--partial_labels: expected true or false, got {args.partial_labels!r}")
    return run_pipeline(args.pipeline, [s for s in args.only.split(",") if s], args.set, args.output_dir,
                        partial_labels=args.partial_labels.lower() == "true")


if __name__ == "__main__":
    sys.exit(main())
