"""Pin what the tiny pipeline produces, to show that a refactor changes nothing a user can observe.

    python scripts/pin_behaviour.py --write tests/data/behaviour_pin.json   # on the code before the change
    python scripts/pin_behaviour.py --check tests/data/behaviour_pin.json   # after it: exit 1 on a difference

Runs `rlhf run configs/tiny/quickstart.yaml` (every stage on the tiny model) and then the policy stage again
under each VARIANT (the execution paths of the policy loop: one step per batch with the reused forward, GAE,
GRPO, per-row prompts, micro-batches, k3 with the adaptive KL controller, LoRA), each into a fresh directory,
one process, OMP_NUM_THREADS=1. It records every stage's metrics.json and report.json without timings, the
text files' contents (completions, pairs) as hashes, and for every weight tensor its sum, sum of squares and
16 values at fixed positions. --check compares floats to 1e-6 (absolute, or relative above 1) and everything
else exactly. The pin is tied to the machine's float arithmetic (CPU kind, torch build): write it and check it
on the same machine. Not part of the suite for that reason; about 2 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-6
VOLATILE = re.compile(r"(seconds|per_second|^time$|^time/|finished|this_session|features_computed|^since$|"
                      r"^memory/|peak_rss_mb|peak_gpu_mb|^inputs$|^config_hash$|^label/(reused|stale|made)$|"
                      r"^model_dir$|^output_dir$)")
VARIANTS = {  # name -> --set overrides of the policy stage after the default pipeline
    "one_step_reused_forward": ["policy.ppo_epochs=1", "policy.minibatch_size=32"],
    "gae": ["policy.baseline=gae"],
    "grpo": ["policy.baseline=group", "policy.whiten_advantages=false"],
    "rows_without_shared_prompts": ["policy.share_prompts=false"],
    "micro_batches": ["policy.micro_batch_size=4"],
    "k3_adaptive_kl": ["policy.kl_estimator=k3", "policy.target_kl=0.5"],
    "lora": ["policy.use_peft=true", "policy.learning_rate=0.01"],
}


def run(out: Path, sets: list[str]) -> None:
    cmd = [sys.executable, "-m", "rlhf.cli", "run", "configs/tiny/quickstart.yaml", "--output_dir", str(out)]
    for s in sets:
        cmd += ["--set", s]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")


TEMP_ROOT = re.compile(r"^.*?/tmp[^/]*/(default|" + "|".join(VARIANTS) + ")/")


def clean(obj):
    """Without timings, and with the run directory (a temporary one) written as <run>/."""
    if isinstance(obj, dict):
        return {k: clean(v) for k, v in sorted(obj.items()) if not VOLATILE.search(k)}
    if isinstance(obj, list):
        return [clean(v) for v in obj]
    if isinstance(obj, str):
        return TEMP_ROOT.sub("<run>/", obj)
    return obj


def tensor_summary(t) -> list[float]:
    flat = t.detach().double().flatten()
    picks = [int(i) for i in [round(j * (flat.numel() - 1) / 15) for j in range(16)]] if flat.numel() else []
    return [flat.sum().item(), (flat * flat).sum().item()] + [flat[i].item() for i in picks]


def record(stage_dir: Path) -> dict:
    from safetensors.torch import load_file

    rec = {}
    for path in sorted(stage_dir.rglob("*")):
        rel = str(path.relative_to(stage_dir))
        if path.is_dir() or "checkpoints" in path.parts or path.name.startswith(".") or path.suffix == ".png":
            continue
        if path.name in ("metrics.json", "report.json"):
            rec[rel] = clean(json.loads(path.read_text()))
        elif path.suffix == ".safetensors":
            rec[rel] = {k: tensor_summary(v) for k, v in sorted(load_file(path).items())}
        elif path.name in ("completions.jsonl", "pairs.jsonl", "samples.jsonl"):
            rec[rel] = hashlib.sha256(path.read_bytes().replace(str(stage_dir).encode(), b"<dir>")).hexdigest()
    return rec


def pin() -> dict:
    result = {}
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "default"
        run(base, [])
        result["default"] = {d.name: record(d) for d in sorted(base.iterdir()) if d.is_dir()}
        for name, sets in VARIANTS.items():
            out = Path(tmp) / name
            run(out, sets)
            result[name] = {"policy": record(out / "policy")}
            print(f"[pin] {name}: done", flush=True)
    return result


def differences(ref, got, where="") -> list[str]:
    if isinstance(ref, dict) and isinstance(got, dict):
        out = [f"{where}/{k}: missing" for k in ref if k not in got]
        out += [f"{where}/{k}: new" for k in got if k not in ref]
        for k in ref:
            if k in got:
                out += differences(ref[k], got[k], f"{where}/{k}")
        return out
    if isinstance(ref, list) and isinstance(got, list) and len(ref) == len(got):
        return [d for i, (a, b) in enumerate(zip(ref, got)) for d in differences(a, b, f"{where}[{i}]")]
    if isinstance(ref, float) or isinstance(got, float):
        if isinstance(ref, (int, float)) and isinstance(got, (int, float)):
            if math.isnan(ref) and math.isnan(got):
                return []
            if abs(ref - got) <= TOL * max(1.0, abs(ref)):
                return []
    elif ref == got:
        return []
    return [f"{where}: {ref!r} -> {got!r}"]


def largest_float_difference(ref, got) -> float:
    if isinstance(ref, dict) and isinstance(got, dict):
        return max([largest_float_difference(ref[k], got[k]) for k in ref if k in got] or [0.0])
    if isinstance(ref, list) and isinstance(got, list):
        return max([largest_float_difference(a, b) for a, b in zip(ref, got)] or [0.0])
    if isinstance(ref, float) and isinstance(got, (int, float)) and math.isfinite(ref) and math.isfinite(got):
        return abs(ref - got) / max(1.0, abs(ref))
    return 0.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", metavar="PIN")
    mode.add_argument("--check", metavar="PIN")
    args = ap.parse_args()
    got = pin()
    if args.write:
        Path(args.write).parent.mkdir(parents=True, exist_ok=True)
        Path(args.write).write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
        print(f"[pin] wrote {args.write}")
        return 0
    ref = clean(json.loads(Path(args.check).read_text()))
    diffs = differences(ref, got)
    for d in diffs[:50]:
        print(d)
    largest = largest_float_difference(ref, got)
    print(json.dumps({"differences": len(diffs), "largest_float_difference": largest,
                      "variants": ["default", *VARIANTS]}))
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
