"""Stage 2b: label sampled candidates into preference pairs.

    rlhf label --config configs/tiny/label.yaml                                   # simulated annotator
    rlhf label --candidates runs/quickstart/collect/candidates.jsonl --labeler terminal --output_dir runs/mine
    rlhf label --candidates ... --labeler browser --port 8765     # then open http://127.0.0.1:8765
    python scripts/label.py --config configs/label.yaml

Every labeler writes the same append-only `<output_dir>/decisions.jsonl` (each decision flushed to disk as it
is made; running the command again resumes where it stopped), and the stage then exports the live decisions
to `<output_dir>/pairs.jsonl` in TRL's conversational preference format with provenance:

    {"prompt": [...], "chosen": [{"role": "assistant", ...}], "rejected": [...], "prompt_id": ...,
     "labeler": "simulated", "decision_seq": 12, "gold_chosen": 1.0, "gold_rejected": -0.1, ...}

A simulated annotator ranks all k candidates of a prompt; a ranking becomes pairs by `pair_rule`
(all pairs, best vs rest, best vs worst). People compare two candidates at a time. Ties are kept
(`"tie": true`) or dropped by `keep_ties`. Pairs whose two completions are the same text (up to whitespace) are left out
and counted in the printed summary.

Each decision is bound to the texts it judged (content hashes of the prompt and of the candidates; see
`rlhf.labeling.store`). Running again after the candidates changed (collect re-sampled, a file was edited,
`k` changed) applies old decisions only where their texts are unchanged: a simulated or reward-model labeler
relabels the rest at once, a person is shown only the new comparisons. A simulated or reward-model ranking is
also bound to its judge (the annotator's temperature, flip rate and seed; the reward model's content), so
changing those relabels. The stage prints how many decisions it reused, dropped as stale and made anew.

A person who quits before every comparison is decided leaves the stage incomplete: pairs.jsonl holds the
pairs decided so far, metrics.json says `"label/complete": false`, and `rlhf run` stops after this stage
(run the same command to continue labelling).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from rlhf.config import ConfigError, RunConfig, option
from rlhf.labeling.store import (Candidates, DecisionStore, LabelSession, applies, comparison_at, comparisons,
                                 read_candidates, same_text)
from rlhf.fsio import releases_run_lock


@dataclass
class LabelConfig(RunConfig):
    """Label candidates into preference pairs (stage 2b)."""

    output_dir: str = option("runs/label", help="Where decisions.jsonl, pairs.jsonl, config.yaml, log.jsonl "
                             "and metrics.json go.")
    resume: bool = option(True, help="Continue the labelling in output_dir (decisions are never lost; false "
                          "refuses to touch an existing run).")
    candidates: str = option("runs/collect/candidates.jsonl", help="candidates.jsonl written by rlhf collect.")
    labeler: str = option("simulated", help="Who labels.", choices=("simulated", "terminal", "browser",
                                                                     "reward_model"))
    pair_rule: str = option("all", help="How a ranking of k becomes pairs.",
                            choices=("all", "best_vs_rest", "best_vs_worst"))
    human_pairs: str = option("all", help="Which pairs of the k candidates a person compares: every pair, "
                              "or disjoint ones (1-2, 3-4, ...).", choices=("all", "disjoint"))
    keep_ties: bool = option(False, help="Keep ties as pairs marked tie: true (else they are dropped).")
    sim_temperature: float = option(0.1, help="Simulated annotator: Bradley-Terry temperature on gold-score "
                                    "differences (0: always the higher score).")
    sim_flip_rate: float = option(0.0, help="Simulated annotator: probability of reversing a ranking.")
    host: str = option("127.0.0.1", help="Browser labeler: address to bind (127.0.0.1 keeps it local; use an "
                       "ssh tunnel from a laptop).")
    port: int = option(8765, help="Browser labeler: port.")
    reward_model: str = option("", help="Reward-model labeler: the reward model directory (from rlhf reward).")

    # Decisions are bound to their texts and judge, so a labelling effort may go on with other settings.
    RESUMABLE_CHANGES = RunConfig.RESUMABLE_CHANGES + (
        "labeler", "host", "port", "sim_temperature", "sim_flip_rate", "keep_ties", "pair_rule", "reward_model",
        "human_pairs")

    def validate(self) -> None:
        super().validate()
        if self.sim_temperature < 0:
            raise ConfigError(f"sim_temperature must be >= 0, got {self.sim_temperature}")
        if not 0 <= self.sim_flip_rate <= 1:
            raise ConfigError(f"sim_flip_rate must be in [0, 1], got {self.sim_flip_rate}")
        if not 0 < self.port < 65536:
            raise ConfigError(f"port must be in 1..65535, got {self.port}")
        if self.labeler == "reward_model" and not self.reward_model:
            raise ConfigError("labeler 'reward_model' needs reward_model: the directory written by rlhf reward "
                              "(<output_dir>/model)")


# ------------------------------------------------------------------------------------------ labelers


def judge_of(cfg: LabelConfig) -> dict | None:
    """Who ranks, for a machine labeler: a ranking applies only where the same judge made it (None: a person,
    whose pairwise decisions apply whatever the settings)."""
    if cfg.labeler == "simulated":
        return {"labeler": "simulated", "temperature": cfg.sim_temperature, "flip_rate": cfg.sim_flip_rate,
                "seed": cfg.seed}
    if cfg.labeler == "reward_model":
        from rlhf.fingerprint import path_digest

        return {"labeler": "reward_model", "model_sha256": path_digest(cfg.reward_model)}
    return None


def label_simulated(cands: list[Candidates], store: DecisionStore, cfg: LabelConfig,
                    judge: dict | None = None) -> None:
    """Rank every undecided prompt's candidates; the RNG of prompt i depends only on (seed, i)."""
    from tqdm.auto import tqdm

    from rlhf.labeling.simulated import SimulatedAnnotator, gold_scores

    judge = judge or judge_of(cfg)
    annotator = SimulatedAnnotator(cfg.sim_temperature, cfg.sim_flip_rate)
    position = {c.prompt_id: i for i, c in enumerate(cands)}
    todo = store.pending(cands, judge)
    golds = [gold_scores(c) for c in todo]  # every prompt checked before the first decision is made
    for c, gold in tqdm(zip(todo, golds), total=len(todo), desc="label (simulated)"):
        order = annotator.rank(gold, np.random.default_rng([cfg.seed, position[c.prompt_id]]))
        store.rank(c, order, "simulated", gold=gold, judge=judge,
                   annotator={"temperature": cfg.sim_temperature, "flip_rate": cfg.sim_flip_rate})


def label_with_reward_model(cands: list[Candidates], store: DecisionStore, cfg: LabelConfig,
                            judge: dict | None = None) -> None:
    """Rank every undecided prompt's candidates by the reward model's score (highest first; ties keep the
    candidates' order). The scores are stored beside the ranking."""
    from tqdm.auto import tqdm

    from rlhf.reward import RewardModel

    judge = judge or judge_of(cfg)
    todo = store.pending(cands, judge)
    if not todo:
        return
    model = RewardModel.load(cfg.reward_model)
    for c in tqdm(todo, desc="label (reward model)"):
        rewards = model.score([c.prompt] * len(c.texts), c.texts)
        order = sorted(range(len(rewards)), key=lambda i: -rewards[i])
        store.rank(c, order, "reward_model", rewards=rewards, reward_model=cfg.reward_model, judge=judge)


# ------------------------------------------------------------------------------------------ pairs


def ranking_pairs(order: list[int], rule: str) -> list[tuple[int, int]]:
    """(chosen, rejected) index pairs from a ranking, best first."""
    if rule == "all":
        return [(order[i], order[j]) for i in range(len(order)) for j in range(i + 1, len(order))]
    if rule == "best_vs_rest":
        return [(order[0], r) for r in order[1:]]
    if rule == "best_vs_worst":
        return [(order[0], order[-1])]
    raise ValueError(f"unknown pair rule {rule!r}")


def bound_decisions(cands: list[Candidates], store: DecisionStore, judge: dict | None = None):
    """(decisions that apply to the present texts, stale ones) among the live decisions, in order.

    A pairwise decision is returned with `a`, `b` and `choice` as they read on the present candidates (a
    comparison whose two texts swapped places keeps its preference for the same text)."""
    by_id = {c.prompt_id: c for c in cands}
    current, stale = [], []
    for event in sorted(store.effective().values(), key=lambda e: e["seq"]):
        c = by_id.get(event["prompt_id"])
        if c is None:
            stale.append(event)  # a decision about a prompt that is not in this candidates file
            continue
        if event["event"] == "rank":
            # a ranking by a machine judge applies only to the present judge's work; a person's rankings (none
            # are made today) would apply whatever the judge
            own = judge if event.get("labeler") in ("simulated", "reward_model") else None
            (current if applies(event, c, own) else stale).append(event)
            continue
        item = comparison_at(c, event["a"], event["b"])
        if item is None or not applies(event, item):
            stale.append(event)
            continue
        if event["text_hashes"][0] != item.text_hashes[0]:  # the two texts swapped places
            flip = {"first": "second", "second": "first"}
            event = {**event, "choice": flip.get(event["choice"], event["choice"])}
        current.append(event)
    return current, stale


def export_pairs(cands: list[Candidates], store: DecisionStore, cfg: LabelConfig, judge: dict | None = None):
    """The live decisions that apply to the present texts as PreferencePairs, and counts of what was kept and
    left out (and why)."""
    from rlhf.preferences import PreferencePair

    by_id = {c.prompt_id: c for c in cands}
    pairs, counts = [], {"decisions": 0, "pairs": 0, "ties_dropped": 0, "skipped": 0, "identical_completions": 0,
                     "empty_completions": 0}
    current, _ = bound_decisions(cands, store, judge if judge is not None else judge_of(cfg))
    for event in current:
        c = by_id[event["prompt_id"]]
        counts["decisions"] += 1
        tie = False
        if event["event"] == "rank":
            chosen_rejected = ranking_pairs(event["order"], cfg.pair_rule)
        elif event["choice"] == "skip":
            counts["skipped"] += 1
            continue
        elif event["choice"] == "tie":
            if not cfg.keep_ties:
                counts["ties_dropped"] += 1
                continue
            chosen_rejected, tie = [(event["a"], event["b"])], True
        else:
            a, b = event["a"], event["b"]
            chosen_rejected = [(a, b)] if event["choice"] == "first" else [(b, a)]
        for i, j in chosen_rejected:
            if same_text(c.texts[i], c.texts[j]):
                counts["identical_completions"] += 1
                continue
            if not c.texts[i].strip() or not c.texts[j].strip():
                # The decision stays in decisions.jsonl; the pair is left out of pairs.jsonl because the
                # preference readers (ours and TRL's) refuse an empty completion.
                counts["empty_completions"] += 1
                continue
            meta = {"prompt_id": c.prompt_id, "labeler": event["labeler"], "decision_seq": event["seq"],
                    "chosen_index": i, "rejected_index": j, "prompt_hash": event["prompt_hash"],
                    "model_hash": (c.record.get("provenance") or {}).get("model_hash", "")}
            if "gold" in event:
                meta.update(gold_chosen=event["gold"][i], gold_rejected=event["gold"][j])
            if "rewards" in event:
                meta.update(reward_chosen=event["rewards"][i], reward_rejected=event["rewards"][j])
            pairs.append(PreferencePair(prompt=c.prompt, chosen=[{"role": "assistant", "content": c.texts[i]}],
                                        rejected=[{"role": "assistant", "content": c.texts[j]}], tie=tie,
                                        meta=meta))
    counts["pairs"] = len(pairs)
    return pairs, counts


def gold_agreement(pairs) -> tuple[float, int]:
    """Fraction of non-tie pairs with distinct gold scores where the chosen one has the higher gold score."""
    graded = [p for p in pairs if not p.tie and "gold_chosen" in p.meta
              and p.meta["gold_chosen"] != p.meta["gold_rejected"]]
    if not graded:
        return float("nan"), 0
    agree = sum(p.meta["gold_chosen"] > p.meta["gold_rejected"] for p in graded)
    return agree / len(graded), len(graded)


# --------------------------------------------------------------------------------------------- run


@releases_run_lock
def run(cfg: LabelConfig) -> dict:
    from rlhf.distributed import make_accelerator
    from rlhf.preferences import write_pairs
    from rlhf.runs import RunLogger, prepare_output_dir

    accelerator = make_accelerator(bf16=False, report_to=cfg.report_to, project_dir=cfg.output_dir)
    if accelerator.num_processes > 1:
        raise ConfigError("rlhf label runs on one process (labelling is sequential); launch it without "
                          "accelerate or torchrun")
    out = prepare_output_dir(cfg, accelerator)
    cands = read_candidates(cfg.candidates)
    store = DecisionStore(out / "decisions.jsonl")
    # log.jsonl is stepped by the number of decision events, so earlier sessions' lines are kept
    # (a row at the current count is the summary of a session that ended here; this one's replaces it)
    logger = RunLogger(accelerator, cfg, "rlhf-label", resume_step=len(store.events) - 1 if cfg.resume else None)
    started = time.time()

    judge = judge_of(cfg)
    reused, stale = bound_decisions(cands, store, judge)
    decisions_before = sum(e["event"] in ("label", "rank") for e in store.events)

    # 1. Label (every decision is on disk the moment it is made).
    outcome, remaining = "done", 0
    if cfg.labeler == "simulated":
        label_simulated(cands, store, cfg, judge)
    elif cfg.labeler == "reward_model":
        label_with_reward_model(cands, store, cfg, judge)
    else:
        items = comparisons(cands, cfg.human_pairs, skip_identical=True)
        identical = len(comparisons(cands, cfg.human_pairs)) - len(items)
        if identical:
            print(f"[label] {identical} comparisons of two identical completions are not shown")
        session = LabelSession(items, store, cfg.labeler)
        if cfg.labeler == "terminal":
            from rlhf.labeling.terminal import run_terminal

            outcome = run_terminal(session)
        else:
            from rlhf.labeling.browser import serve

            serve(session, host=cfg.host, port=cfg.port)
            outcome = "done" if session.current() is None else "quit"
        remaining = len(store.pending(items))
    made = sum(e["event"] in ("label", "rank") for e in store.events) - decisions_before
    print(f"[label] decisions: {len(reused)} reused, {len(stale)} dropped as stale (their prompt, texts or judge "
          f"changed), {made} made anew")

    # 2. Export the live decisions as preference pairs.
    pairs, counts = export_pairs(cands, store, cfg, judge)
    write_pairs(out / "pairs.jsonl", pairs, "conversational")
    agreement, graded = gold_agreement(pairs)
    metrics = {f"label/{k}": v for k, v in counts.items()}
    metrics.update({"label/prompts": len(cands), "label/outcome": outcome, "label/complete": outcome == "done",
                    "label/remaining": remaining, "label/reused": len(reused), "label/stale": len(stale),
                    "label/made": made, "label/seconds": time.time() - started,
                    "label/gold_agreement": agreement, "label/gold_graded_pairs": graded,
                    "pairs": str(out / "pairs.jsonl")})
    logger.log(metrics, step=len(store.events))
    metrics = logger.finish(metrics)
    print(f"[label] {counts['decisions']} decisions -> {counts['pairs']} pairs in {out / 'pairs.jsonl'}; left out: "
          f"{counts['skipped']} skipped, {counts['ties_dropped']} ties (keep_ties false), "
          f"{counts['identical_completions']} with identical completions, "
          f"{counts['empty_completions']} with an empty completion"
          + (f"; agreement with the gold judge {100 * agreement:.1f}% over {graded} pairs" if graded else ""))
    if outcome != "done":
        print(f"[label] incomplete: {remaining} comparisons are still undecided; run the same command to continue "
              "(pairs.jsonl holds only what is decided so far)")
    return metrics


def main(argv: list[str] | None = None) -> dict:
    from rlhf.config import parse_args

    return run(parse_args(LabelConfig, argv, prog="rlhf label"))
