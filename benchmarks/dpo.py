"""Benchmark: DPO against the RLHF policy from the same SFT policy and the same labelled pairs, on several seeds,
plus TRL's DPOTrainer run directly on the same pairs and settings (the wrapper's cost).

    python benchmarks/dpo.py --make_run                    # the quickstart's sft..reward, then 3 seeds (CPU: long)
    python benchmarks/dpo.py                               # 3 seeds on a finished runs/quickstart
    python benchmarks/dpo.py --tiny --seeds 100,101        # a smoke run on the tiny test model, in minutes

The runs are kept in `--work_dir` (default runs/dpo_benchmark) under a key of the SFT policy, the reward model, the
pairs and the configs: the same command run again reuses the finished runs, resumes an interrupted training from
its latest checkpoint, and runs only what is missing, so the three seeds can be spread over sessions. A resumed
training's wall time covers only its last part: the table's training times are over the trainings that ran in
one go, and each seed records which were resumed.

What is compared, from `--run_dir` (a finished `rlhf run`: its sft/model, label/pairs.jsonl and reward/model):

- RLHF: `rlhf.stages.policy.train` with the run's policy config (`configs/policy.yaml`; tiny: the tiny one) from
  the SFT policy against the run's reward model;
- DPO: `rlhf.stages.dpo.train` (`configs/dpo.yaml`; tiny: the tiny one) from the SFT policy on the pairs the run's
  reward model was trained on (its config's train_pairs and max_train_pairs): the same labels;
- per seed, one evaluation (`rlhf.stages.evaluate.run`, `configs/evaluate.yaml`) of SFT, the RLHF policy and the
  DPO policy on the same held-out prompts and sampling seeds: the gold judge's score with bootstrap intervals,
  win rate against SFT (gold judge), KL to SFT (k1, sampled); wall time of each training;
- TRL: `trl.DPOTrainer` built directly (LoRA through `peft_config`, the same pairs, beta, learning rate, batch,
  steps, max_length), once, with the first seed's settings, timed from model load to the saved model, against
  `rlhf dpo`'s own wall time on every seed whose training ran in one go (the seeds change the draws, not the
  work). TRL's run records the load average around it; it is kept in the work directory with the runs.

Across seeds each method's gold score is summarised by its mean and a t interval over the seeds; "wins" is the
method whose seed-mean is higher, stated with the paired 95% t interval of the per-seed differences (RLHF and DPO
share each seed's SFT policy, prompts and draws) and whether it excludes 0.

Seeds (benchmarks/README.md, "Protocol"): the policy stage's settings (configs/policy.yaml) were chosen on seeds
0 and 1, selection seeds; the default seeds 100-102 are report seeds, never used for a choice, and the JSON
records the split (`seeds`). Prints a table, then, as the
last line, one JSON object, also written to --out. Heavy runs go one at a time: `flock /tmp/rlhf-heavy.lock python benchmarks/dpo.py`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import (REPORT_SEEDS, finish, kept_run, load_average, paired, run_state,  # noqa: E402
                               seed_record, t_interval, upstream_run, work_key)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--run_dir", default="runs/quickstart", help="A finished `rlhf run` (sft, label, reward).")
    p.add_argument("--make_run", action="store_true", help="First run `rlhf run configs/quickstart.yaml --only "
                   "sft,collect,label,reward` into --run_dir (stages already done there are skipped).")
    p.add_argument("--tiny", action="store_true", help="Build a tiny run first (configs/tiny/quickstart.yaml, "
                   "sft..reward) in a scratch directory and use the tiny configs: a smoke run.")
    p.add_argument("--seeds", default=",".join(map(str, REPORT_SEEDS)), help="Comma-separated report seeds "
                   "(training and evaluation sampling); 0-5 are the selection seeds.")
    p.add_argument("--skip_trl", action="store_true", help="Leave out TRL's DPOTrainer run.")
    p.add_argument("--work_dir", default="", help="Where the runs are kept (under a key of the upstream models, "
                   "pairs and configs), so that the same command run again reuses the finished runs and resumes an "
                   "interrupted one (default runs/dpo_benchmark; --tiny: a scratch directory).")
    p.add_argument("--out", default="", help="JSON output (default benchmarks/results/dpo.json; tiny: dpo_tiny.json).")
    args = p.parse_args(argv)
    args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    args.out = args.out or str(ROOT / f"benchmarks/results/dpo{'_tiny' if args.tiny else ''}.json")
    return args


def seed_split(args: argparse.Namespace) -> dict:
    """Which seeds chose the settings and which this run reports on (benchmarks/README.md, "Protocol")."""
    return seed_record(args.seeds, note="The policy stage's settings chosen on seeds 0 and 1. Report seeds: 100 "
                       "and up.")


def trl_dpo(cfg, records: list[dict], scratch: Path) -> dict:
    """TRL's DPOTrainer directly on the same pairs and settings as `cfg` (an rlhf DPOConfig), timed."""
    from datasets import Dataset
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer

    from rlhf.models import load_model, load_tokenizer

    load_before = load_average()
    started = time.perf_counter()  # as rlhf dpo's wall time: model load to saved model
    tokenizer = load_tokenizer(cfg.model_name_or_path)
    model = load_model(cfg.model_name_or_path)
    steps = cfg.max_steps if cfg.max_steps > 0 else max(1, math.floor(cfg.num_epochs * len(records)
                                                                      // cfg.global_batch_size))
    args = DPOConfig(output_dir=str(scratch / "trl_dpo"), seed=cfg.seed, max_steps=steps,
                     per_device_train_batch_size=cfg.per_device_batch_size,
                     gradient_accumulation_steps=cfg.global_batch_size // cfg.per_device_batch_size,
                     learning_rate=cfg.learning_rate, lr_scheduler_type=cfg.lr_scheduler, beta=cfg.beta,
                     loss_type=[cfg.loss_type], max_length=cfg.max_length, bf16=False, gradient_checkpointing=False,
                     logging_steps=cfg.log_every, save_strategy="no", eval_strategy="no", report_to="none",
                     dataloader_drop_last=True, use_cpu=True)
    trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(records), processing_class=tokenizer,
                         peft_config=LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                                target_modules="all-linear", task_type="CAUSAL_LM")
                         if cfg.use_peft else None)
    trainer.train()
    trainer.save_model(str(scratch / "trl_dpo" / "model"))
    logged = [h for h in trainer.state.log_history if "loss" in h]
    return {"wall_seconds": time.perf_counter() - started, "steps": trainer.state.global_step,
            "load_average_before": load_before, "load_average_after": load_average(),
            "final_loss": logged[-1]["loss"] if logged else None,
            "final_margin": logged[-1].get("rewards/margins") if logged else None}


def kept_runs_key(run: Path, configs: Path) -> str:
    """What the kept runs depend on: the SFT policy, the reward model and its config (which names the pairs),
    the pairs' content, and the policy, DPO and evaluation configs. Another key, another directory."""
    from rlhf.config import read_yaml
    from rlhf.fingerprint import path_digest

    pairs = [p for p in str(read_yaml(run / "reward" / "config.yaml")["train_pairs"]).split(",") if p.strip()]
    return work_key({"sft": path_digest(run / "sft" / "model"), "reward": path_digest(run / "reward" / "model"),
                     "reward_config": path_digest(run / "reward" / "config.yaml"),
                     "pairs": [path_digest(Path(p.strip())) for p in pairs],
                     **{name: path_digest(configs / f"{name}.yaml") for name in ("policy", "dpo", "evaluate")}})


def main(argv=None) -> dict:
    from rlhf.config import load_config, read_yaml
    from rlhf.stages.dpo import DPOConfig, read_dpo_pairs
    from rlhf.stages.dpo import train as dpo_train
    from rlhf.stages.evaluate import EvaluateConfig
    from rlhf.stages.evaluate import run as evaluate
    from rlhf.stages.policy import PolicyConfig
    from rlhf.stages.policy import train as policy_train

    args = parse_args(argv)
    os.chdir(ROOT)  # the configs' relative data paths
    configs = ROOT / ("configs/tiny" if args.tiny else "configs")
    result = {"benchmark": "dpo", "tiny": args.tiny, "seeds": seed_split(args), "per_seed": [], "trl": None}
    with tempfile.TemporaryDirectory(prefix="rlhf-bench-dpo-") as tmp:
        scratch = Path(tmp)
        # (--tiny with --work_dir: the tiny upstream run is kept there too, so that a rerun can reuse its runs)
        run = upstream_run(args.tiny, args.make_run, args.run_dir, Path(args.work_dir) if args.work_dir else scratch)
        sft, rm = run / "sft" / "model", run / "reward" / "model"
        reward_cfg = read_yaml(run / "reward" / "config.yaml")  # the pairs (labels) the reward model saw
        pairs, max_pairs = reward_cfg["train_pairs"], reward_cfg.get("max_train_pairs", 0)
        result["inputs"] = {"sft": str(sft), "reward_model": str(rm), "pairs": pairs, "max_train_pairs": max_pairs}
        work = Path(args.work_dir or (scratch / "work" if args.tiny else "runs/dpo_benchmark")) / kept_runs_key(
            run, configs)
        result["work_dir"] = str(work)
        for seed in args.seeds:
            # (checkpoints every few updates / steps, so that an interrupted benchmark resumes there)
            pol = kept_run(policy_train, PolicyConfig, configs / "policy.yaml", {
                "model_name_or_path": str(sft), "reward_model": str(rm), "reward_fn": "", "normalize_rewards": "true",
                "seed": str(seed), "sample_every": "0", "save_every": "5"}, work / f"policy_{seed}", "the RLHF policy")
            dpo_overrides = {"model_name_or_path": str(sft), "train_pairs": pairs, "max_train_pairs": str(max_pairs),
                             "eval_pairs": "", "seed": str(seed), "save_every": "10"}
            dpo = kept_run(dpo_train, DPOConfig, configs / "dpo.yaml", dpo_overrides, work / f"dpo_{seed}", "DPO")
            if run_state(work / f"eval_{seed}") != "done":  # (an evaluation has no checkpoints: run again whole)
                evaluate(load_config(EvaluateConfig, configs / "evaluate.yaml", {
                    "checkpoints": [str(sft), str(work / f"policy_{seed}" / "model"),
                                    str(work / f"dpo_{seed}" / "model")],
                    "names": ["sft", "rlhf", "dpo"], "reward_model": str(rm), "seed": str(seed), "plots": "false",
                    "output_dir": str(work / f"eval_{seed}"), "overwrite": "true"}))
            report = json.loads((work / f"eval_{seed}" / "report.json").read_text())
            # the stages' own wall times (model load to saved model); a resumed stage's cover its last part only
            row = {"seed": seed, "seconds": {"rlhf": pol["policy/seconds"], "dpo": dpo["dpo/seconds"]},
                   "resumed": {"rlhf": pol["resumed"], "dpo": dpo["resumed"]}}
            for name in ("sft", "rlhf", "dpo"):
                sampled = report["checkpoints"][name].get("sampled", {})
                row[name] = {k: sampled.get(k) for k in ("gold", "reward", "win_rate_gold", "kl_k1")}
            result["per_seed"].append(row)
            if seed == args.seeds[0] and not args.skip_trl:
                trl_file = work / "trl.json"
                if trl_file.exists():
                    result["trl"] = json.loads(trl_file.read_text())
                else:
                    dpo_cfg = load_config(DPOConfig, configs / "dpo.yaml", {**dpo_overrides,
                                                                            "output_dir": str(scratch / "dpo")})
                    records, _ = read_dpo_pairs(pairs, dpo_cfg, max_pairs)
                    result["trl"] = {**trl_dpo(dpo_cfg, records, scratch),
                                     "rlhf_dpo_wall_seconds": row["seconds"]["dpo"],
                                     "rlhf_dpo_resumed": row["resumed"]["dpo"]}
                    trl_file.write_text(json.dumps(result["trl"]))

    def whole_runs(name):  # the wall times of trainings that ran in one go
        return [r["seconds"][name] for r in result["per_seed"] if not r["resumed"][name]]

    def mean_of(name, key):
        vals = [r[name][key]["mean"] if isinstance(r[name][key], dict) else r[name][key]
                for r in result["per_seed"] if r[name].get(key) is not None]
        return t_interval(vals) if vals else None

    summary = {name: {"gold": mean_of(name, "gold"), "win_rate_gold_vs_sft": mean_of(name, "win_rate_gold"),
                      "kl_k1_to_sft": mean_of(name, "kl_k1"),
                      "seconds": t_interval(whole_runs(name)) if name != "sft" and whole_runs(name) else None}
               for name in ("sft", "rlhf", "dpo")}
    result["summary"] = summary
    if result["trl"]:  # TRL's one run against every rlhf dpo run of the same settings (seeds differ only in draws)
        result["trl"]["rlhf_dpo_seconds_whole_runs"] = whole_runs("dpo")
    g_r, g_d = summary["rlhf"]["gold"], summary["dpo"]["gold"]
    if g_r and g_d:
        winner = "tie" if g_r["mean"] == g_d["mean"] else "rlhf" if g_r["mean"] > g_d["mean"] else "dpo"
        rows = [r for r in result["per_seed"] if r["rlhf"].get("gold") and r["dpo"].get("gold")]
        diff = paired([r["rlhf"]["gold"]["mean"] for r in rows], [r["dpo"]["gold"]["mean"] for r in rows])
        excludes_0 = None if diff["ci95"] is None else diff["low"] > 0 or diff["high"] < 0  # one seed: no interval
        result["winner"] = {"method": winner, "rlhf_minus_dpo_gold": diff, "interval_excludes_0": excludes_0}
    fmt = lambda i: "-" if not i else (f"{i['mean']:.3f}" + ("" if math.isnan(i["low"]) else
                                                             f" [{i['low']:.3f}, {i['high']:.3f}]"))
    print(f"\n{'method':<6}  {'gold (seeds, 95% t)':<26}  {'win vs sft':<26}  {'KL to sft':<26}  train s")
    for name, s in summary.items():
        print(f"{name:<6}  {fmt(s['gold']):<26}  {fmt(s['win_rate_gold_vs_sft']):<26}  {fmt(s['kl_k1_to_sft']):<26}  "
              f"{fmt(s['seconds'])}")
    resumed = [f"{name} seed {r['seed']}" for r in result["per_seed"] for name in ("rlhf", "dpo") if r["resumed"][name]]
    if resumed:
        print(f"train s: over the trainings that ran in one go (resumed, left out: {', '.join(resumed)})")
    if "winner" in result:
        w = result["winner"]
        d = w["rlhf_minus_dpo_gold"]
        verdict = "excludes" if w["interval_excludes_0"] else "covers"
        print(f"higher gold score: {w['method']}; rlhf - dpo {d['mean']:+.3f} "
              + ("(one seed: no interval)" if d["ci95"] is None else
                 f"± {d['ci95']:.3f} (paired 95% t over seeds), {verdict} 0"))
    if result["trl"]:
        t = result["trl"]
        runs = t["rlhf_dpo_seconds_whole_runs"]
        print(f"TRL DPOTrainer directly (load, train, save), seed {args.seeds[0]}'s settings: "
              f"{t['wall_seconds']:.1f} s; rlhf dpo (the same, with reading the pairs and the output contract), "
              "each seed's run in one go: "
              + (", ".join(f"{x:.1f}" for x in runs) + f" s (mean {sum(runs) / len(runs):.1f})" if runs else "-"))
    return finish(result, args.out, argv)


if __name__ == "__main__":
    main(sys.argv[1:])
