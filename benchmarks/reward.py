"""Benchmark: reward-model training with the toolkit's reward stage against TRL's RewardTrainer.

    python benchmarks/reward.py                                   # the full comparison (3 epochs, all pairs)
    python benchmarks/reward.py --max_train_pairs 64 --epochs 1   # a smoke run (a few minutes on 2 CPU cores)
    python benchmarks/reward.py --skip_trl                        # the toolkit alone

What is compared, in one process and one run, on the same preference pairs, backbone (the embedded
SmolLM2-135M-Instruct), epochs, batch size, learning rate, max_length and seed:

- rlhf: `rlhf.stages.reward.train` with the backbone frozen (its default): last-token features computed once
  per unique text, then a linear head trained with the Bradley-Terry loss. The feature cache is a fresh, empty
  temporary directory (`RLHF_FEATURE_CACHE`), so the time includes feature extraction for every train and
  held-out text.
- TRL: `trl.RewardTrainer` on `AutoModelForSequenceClassification` (num_labels=1) from the same local
  weights, every parameter frozen except the `score` head, given the pairs as a conversational `Dataset`
  (prompt / chosen / rejected), to which TRL applies the same chat template.

Fairness:
- Same data: both sides read the pair files with `rlhf.preferences.read_pairs`; with --max_train_pairs both
  take the same first N pairs. Both render conversations with the same tokenizer and chat template; no text is
  longer than max_length here (TRL drops longer pairs, the toolkit cuts them on the left: the count of pairs
  TRL trained on is recorded).
- Same optimisation: AdamW, the same learning rate held constant (the toolkit has no schedule, so TRL gets
  `lr_scheduler_type="constant"`), no weight decay, no gradient clipping (`max_grad_norm=0`; the toolkit does
  not clip), per-device batch = global batch = --batch_size on one process, fp32 (`bf16=False`), no gradient
  checkpointing, no dropout. The heads start from each library's own initialisation.
- Timing excludes one-off work neither side repeats: converting the embedded model into the cache happens
  before any clock starts, and one untimed load of the backbone warms the page cache for both sides. TRL's
  time is the trainer's construction (its tokenisation of the data set) plus `trainer.train()`; its model is
  loaded before the clock. The toolkit's stage loads its backbone inside `train`, so its time is measured as
  is, around the whole `train(cfg)` call: backbone load, reading pairs, feature extraction, training,
  per-epoch and final evaluation, and saving the model. That load time, measured separately, is also
  recorded, with the stage's time minus it; the ratio in the table uses the time as measured.
- Held-out accuracy: the toolkit's `eval/accuracy`; for TRL, computed here on the same test pairs with the
  trained model (left-padded batches with explicit positions, so its rightmost-non-pad pooling reads the last
  real token although pad == eos), as the fraction of pairs with r_chosen > r_rejected.

Seeds (benchmarks/README.md, "Protocol"): no setting here was chosen on any seed (both sides take the same
fixed epochs, batch, learning rate and max_length; the accuracy is a like-for-like check of two implementations,
not a tuned result), so the default seed 0 stays; the JSON records the split (`seeds`, no selection seeds).

Prints a table and the TRL / rlhf wall-time ratio, then, as the last line of stdout, one JSON object with every
figure and the machine, also written to --out.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runs from a checkout without installing the package

from benchmarks.common import finish, machine, seed_record  # noqa: E402
from rlhf.models import SMOLLM2_ALIAS  # noqa: E402

TARGET_SPEEDUP = 10.0  # TRL wall time / rlhf wall time, at the same or better held-out accuracy over 3+ epochs


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--epochs", type=int, default=3, help="Passes over the training pairs (both sides).")
    p.add_argument("--train_pairs", default="reward_data/pairs_train.jsonl", help="Training pairs (a relative "
                   "path not found from the current directory is taken from the repository root).")
    p.add_argument("--eval_pairs", default="reward_data/pairs_test.jsonl", help="Held-out pairs (likewise).")
    p.add_argument("--max_train_pairs", type=int, default=0, help="Use only the first N training pairs (0: all).")
    p.add_argument("--batch_size", type=int, default=8, help="Pairs per optimiser step (both sides, one process).")
    p.add_argument("--learning_rate", type=float, default=1e-3, help="AdamW learning rate, constant (both sides).")
    p.add_argument("--max_length", type=int, default=256, help="Tokens per prompt + response.")
    p.add_argument("--seed", type=int, default=0, help="Seed of head initialisation and data order.")
    p.add_argument("--skip_trl", action="store_true", help="Run only the toolkit's stage (a quick check).")
    p.add_argument("--out", default="benchmarks/results/reward.json", help="Where the JSON goes (a relative path: "
                   "from the repository root).")
    args = p.parse_args(argv)
    for name in ("train_pairs", "eval_pairs"):
        path = Path(getattr(args, name))
        if not path.is_absolute() and not path.exists() and (ROOT / path).exists():
            setattr(args, name, str(ROOT / path))
    args.out = str(ROOT / args.out)  # an absolute --out stays as it is
    for name in ("epochs", "batch_size", "max_length"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1")
    if args.max_train_pairs < 0:
        p.error("--max_train_pairs must be >= 0")
    return args


# ------------------------------------------------------------------------------------------ data


def load_pairs(args, scratch: Path) -> tuple[str, list, list, bool]:
    """(train file for the stage, train pairs, eval pairs, whether all training pairs are used): with
    --max_train_pairs, the first N pairs are written to a scratch file so that both sides train on exactly the
    same ones."""
    from rlhf.preferences import read_pairs, write_pairs

    train, _ = read_pairs(args.train_pairs)
    evals, _ = read_pairs(args.eval_pairs)
    if any(p.tie for p in train):
        # TRL has no notion of a tie (the stage trains them with a 0.5 target): the two would not see the same task.
        raise SystemExit(f"{args.train_pairs} holds tie pairs; this benchmark needs pairs without ties")
    if not args.max_train_pairs or args.max_train_pairs >= len(train):
        return args.train_pairs, train, evals, True
    train = train[:args.max_train_pairs]
    train_file = str(scratch / "pairs_train.jsonl")
    write_pairs(train_file, train, "same")
    return train_file, train, evals, False


# ------------------------------------------------------------------------------------------ rlhf


def run_rlhf(args, train_file: str, n_train: int, scratch: Path) -> dict:
    """The toolkit's reward stage, frozen backbone, empty feature cache; timed around the whole `train` call."""
    from rlhf.reward import RewardModel
    from rlhf.stages.reward import RewardConfig, train

    # 1. One untimed load: its time, measured on its own, is what `train` spends loading the same backbone.
    t = time.perf_counter()
    RewardModel.from_backbone(SMOLLM2_ALIAS, max_length=args.max_length, seed=args.seed)
    load_seconds = time.perf_counter() - t

    # 2. The stage, with a fresh and empty feature cache.
    cfg = RewardConfig(output_dir=str(scratch / "rlhf"), model_name_or_path=SMOLLM2_ALIAS, train_pairs=train_file,
                       eval_pairs=args.eval_pairs, max_length=args.max_length, head="linear",
                       learning_rate=args.learning_rate, num_epochs=args.epochs, global_batch_size=args.batch_size,
                       per_device_batch_size=args.batch_size, seed=args.seed)
    cfg.validate()
    previous = os.environ.get("RLHF_FEATURE_CACHE")
    os.environ["RLHF_FEATURE_CACHE"] = str(scratch / "features")  # does not exist yet: every feature is computed
    try:
        t = time.perf_counter()
        metrics = train(cfg)
        wall = time.perf_counter() - t
    finally:
        if previous is None:
            os.environ.pop("RLHF_FEATURE_CACHE", None)
        else:
            os.environ["RLHF_FEATURE_CACHE"] = previous
    return {"wall_seconds": wall, "pairs_per_second": args.epochs * n_train / wall,
            "eval_accuracy": metrics["eval/accuracy"], "train_accuracy": metrics["train/accuracy"],
            "extract_seconds": metrics["reward/extract_seconds"], "stage_seconds": metrics["reward/seconds"],
            "features_computed": metrics["reward/features_computed"], "unique_texts": metrics["reward/unique_texts"],
            "backbone_forwards": metrics["reward/features_computed"],  # once per unique train or held-out text
            "backbone_load_seconds": load_seconds, "wall_seconds_excluding_load": wall - load_seconds,
            "train_pairs": n_train}


# ------------------------------------------------------------------------------------------ TRL


@torch.no_grad()
def trl_rewards(model, tokenizer, conversations: list[list[dict]], max_length: int,
                batch_size: int = 16) -> list[float]:
    """Rewards of whole conversations with a sequence-classification model, rendered as in training.

    Left padding, so that the model's pooling (the rightmost token that is not the pad token) reads each row's
    last real token even though pad == eos; positions count from each row's first real token, so a padded row
    scores as it would alone. Longer texts are cut on the left, as the toolkit does (none are, here).
    """
    model.eval()
    device = next(model.parameters()).device
    texts = [tokenizer.apply_chat_template(c, tokenize=False) for c in conversations]
    side, trunc = tokenizer.padding_side, tokenizer.truncation_side
    tokenizer.padding_side, tokenizer.truncation_side = "left", "left"
    try:
        out = []
        for i in range(0, len(texts), batch_size):
            enc = tokenizer(texts[i:i + batch_size], add_special_tokens=False, padding=True, truncation=True,
                            max_length=max_length, return_tensors="pt").to(device)
            positions = (enc["attention_mask"].cumsum(-1) - 1).clamp(min=0)  # [B, T]
            logits = model(**enc, position_ids=positions, use_cache=False).logits  # [B, 1]
            out += logits.squeeze(-1).float().tolist()
    finally:
        tokenizer.padding_side, tokenizer.truncation_side = side, trunc
    return out


def run_trl(args, train_pairs: list, eval_pairs: list, scratch: Path) -> dict:
    """TRL's RewardTrainer with everything but the score head frozen; timed: trainer construction + train()."""
    import dataclasses

    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, TrainingArguments, set_seed
    from trl import RewardConfig, RewardTrainer

    from rlhf.models import load_tokenizer, resolve_model_path

    # 1. Model and tokenizer, before the clock.
    tokenizer = load_tokenizer(SMOLLM2_ALIAS)
    set_seed(args.seed)  # the score head is initialised at load
    model = AutoModelForSequenceClassification.from_pretrained(resolve_model_path(SMOLLM2_ALIAS), num_labels=1,
                                                               dtype=torch.float32)
    model.config.pad_token_id = tokenizer.pad_token_id
    for name, param in model.named_parameters():
        param.requires_grad = name.startswith("score.")
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert trainable == ["score.weight"], trainable
    dataset = Dataset.from_list([{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected}
                                 for p in train_pairs])
    # TRL defaults bf16 and gradient checkpointing to on: both off. transformers 5 renamed the latter
    # `activation_checkpointing` (the old name, a deprecated alias, warns); whichever name it reads gets False.
    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    checkpointing = "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"
    config = RewardConfig(
        output_dir=str(scratch / "trl"), learning_rate=args.learning_rate, num_train_epochs=args.epochs,
        per_device_train_batch_size=args.batch_size, max_length=args.max_length, seed=args.seed,
        lr_scheduler_type="constant", weight_decay=0.0, max_grad_norm=0.0,  # the toolkit's optimiser
        bf16=False, **{checkpointing: False},
        report_to="none", save_strategy="no", eval_strategy="no", disable_dropout=True,
        dataloader_num_workers=0, use_cpu=not torch.cuda.is_available(),
    )
    assert config.bf16 is False and config.gradient_checkpointing is False, (config.bf16, config.gradient_checkpointing)

    # 2. Timed: data set preparation (inside the constructor) and training.
    t = time.perf_counter()
    trainer = RewardTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer)
    prepare = time.perf_counter() - t
    trainer.train()
    wall = time.perf_counter() - t
    assert not getattr(trainer.model, "is_activation_checkpointing" if checkpointing.startswith("activation")
                       else "is_gradient_checkpointing")

    # 3. Held-out accuracy, outside the wall time (its own time is recorded: the toolkit's wall time includes
    #    extracting the held-out features).
    t = time.perf_counter()
    rc = trl_rewards(trainer.model, tokenizer, [p.prompt + p.chosen for p in eval_pairs], args.max_length)
    rr = trl_rewards(trainer.model, tokenizer, [p.prompt + p.rejected for p in eval_pairs], args.max_length)
    eval_seconds = time.perf_counter() - t
    decided = [(c, r) for c, r, p in zip(rc, rr, eval_pairs) if not p.tie]  # ties have no right answer
    return {"wall_seconds": wall, "pairs_per_second": args.epochs * len(train_pairs) / wall,
            "eval_accuracy": sum(c > r for c, r in decided) / len(decided) if decided else float("nan"),
            "prepare_seconds": prepare, "train_seconds": wall - prepare, "eval_seconds_untimed": eval_seconds,
            "train_pairs": len(train_pairs), "train_pairs_after_length_filter": len(trainer.train_dataset),
            "optimizer_steps": trainer.state.global_step,
            # every step runs the (frozen) backbone on both texts of each pair
            "backbone_forwards": 2 * len(trainer.train_dataset) * args.epochs}


# ------------------------------------------------------------------------------------------ report


def table(result: dict) -> str:
    rows = [("side", "wall s", "pairs/s", "held-out acc", "extract s")]
    r = result["rlhf"]
    rows.append(("rlhf", f"{r['wall_seconds']:.1f}", f"{r['pairs_per_second']:.1f}", f"{r['eval_accuracy']:.3f}",
                 f"{r['extract_seconds']:.1f}"))
    if result["trl"] is not None:
        t = result["trl"]
        rows.append(("TRL", f"{t['wall_seconds']:.1f}", f"{t['pairs_per_second']:.1f}", f"{t['eval_accuracy']:.3f}",
                     "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in rows]
    c = result["config"]
    notes = [f"reward model on {c['model']} (frozen backbone, linear head): {c['train_pairs_used']} train / "
             f"{c['eval_pairs_used']} held-out pairs, {c['epochs']} epoch(s), batch {c['batch_size']}, "
             f"lr {c['learning_rate']:g} (constant), max_length {c['max_length']}, seed {c['seed']}",
             "", *lines, "",
             f"rlhf wall s: the whole train() call as measured, including the backbone load "
             f"({r['backbone_load_seconds']:.1f} s measured apart; "
             f"{r['wall_seconds_excluding_load']:.1f} s without it) "
             "and saving the model; extract s: the stage's reward/extract_seconds (load, reading pairs and "
             f"computing {r['features_computed']} features into an empty cache)."]
    if result["trl"] is not None:
        t = result["trl"]
        notes.append("TRL wall s: RewardTrainer construction (data set preparation) + trainer.train(); model loaded "
                     "before the clock; held-out accuracy computed afterwards, outside it "
                     f"({t['eval_seconds_untimed']:.1f} s).")
        notes.append(f"TRL / rlhf wall time: {result['trl_over_rlhf_wall']:.1f}x "
                     f"({result['trl_over_rlhf_wall_excluding_load']:.1f}x with the rlhf backbone load taken out); "
                     f"TRL trained on {t['train_pairs_after_length_filter']} of {t['train_pairs']} pairs "
                     f"in {t['optimizer_steps']} steps.")
        notes.append(f"backbone forward passes (texts): rlhf {r['backbone_forwards']} (once per unique train or "
                     f"held-out text), TRL {t['backbone_forwards']} (both texts of every pair, every epoch).")
        met = result["target_met"]
        notes.append(f"target (>= {TARGET_SPEEDUP:g}x less wall time than TRL at the same or better held-out "
                     f"accuracy, 3+ epochs; here {result['config']['train_pairs_used']} train pairs, "
                     f"{result['config']['epochs']} epochs): "
                     + ("not judged (fewer than 3 epochs)" if met is None else "met" if met else "NOT met"))
    return "\n".join(notes)


def seed_split(args: argparse.Namespace) -> dict:
    """The seed split (benchmarks/README.md, "Protocol"): no selection seeds, the one seed reported."""
    return seed_record([args.seed], selection=[], note="No setting chosen on any seed: both sides run the same fixed "
                       "settings.")


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    from rlhf.models import resolve_model_path

    # The embedded model is converted into the cache once (~20 s on a fresh machine): before any clock.
    model_path = resolve_model_path(SMOLLM2_ALIAS)
    with tempfile.TemporaryDirectory(prefix="rlhf-bench-reward-") as tmp:
        scratch = Path(tmp)
        train_file, train_pairs, eval_pairs, all_pairs = load_pairs(args, scratch)
        rlhf = run_rlhf(args, train_file, len(train_pairs), scratch)
        trl_result = None if args.skip_trl else run_trl(args, train_pairs, eval_pairs, scratch)

    result = {
        "benchmark": "reward",
        "seeds": seed_split(args),
        "config": {"model": SMOLLM2_ALIAS, "model_path": model_path, "train_pairs": args.train_pairs,
                   "eval_pairs": args.eval_pairs, "train_pairs_used": len(train_pairs),
                   "eval_pairs_used": len(eval_pairs), "max_train_pairs": args.max_train_pairs,
                   "all_train_pairs": all_pairs,
                   "epochs": args.epochs, "batch_size": args.batch_size, "learning_rate": args.learning_rate,
                   "lr_schedule": "constant", "max_length": args.max_length, "seed": args.seed},
        "machine": machine(),
        "rlhf": rlhf,
        "trl": trl_result,
        "trl_over_rlhf_wall": None,
        "trl_over_rlhf_wall_excluding_load": None,
        "target_speedup": TARGET_SPEEDUP,
        "target_met": None,
    }
    if trl_result is not None:
        result["trl_over_rlhf_wall"] = trl_result["wall_seconds"] / rlhf["wall_seconds"]
        result["trl_over_rlhf_wall_excluding_load"] = trl_result["wall_seconds"] / rlhf["wall_seconds_excluding_load"]
        if args.epochs >= 3:  # the target's condition: enough epochs for caching to pay
            result["target_met"] = bool(result["trl_over_rlhf_wall"] >= TARGET_SPEEDUP
                                        and rlhf["eval_accuracy"] >= trl_result["eval_accuracy"])

    print("\n" + table(result) + f"\n(written to {args.out})", flush=True)
    return finish(result, args.out, argv)


if __name__ == "__main__":
    main(sys.argv[1:])
