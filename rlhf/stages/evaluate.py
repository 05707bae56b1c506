"""Stage 5: evaluate checkpoints side by side on held-out prompts.

    rlhf evaluate --config configs/evaluate.yaml
    rlhf evaluate --checkpoints runs/quickstart/sft/model,runs/quickstart/policy/model \
        --reward_model runs/quickstart/reward/model --output_dir runs/eval
    accelerate launch --num_processes 2 scripts/evaluate.py --config configs/tiny/evaluate.yaml

Any checkpoint the loader takes: a transformers model directory (from this toolkit or any other tool), a PEFT
adapter directory, a hub id or an alias. For each checkpoint, on the same prompts and with the same seeds:

    1. generate: one greedy completion per prompt and `num_samples` sampled ones (KV-cached, batched);
    2. score: the reward model (mean with a bootstrap 95% interval over prompts) and the task's gold judge
       where the prompts carry the task's fields;
    3. KL to the reference checkpoint: a sequence-level Monte-Carlo estimate on the sampled completions,
       k1 = log pi(y) - log pi_ref(y) and k3 = r - 1 - log r with r = pi_ref(y) / pi(y);
    4. win rate against the baseline checkpoint, prompt by prompt (greedy against greedy, sample j against
       sample j), judged by the reward model and by the gold judge, ties counting half;
    5. text statistics: length, distinct-1/2, repetition rate, EOS fraction; reference-based metrics from
       the `evaluate` library where the prompts carry references and the metric loads (one that cannot be
       loaded, e.g. offline, is skipped with a notice).

Writes report.json (every number), report.md (the table) and PNG plots (reward against KL across checkpoints,
length distributions). With several processes the prompts are sharded and the results gathered; the report
is written by the main process.
"""

from __future__ import annotations

import gc
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rlhf.config import ConfigError, RunConfig, option, require_at_least
from rlhf.rollout import load_prompts, response_logprobs, sample
from rlhf.stats import distinct_n, mean_and_ci, repetition_rate, win_outcomes
from rlhf.fsio import (atomic_file, atomic_write_json, atomic_write_jsonl, atomic_write_text, read_jsonl,
                       releases_run_lock)

DECODINGS = ("greedy", "sampled")


@dataclass
class EvaluateConfig(RunConfig):
    """Side-by-side evaluation of checkpoints (stage 5)."""

    output_dir: str = option("runs/evaluate", help="Where report.json, report.md, plots and completions go.")
    checkpoints: list[str] = option(["runs/quickstart/sft/model", "runs/quickstart/policy/model"],
                                    help="Checkpoints to compare (comma-separated on the command line).")
    names: list[str] = option([], help="Display names, one per checkpoint (default: from the paths).")
    baseline: str = option("", help="Checkpoint the win rates are against (default: the first).")
    reference: str = option("", help="Checkpoint the KL is to (default: the baseline).")
    reward_model: str = option("runs/quickstart/reward/model", help="Reward model directory ('' : none).")
    normalize_rewards: bool = option(True, help="Report (r - mean) / std with the reward model's statistics.")
    prompts: str = option("reward_data/prompts_test.jsonl", help="Held-out prompts (.jsonl/.json/.parquet or hub).")
    prompts_split: str = option("test", help="Split for a hub prompt data set.")
    max_prompts: int = option(0, help="Use only the first this many prompts (0: all).")
    num_samples: int = option(4, help="Sampled completions per prompt (0: greedy only; KL needs samples).")
    greedy: bool = option(True, help="Also evaluate one greedy completion per prompt.")
    temperature: float = option(1.0, help="Sampling temperature (the KL estimate assumes 1.0).")
    top_p: float = option(1.0, help="Nucleus sampling mass (the KL estimate assumes 1.0).")
    max_new_tokens: int = option(48, help="New tokens per completion.")
    batch_size: int = option(16, help="Prompts per generate call, per process.")
    bootstrap_samples: int = option(1000, help="Bootstrap resamples for the intervals.")
    confidence: float = option(0.95, help="Confidence level of the intervals.")
    metrics: list[str] = option(["exact_match", "token_f1", "contains_reference"],
                                help="Reference-based metrics of the greedy completions, used where the prompts "
                                "carry a reference: exact_match, token_f1 and contains_reference are computed "
                                "here (rlhf/text_metrics.py); any other name (rouge, bleu, ...) is loaded with "
                                "`evaluate.load`, which downloads it on first use (opt-in).")
    plots: bool = option(True, help="Write PNG plots.")

    def validate(self) -> None:
        super().validate()
        require_at_least(self, 1, "max_new_tokens", "batch_size", "bootstrap_samples")
        if not self.checkpoints:
            raise ConfigError("checkpoints: give at least one checkpoint")
        if self.names and len(self.names) != len(self.checkpoints):
            raise ConfigError(f"names has {len(self.names)} entries for {len(self.checkpoints)} checkpoints")
        if len(set(self.display_names())) != len(self.checkpoints):
            raise ConfigError(f"checkpoint names must be unique, got {self.display_names()}; set `names`")
        if self.num_samples < 0 or (self.num_samples == 0 and not self.greedy):
            raise ConfigError("num_samples must be >= 0, and > 0 when greedy is false")
        if self.baseline and self.baseline not in self.checkpoints:
            raise ConfigError(f"baseline '{self.baseline}' is not one of the checkpoints")
        if not 0 < self.confidence < 1 or not self.temperature > 0 or not 0 < self.top_p <= 1:
            raise ConfigError("need 0 < confidence < 1, temperature > 0, 0 < top_p <= 1")

    def display_names(self) -> list[str]:
        if self.names:
            return list(self.names)
        out = []
        for c in self.checkpoints:
            p = Path(c)
            out.append(p.parent.name if p.name == "model" and p.parent.name else p.name or c)
        return out


# ------------------------------------------------------------------------------------------ pieces


@dataclass
class Generations:
    """One checkpoint's completions on this process's prompts. Sampled rows are prompt-major: row
    p * num_samples + j is sample j of prompt p."""

    greedy: list[str]
    sampled: list[str]
    greedy_tokens: list[int]
    sampled_tokens: list[int]
    greedy_eos: list[bool]
    sampled_eos: list[bool]
    sampled_logp: list[float]  # log pi(y) of each sampled completion under its own checkpoint
    batches: list[tuple[torch.Tensor, torch.Tensor, int, int]]  # (sequences, mask, n_query, samples per prompt)


@torch.no_grad()
def generate_all(model, tokenizer, prompts: list[dict], cfg: EvaluateConfig, device, rank: int, desc: str,
                 disable_bar: bool) -> Generations:
    from tqdm.auto import tqdm

    g = Generations([], [], [], [], [], [], [], [])
    starts = range(0, len(prompts), cfg.batch_size)
    for b, s in enumerate(tqdm(starts, desc=desc, disable=disable_bar)):
        batch = [p["prompt"] for p in prompts[s:s + cfg.batch_size]]
        for mode in DECODINGS:
            n = 1 if mode == "greedy" else cfg.num_samples
            if (mode == "greedy" and not cfg.greedy) or n == 0:
                continue
            # Same seed for every checkpoint (common random numbers), distinct per batch and process.
            torch.manual_seed(cfg.seed * 1_000_003 + rank * 10_007 + b)
            kwargs = dict(do_sample=True, temperature=cfg.temperature, top_p=cfg.top_p, top_k=0) \
                if mode == "sampled" else dict(do_sample=False)
            out = sample(model, tokenizer, batch, n, device, max_new_tokens=cfg.max_new_tokens,
                         **kwargs)  # prefill once per prompt
            getattr(g, mode).extend(out.texts)
            getattr(g, f"{mode}_tokens").extend(out.lengths.tolist())
            getattr(g, f"{mode}_eos").extend(out.ended.tolist())
            if mode == "sampled":
                mask = out.mask  # [N, T_q + T_r]
                rmask = mask[:, out.n_query:]
                logp = (response_logprobs(model, out.sequences, mask, out.n_query, n) * rmask).sum(1)
                g.sampled_logp.extend(logp.tolist())
                g.batches.append((out.sequences.cpu(), mask.cpu(), out.n_query, n))
    return g


@torch.no_grad()
def reference_logp(ref_model, gens: Generations, device) -> list[float]:
    """log pi_ref of a checkpoint's sampled completions, in the same order."""
    out = []
    for seqs, mask, n_query, group in gens.batches:
        seqs, mask = seqs.to(device), mask.to(device)
        rmask = mask[:, n_query:]
        out.extend((response_logprobs(ref_model, seqs, mask, n_query, group) * rmask).sum(1).tolist())
    return out


def per_prompt(values: list[float], n: int) -> np.ndarray:
    """Row-major values of n samples per prompt [P * n] -> per-prompt means [P]."""
    return np.asarray(values, dtype=np.float64).reshape(-1, n).mean(axis=1)


def reference_metrics(names: list[str], predictions: list[str], references: list[str],
                      aliases: list[list[str]] | None = None) -> tuple[dict, list[str]]:
    """Reference metrics of predictions: the built-in ones (rlhf.text_metrics, best over the reference and its
    aliases) as `name/name`, any other through `evaluate` as `name/key`; one that cannot be loaded is skipped
    with a notice."""
    from rlhf.text_metrics import BUILTIN, builtin_metric

    aliases = aliases or [[] for _ in references]
    scores, notices = {}, []
    for name in names:
        if name in BUILTIN:
            answers = [[ref, *alt] for ref, alt in zip(references, aliases)]
            scores[f"{name}/{name}"] = builtin_metric(name, predictions, answers)
            continue
        metric = _load_metric(name)
        if isinstance(metric, str):
            notices.append(f"metric '{name}' skipped: could not be loaded ({metric})")
            continue
        result = metric.compute(predictions=predictions, references=references)
        scores.update({f"{name}/{k}": float(v) for k, v in result.items() if isinstance(v, (int, float))})
    return scores, notices


_METRICS: dict = {}


def _load_metric(name: str):
    """An `evaluate` metric, or the reason it could not be loaded; tried once per process (a failed load
    goes to the network and back, seconds each)."""
    if name not in _METRICS:
        try:
            import evaluate

            _METRICS[name] = evaluate.load(name)
        except Exception as e:  # `evaluate` not installed, offline, unknown name, missing extra package
            _METRICS[name] = f"{type(e).__name__}: {str(e)[:120]}"
    return _METRICS[name]


def load_checkpoint_model(name: str, device):
    from rlhf.models import load_model, load_tokenizer

    model = load_model(name)
    if hasattr(model, "peft_config"):
        model = model.merge_and_unload()
    return model.eval().to(device), load_tokenizer(name)


def same_vocabulary(tok_a, tok_b) -> bool:
    return tok_a.get_vocab() == tok_b.get_vocab() and tok_a.eos_token_id == tok_b.eos_token_id


# ------------------------------------------------------------------------------------------ run


@releases_run_lock
def run(cfg: EvaluateConfig) -> dict:
    from accelerate.utils import gather_object
    from transformers.utils import logging as hf_logging

    from rlhf.distributed import make_accelerator
    from rlhf.models import load_tokenizer
    from rlhf.runs import RunLogger, prepare_output_dir

    hf_logging.disable_progress_bar()
    accelerator = make_accelerator(bf16=False, report_to=cfg.report_to, project_dir=cfg.output_dir)
    world, rank, device = accelerator.num_processes, accelerator.process_index, accelerator.device
    main = accelerator.is_main_process
    out = prepare_output_dir(cfg, accelerator)
    logger = RunLogger(accelerator, cfg, "rlhf-evaluate")
    started = time.time()
    names = cfg.display_names()
    baseline = cfg.checkpoints.index(cfg.baseline) if cfg.baseline else 0
    reference = cfg.reference or cfg.checkpoints[baseline]
    notices: list[str] = []

    # Prompts: sharded contiguously over processes (gathered back in order below).
    first_tok = load_tokenizer(cfg.checkpoints[0])
    prompts = load_prompts(cfg.prompts, cfg.prompts_split, first_tok, max_prompts=cfg.max_prompts)
    per_rank = math.ceil(len(prompts) / world)
    mine = prompts[rank * per_rank:(rank + 1) * per_rank]

    # 1. Generate with every checkpoint, one model in memory at a time.
    gens: list[Generations] = []
    tokenizers = []
    timing = {}
    for name, ckpt in zip(names, cfg.checkpoints):
        t0 = time.time()
        model, tok = load_checkpoint_model(ckpt, device)
        gens.append(generate_all(model, tok, mine, cfg, device, rank, f"generate [{name}]", not main))
        tokenizers.append(tok)
        timing[name] = time.time() - t0
        del model
        gc.collect()

    # 3. KL to the reference on the sampled completions (same vocabulary required).
    kl_logp_ref: list[list[float] | None] = [None] * len(gens)
    if cfg.num_samples:
        ref_model, ref_tok = load_checkpoint_model(reference, device)
        for i, ckpt in enumerate(cfg.checkpoints):
            if not same_vocabulary(tokenizers[i], ref_tok):
                notices.append(f"KL skipped for '{names[i]}': its tokenizer differs from the reference's")
            elif ckpt == reference:
                kl_logp_ref[i] = list(gens[i].sampled_logp)
            else:
                kl_logp_ref[i] = reference_logp(ref_model, gens[i], device)
        del ref_model
        gc.collect()

    # 2. Scores: reward model and gold judge, per completion.
    records_g = mine
    records_s = [p for p in mine for _ in range(cfg.num_samples)]
    scorers = {}
    if cfg.reward_model:
        from rlhf.reward import RewardModel

        rm = RewardModel.load(cfg.reward_model).to(device)
        scorers["reward"] = lambda recs, texts: rm.score([r["prompt"] for r in recs], texts,
                                                         normalize=cfg.normalize_rewards)
    else:
        notices.append("no reward model given: reward scores and reward-judged win rates are left out")
    has_task = all("reference" in p["task"] for p in prompts)
    if has_task:
        from rlhf.tasks.rewards import gold_judge

        scorers["gold"] = lambda recs, texts: gold_judge([r["prompt"] for r in recs], texts, recs)
    else:
        notices.append("the prompts carry no task fields: gold-judge scores are left out")

    local = []  # per checkpoint: this process's raw numbers, gathered below
    for i, g in enumerate(gens):
        row = {"greedy": g.greedy, "sampled": g.sampled, "greedy_tokens": g.greedy_tokens,
               "sampled_tokens": g.sampled_tokens, "greedy_eos": g.greedy_eos, "sampled_eos": g.sampled_eos,
               "sampled_logp": g.sampled_logp, "sampled_logp_ref": kl_logp_ref[i]}
        for key, fn in scorers.items():
            row[f"greedy_{key}"] = fn(records_g, g.greedy) if g.greedy else []
            row[f"sampled_{key}"] = fn(records_s, g.sampled) if g.sampled else []
        local.append(row)

    # Gather every process's rows in prompt order.
    gathered = gather_object([local])  # list over processes
    logger_rows = {}
    if main:
        merged = []
        for i in range(len(gens)):
            row = {}
            for key in local[i]:
                parts = [proc[i][key] for proc in gathered]
                row[key] = None if any(p is None for p in parts) else [v for p in parts for v in p]
            merged.append(row)
        report = build_report(cfg, names, merged, prompts, baseline, reference, scorers, notices, timing)
        report["seconds"] = time.time() - started
        write_report(out, report, merged, prompts, cfg)
        if cfg.report_to != "none":
            log_report_tables(accelerator, report, merged, prompts, cfg)
        for name in names:
            logger_rows.update({f"{name}/{k}": v for k, v in flat_summary(report["checkpoints"][name]).items()})
        print_table(report)
        for n in report["notices"]:
            print(f"[evaluate] {n}")
        print(f"[evaluate] report in {out / 'report.md'} and {out / 'report.json'}")
    accelerator.wait_for_everyone()
    return logger.finish({**logger_rows, "evaluate/seconds": time.time() - started,
                          "report": str(out / "report.json")})


# ------------------------------------------------------------------------------------------ report


def build_report(cfg, names, rows, prompts, baseline, reference, scorers, notices, timing) -> dict:
    boot = dict(n_boot=cfg.bootstrap_samples, confidence=cfg.confidence, seed=cfg.seed)
    n = cfg.num_samples
    report = {"checkpoints": {}, "names": names, "paths": dict(zip(names, cfg.checkpoints)),
              "baseline": names[baseline], "reference": reference, "num_prompts": len(prompts),
              "num_samples": n, "greedy": cfg.greedy, "max_new_tokens": cfg.max_new_tokens,
              "temperature": cfg.temperature, "confidence": cfg.confidence, "notices": notices,
              "generation_seconds": timing}
    references = [str(p["task"].get("reference", "")) for p in prompts]
    aliases = [[str(a) for a in p["task"].get("aliases", ())] for p in prompts]
    metric_names = cfg.metrics if all(references) else []
    if cfg.metrics and not metric_names:
        notices.append("the prompts carry no references: reference-based metrics are left out")
    metric_notices_done = False
    for i, name in enumerate(names):
        r, base = rows[i], rows[baseline]
        entry = {}
        for mode in DECODINGS:
            texts = r[mode]
            if not texts:
                continue
            per = 1 if mode == "greedy" else n
            m = {}
            for key in scorers:
                m[key] = mean_and_ci(per_prompt(r[f"{mode}_{key}"], per), **boot)
                if i != baseline:
                    wins = win_outcomes(r[f"{mode}_{key}"], base[f"{mode}_{key}"])
                    m[f"win_rate_{key}"] = mean_and_ci(per_prompt(wins, per), **boot)
            m["length_tokens"] = float(np.mean(r[f"{mode}_tokens"]))
            m["eos_fraction"] = float(np.mean(r[f"{mode}_eos"]))
            m["distinct_1"], m["distinct_2"] = distinct_n(texts, 1), distinct_n(texts, 2)
            m["repetition_rate"] = float(np.mean([repetition_rate(t) for t in texts]))
            if mode == "sampled" and r["sampled_logp_ref"] is not None:
                lr = np.asarray(r["sampled_logp"]) - np.asarray(r["sampled_logp_ref"])  # [P * n]
                m["kl_k1"] = mean_and_ci(per_prompt(lr, per), **boot)
                m["kl_k3"] = mean_and_ci(per_prompt(np.expm1(-lr) + lr, per), **boot)
            if metric_names and mode == "greedy":
                scores, metric_notices = reference_metrics(metric_names, texts, references, aliases)
                m["reference_metrics"] = scores
                if not metric_notices_done:
                    notices.extend(metric_notices)
                    metric_notices_done = True
            entry[mode] = m
        report["checkpoints"][name] = entry
    curves = {name: c for name, c in zip(names, map(training_probe, cfg.checkpoints)) if c}
    if curves:
        report["training_probe"] = curves
    return report


def training_probe(checkpoint: str) -> list[dict]:
    """The held-out probe of the policy run that wrote `checkpoint` (its model/ directory, beside the run's
    log.jsonl; `rlhf policy --probe_every N`): [{step, proxy, gold, kl}] over training, or [] if there is none."""
    log = Path(checkpoint).expanduser() / ".." / "log.jsonl"
    if not Path(checkpoint).expanduser().is_dir() or not log.is_file():
        return []
    rows, _ = read_jsonl(log, on_damaged="drop")
    return [{"step": r["step"], "proxy": r["probe/proxy"], "gold": r["probe/gold"], "kl": r["probe/kl"]}
            for r in rows if isinstance(r, dict) and "probe/gold" in r]


def flat_summary(entry: dict) -> dict:
    out = {}
    for mode, m in entry.items():
        for k, v in m.items():
            if isinstance(v, dict) and "mean" in v:
                out[f"{mode}/{k}"] = v["mean"]
            elif isinstance(v, float):
                out[f"{mode}/{k}"] = v
    return out


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, dict):
        return f"{v['mean']:.3f} [{v['ci_low']:.3f}, {v['ci_high']:.3f}]"
    return f"{v:.3f}"


COLUMNS = [("reward", "reward"), ("gold", "gold judge"), ("win_rate_reward", "win rate (RM)"),
           ("win_rate_gold", "win rate (gold)"), ("kl_k1", "KL k1"), ("kl_k3", "KL k3"),
           ("length_tokens", "length"), ("distinct_2", "distinct-2"), ("repetition_rate", "repetition")]


def table_lines(report: dict) -> list[str]:
    lines = []
    for mode in DECODINGS:
        present = [(k, h) for k, h in COLUMNS
                   if any(k in e.get(mode, {}) for e in report["checkpoints"].values())]
        if not any(mode in e for e in report["checkpoints"].values()):
            continue
        what = "1 greedy completion" if mode == "greedy" else f"{report['num_samples']} sampled completions"
        lines += [f"### {mode} ({what} per prompt, {report['num_prompts']} prompts; "
                  f"win rates against {report['baseline']}; intervals {report['confidence']:.0%} bootstrap)", "",
                  "| checkpoint | " + " | ".join(h for _, h in present) + " |",
                  "|---|" + "---|" * len(present)]
        for name, e in report["checkpoints"].items():
            m = e.get(mode, {})
            lines.append(f"| {name} | " + " | ".join(_fmt(m.get(k)) for k, _ in present) + " |")
        lines.append("")
    return lines


def print_table(report: dict) -> None:
    print("\n".join(table_lines(report)))


def write_report(out: Path, report: dict, rows: list[dict], prompts: list[dict], cfg: EvaluateConfig) -> None:
    atomic_write_json(out / "report.json", report, what="report")
    md = ["# Evaluation report", "", "Checkpoints: " + ", ".join(f"`{n}` = {p}" for n, p in report["paths"].items()),
          f"KL reference: {report['reference']}", ""] + table_lines(report)
    if report["notices"]:
        md += ["Notices:", ""] + [f"- {n}" for n in report["notices"]] + [""]
    if cfg.plots:
        paths = write_plots(out, report, rows)
        md += [f"![{p.stem}]({p.name})" for p in paths]
    atomic_write_text(out / "report.md", "\n".join(md) + "\n", what="report")
    recs = []  # every completion, for reading and re-scoring
    for p_i, p in enumerate(prompts):
        rec = {"prompt_id": p["prompt_id"], "prompt": p["prompt"]}
        for name, r in zip(report["names"], rows):
            rec[name] = {"greedy": r["greedy"][p_i] if r["greedy"] else None,
                         "sampled": r["sampled"][p_i * cfg.num_samples:(p_i + 1) * cfg.num_samples]}
        recs.append(rec)
    atomic_write_jsonl(out / "completions.jsonl", recs, what="completions")


def log_report_tables(accelerator, report: dict, rows: list[dict], prompts: list[dict], cfg) -> None:
    """The report (one row per checkpoint, its flat summary) and every completion (one row per prompt and
    checkpoint) as tables in the tracker (rlhf/trackers.py)."""
    from rlhf.trackers import log_table

    summaries = {name: flat_summary(report["checkpoints"][name]) for name in report["names"]}
    keys = list(dict.fromkeys(k for s in summaries.values() for k in s))
    log_table(accelerator, "evaluate/report", ["checkpoint", *keys],
              [[name, *(s.get(k) for k in keys)] for name, s in summaries.items()], step=0)
    table = []
    for p_i, p in enumerate(prompts):
        text = p["prompt"][-1]["content"] if isinstance(p["prompt"], list) else p["prompt"]
        for name, r in zip(report["names"], rows):
            sampled = r["sampled"][p_i * cfg.num_samples:(p_i + 1) * cfg.num_samples]
            table.append([p["prompt_id"], text, name, r["greedy"][p_i] if r["greedy"] else None,
                          sampled[0] if sampled else None])
    log_table(accelerator, "evaluate/completions", ["prompt_id", "prompt", "checkpoint", "greedy", "sample_0"],
              table, step=0)


def write_plots(out: Path, report: dict, rows: list[dict]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    names = report["names"]
    score_key = "reward" if any("reward" in e.get("sampled", {}) for e in report["checkpoints"].values()) else "gold"
    pts = [(n, e["sampled"]["kl_k1"]["mean"], e["sampled"][score_key]["mean"])
           for n, e in report["checkpoints"].items() if "kl_k1" in e.get("sampled", {}) and score_key in e["sampled"]]
    if pts:
        fig, ax = plt.subplots(figsize=(5, 4))
        for n, kl, s in pts:
            ax.scatter([kl], [s])
            ax.annotate(n, (kl, s), textcoords="offset points", xytext=(4, 4))
        ax.set_xlabel("KL to reference (k1, nats per sequence)")
        ax.set_ylabel(f"{score_key} score (sampled)")
        ax.set_title("score against KL")
        fig.tight_layout()
        paths.append(out / "reward_vs_kl.png")
        with atomic_file(paths[-1], what="plot") as tmp:
            fig.savefig(tmp, dpi=100)
        plt.close(fig)
    if report.get("training_probe"):  # proxy and gold against KL over training (Gao et al., 2022)
        fig, axes = plt.subplots(1, 2, figsize=(9, 4), sharex=True)
        for n, curve in report["training_probe"].items():
            kl = [c["kl"] for c in curve]
            axes[0].plot(kl, [c["proxy"] for c in curve], marker="o", label=n)
            axes[1].plot(kl, [c["gold"] for c in curve], marker="o", label=n)
        for ax, what in zip(axes, ("proxy (the optimised reward)", "gold judge")):
            ax.set_xlabel("KL to reference (k1, nats per sequence)")
            ax.set_ylabel(f"{what}, held-out prompts")
            ax.legend()
        fig.suptitle("over training: proxy and gold against KL")
        fig.tight_layout()
        paths.append(out / "proxy_gold_vs_kl.png")
        with atomic_file(paths[-1], what="plot") as tmp:
            fig.savefig(tmp, dpi=100)
        plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 4))
    for n, r in zip(names, rows):
        lengths = r["sampled_tokens"] or r["greedy_tokens"]
        ax.hist(lengths, bins=20, alpha=0.5, label=n)
    ax.set_xlabel("completion length (tokens)")
    ax.set_ylabel("completions")
    ax.legend()
    fig.tight_layout()
    paths.append(out / "lengths.png")
    with atomic_file(paths[-1], what="plot") as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return paths


def main(argv: list[str] | None = None) -> dict:
    from rlhf.config import parse_args

    return run(parse_args(EvaluateConfig, argv, prog="rlhf evaluate"))
