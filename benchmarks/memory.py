"""Benchmark: peak resident memory of every quickstart stage, and of the policy stage against TRL's RLOOTrainer.

    python benchmarks/memory.py                      # the quickstart (policy 2 updates) + both policy sides
    python benchmarks/memory.py --skip_pipeline      # only the side-by-side policy runs

Three kinds of figure, each from a process of its own, so that no figure carries another's peak:

1. The quickstart: `rlhf run configs/quickstart.yaml` (policy stage cut to --updates updates; the peak is
   reached in the first) in a child process. Per stage, the stage's own peak (`memory/peak_rss_mb` in its
   metrics.json; rlhf.memory resets the kernel's peak when a stage starts), and the whole command's peak
   (the child's ru_maxrss, what `/usr/bin/time -v` reports).
2. The toolkit's policy stage and 3. TRL's RLOOTrainer, on the same settings (benchmarks/policy.py: SmolLM2-135M
   in fp32, LoRA r 16 on every linear layer, 8 prompts x 4 completions of 32 new tokens, one optimiser step per
   batch, run in pieces of --micro_batch_size completions with gradients accumulated, the gold judge as
   reward, no gradient checkpointing and no bf16 on either side), each alone in a child process: the child's
   ru_maxrss.

Targets: policy stage <= 2500 MB at the quickstart's settings, the
whole quickstart <= 3000 MB. The last line is one JSON object, also written to benchmarks/results/memory.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import finish  # noqa: E402

STAGES = ("sft", "collect", "label", "reward", "policy", "evaluate")


def run_child(cmd: list[str], log: Path) -> tuple[float, float]:
    """Run cmd to completion (output to log); (peak RSS of the child in MB, wall seconds)."""
    t = time.time()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
                                env={**os.environ, "TQDM_DISABLE": "1", "TOKENIZERS_PARALLELISM": "false"})
        _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"memory.py: error: {' '.join(cmd)} failed; see {log}:\n{log.read_text()[-2000:]}")
    return usage.ru_maxrss / 1024, time.time() - t  # ru_maxrss: kilobytes on Linux


def child_policy(side: str, updates: int, micro: int) -> None:
    """One side of benchmarks/policy.py, alone in this process."""
    from benchmarks import policy as bench

    args = bench.parse_args(["--updates", str(updates), "--threads", "0", "--micro_batch_size", str(micro)])
    with tempfile.TemporaryDirectory() as tmp:
        if side == "rlhf":
            bench.run_rlhf(args, Path(tmp))
        else:
            from rlhf.models import load_tokenizer

            expected = bench.trl_dataset(args, load_tokenizer(bench.SMOLLM2_ALIAS))["prompt_id"]
            bench.run_trl(args, Path(tmp), expected)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--updates", type=int, default=2, help="Policy updates (quickstart and both policy sides).")
    p.add_argument("--output_dir", default="runs/bench_memory", help="Where the quickstart runs (started afresh).")
    p.add_argument("--micro_batch_size", type=int, default=4, help="Side-by-side policy runs: completions per "
                   "forward/backward piece on both sides (configs/policy.yaml's; TRL: per_device_train_batch_size "
                   "with gradient accumulation to one step per batch).")
    p.add_argument("--skip_pipeline", action="store_true", help="Only the side-by-side policy runs.")
    p.add_argument("--child", choices=["rlhf", "trl"], help=argparse.SUPPRESS)
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/memory.json"))
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.child:
        child_policy(args.child, args.updates, args.micro_batch_size)
        return {}

    logs = Path(tempfile.mkdtemp(prefix="rlhf-memory-"))
    result: dict = {"benchmark": "memory", "updates": args.updates, "micro_batch_size": args.micro_batch_size,
                    "targets_mb": {"policy": 2500, "quickstart": 3000}}
    if not args.skip_pipeline:
        out = Path(args.output_dir)
        cmd = [sys.executable, "-m", "rlhf.cli", "run", "configs/quickstart.yaml", "--output_dir", str(out),
               "--set", f"policy.num_updates={args.updates}"]
        if out.exists():
            cmd += [f"--set={s}.overwrite=true" for s in STAGES]
            import shutil

            shutil.rmtree(out)
        peak, wall = run_child(cmd, logs / "quickstart.log")
        stages = {}
        for s in STAGES:
            m = json.loads((out / s / "metrics.json").read_text())
            stages[s] = {"peak_rss_mb": m["memory/peak_rss_mb"], "scope": m["memory/rss_scope"]}
        result["quickstart"] = {"command": " ".join(cmd[1:]), "process_peak_rss_mb": round(peak, 1),
                                "wall_seconds": round(wall, 1), "stages": stages}
    sides = {}
    for side in ("rlhf", "trl"):
        peak, wall = run_child([sys.executable, str(Path(__file__)), "--child", side, "--updates",
                                str(args.updates), "--micro_batch_size", str(args.micro_batch_size)],
                               logs / f"policy_{side}.log")
        sides[side] = {"process_peak_rss_mb": round(peak, 1), "wall_seconds": round(wall, 1)}
    result["policy_side_by_side"] = sides

    print(f"\nPeak resident memory (MB), SmolLM2-135M on the CPU; logs in {logs}")
    if "quickstart" in result:
        q = result["quickstart"]
        print("\n| quickstart stage | own peak RSS (MB) |\n|---|---|")
        for s, v in q["stages"].items():
            print(f"| {s} | {v['peak_rss_mb']:.0f} |")
        print(f"| whole `rlhf run` process | {q['process_peak_rss_mb']:.0f} (target 3000) |")
    print("\n| policy, same settings (gold judge reward) | process peak RSS (MB) | wall s |\n|---|---|---|")
    print(f"| rlhf policy stage | {sides['rlhf']['process_peak_rss_mb']:.0f} | {sides['rlhf']['wall_seconds']:.0f} |")
    print(f"| TRL RLOOTrainer | {sides['trl']['process_peak_rss_mb']:.0f} | {sides['trl']['wall_seconds']:.0f} |")
    return finish(result, args.out, argv)


if __name__ == "__main__":
    main()
