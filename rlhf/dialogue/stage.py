"""The `rlhf dialogue` commands (rlhf/dialogue/cli.py): multi-step offline RL on text environments.

    rlhf dialogue data     --config configs/dialogue/data.yaml       # scripted trajectories (jsonl)
    rlhf dialogue train    --config configs/dialogue/train.yaml --algorithm ilql
    rlhf dialogue evaluate --config configs/dialogue/evaluate.yaml --run runs/dialogue/guess/ilql

Each command writes the output contract of `rlhf.runs` (config.yaml, log.jsonl, metrics.json) to its output_dir
beside its product (trajectories.jsonl and summary.json; lm/ and heads/; eval.json), and sends its config and
numbers to the trackers of `--report_to`. `--resume true` redoes `data` and `evaluate`, which are deterministic
in their config; `train` writes no checkpoint, so it refuses `resume` when the config is read.

Algorithms: bc, filtered_bc (top fraction by return), mc (utterance-level Q on Monte-Carlo returns), ilql
(per-token Q/V heads, Q bootstrapped through V(s'), expectile V on a Polyak target's Q; acts on log pi_bc +
beta (Q - V)), mc_iql (ILQL's heads and acting with Q regressed onto Monte-Carlo returns-to-go, no bootstrap)
and chai (utterance-level Q over candidates from the BC LM, conservative term, arg-max over k candidates). The
value-based ones put heads on the frozen behaviour-cloned LM: a run trains that LM first unless `lm` names an
earlier bc run.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from rlhf.config import ConfigError, RunConfig, option, require_at_least
from rlhf.dialogue.envs import ENVS
from rlhf.fsio import atomic_write_json, publish_dir, releases_run_lock

ALGORITHMS = ("bc", "filtered_bc", "mc", "ilql", "mc_iql", "chai")
TOKEN_HEADS = ("ilql", "mc_iql")  # per-token Q/V heads, acting on log pi_bc + beta (Q - V)
VALUE_BASED = ("mc", "ilql", "mc_iql", "chai")


@dataclass
class DialogueDataConfig(RunConfig):
    """Generate offline dialogue data from scripted behaviour policies."""

    output_dir: str = option("runs/dialogue/data", help="Where trajectories.jsonl, summary.json and the run "
                             "files go.")
    env: str = option("guess", help="Environment: the guessing game, the fully or the partially observed maze.",
                      choices=ENVS)
    episodes_per_policy: int = option(400, help="Episodes from each behaviour policy.")
    policies: list[str] = option(["random", "greedy", "optimal"], help="Behaviour policies (random, greedy "
                                 "(greedy-informative), optimal (near-optimal, with exploration noise)).")

    def validate(self) -> None:
        super().validate()
        require_at_least(self, 1, "episodes_per_policy")
        bad = [p for p in self.policies if p not in ("random", "greedy", "optimal")]
        if bad or not self.policies:
            raise ConfigError(f"key 'policies': {bad or 'empty'} not among random, greedy, optimal")


@dataclass
class DialogueTrainConfig(RunConfig):
    """Train a dialogue agent offline on logged trajectories."""

    NOT_RESUMABLE = "rlhf dialogue train writes no checkpoint to resume from"

    output_dir: str = option("runs/dialogue/agent", help="Where lm/, heads/, log.jsonl and metrics.json go.")
    data: str = option("runs/dialogue/data/trajectories.jsonl", help="Trajectories from `rlhf dialogue data`.")
    algorithm: str = option("ilql", help="Learner.", choices=ALGORITHMS)
    lm: str = option("", help="For mc / ilql / mc_iql / chai: a bc run directory whose lm/ is the frozen behaviour "
                     "policy; empty: train it in this run.")
    hidden: int = option(128, help="LM width (a Llama built from a config, byte-level tokenizer).")
    layers: int = option(2, help="LM layers.")
    bc_steps: int = option(800, help="Optimiser steps of (filtered) behaviour cloning.")
    bc_batch_size: int = option(32, help="Trajectories per BC step.")
    bc_lr: float = option(3e-3, help="BC learning rate (AdamW).")
    bc_env_tokens: bool = option(True, help="BC also predicts the environment's replies (the policy is the "
                                 "LM over the agent's tokens either way; the value heads read the hidden states).")
    filter_fraction: float = option(0.2, help="filtered_bc: the top fraction of trajectories by return.")
    value_steps: int = option(1500, help="Optimiser steps of the value heads.")
    value_batch_size: int = option(128, help="Agent tokens (ilql, mc_iql) or utterance transitions (mc, chai) "
                                   "per step.")
    value_trunk_layers: int = option(0, help="ilql, mc_iql: 0 = heads on the frozen LM's hidden states; n > 0 = "
                                     "heads on a copy of the LM's trunk whose top n layers train with them.")
    value_trunk_batch_size: int = option(16, help="ilql, mc_iql with value_trunk_layers > 0: trajectories per "
                                         "step (every agent token of them a transition).")
    value_bootstrap: str = option("token", help="ilql: each token's Q target bootstraps from the next token's "
                                  "state (token) or from the state after the reply to its utterance (utterance).",
                                  choices=("token", "utterance"))
    value_lambda: float = option(0.0, help="ilql with value_bootstrap utterance: lambda of the utterance-level "
                                 "lambda-returns, in [0, 1) (0: one-step targets r + gamma V(s')). Lambda 1, "
                                 "Monte-Carlo returns with no bootstrap, is algorithm mc_iql.")
    value_lr: float = option(1e-3, help="Value-head learning rate (AdamW).")
    head_width: int = option(256, help="Width of the two-layer value heads.")
    gamma: float = option(0.99, help="Discount per utterance (1 inside an utterance for ilql).")
    expectile: float = option(0.7, help="ilql, mc_iql: expectile tau of the V loss.")
    cql_weight: float = option(0.1, help="ilql, mc_iql, chai: weight of the conservative (CQL) term.")
    polyak: float = option(0.005, help="ilql, mc_iql, chai: target-network soft-update rate.")
    num_candidates: int = option(4, help="chai: utterances sampled from the LM per state for the target max "
                                 "and the conservative term.")
    threads: int = option(1, help="torch CPU threads (0: torch's default). The tiny models run fastest on one; "
                          "more threads on busy cores can be many times slower.")

    def validate(self) -> None:
        super().validate()
        require_at_least(self, 1, "hidden", "layers", "bc_steps", "bc_batch_size", "value_steps",
                         "value_batch_size", "head_width", "num_candidates")
        require_at_least(self, 0, "threads", "value_trunk_layers")
        require_at_least(self, 1, "value_trunk_batch_size")
        if not 0 <= self.value_lambda <= 1 or (self.value_lambda and self.value_bootstrap == "token"):
            raise ConfigError("value_lambda must be in [0, 1] and needs value_bootstrap 'utterance' when > 0")
        if self.algorithm == "ilql" and self.value_lambda == 1:
            raise ConfigError("value_lambda 1 regresses Q onto Monte-Carlo returns with no bootstrap through "
                              "V(s'): that method is algorithm 'mc_iql' (ilql takes value_lambda < 1)")
        if self.value_trunk_layers > self.layers:
            raise ConfigError(f"value_trunk_layers ({self.value_trunk_layers}) is more than the LM's layers "
                              f"({self.layers})")
        if not 0 < self.filter_fraction <= 1:
            raise ConfigError("filter_fraction must be in (0, 1]")
        if not (0 <= self.gamma <= 1 and 0 < self.expectile < 1 and 0 < self.polyak <= 1 and self.cql_weight >= 0):
            raise ConfigError("need 0 <= gamma <= 1, 0 < expectile < 1, 0 < polyak <= 1, cql_weight >= 0")


@dataclass
class DialogueEvalConfig(RunConfig):
    """Evaluate a trained dialogue agent in its environment."""

    output_dir: str = option("runs/dialogue/eval", help="Where eval.json and the run files go.")
    run: str = option("runs/dialogue/agent", help="A `rlhf dialogue train` run directory.")
    env: str = option("", help="Environment (empty: the one of the run's data).", choices=("",) + ENVS)
    episodes: int = option(200, help="Evaluation episodes (fresh seeds, disjoint from the data's).")
    beta: float = option(16.0, help="ilql, mc_iql: weight of Q - V on the BC log-probabilities when acting.")
    top_p: float = option(1.0, help="bc, ilql, mc_iql: sample only within the BC policy's top-p nucleus (1: all "
                                    "tokens; the results use 0.8 for ilql and mc_iql and report bc both ways).")
    adv_clip: float = option(0.0, help="ilql, mc_iql: clamp Q - V to +-adv_clip before scaling by beta (0: no "
                                       "clamp).")
    k: int = option(8, help="mc, chai: candidate utterances sampled from the LM per turn.")
    temperature: float = option(1.0, help="Sampling temperature of the LM (0: arg-max tokens).")
    threads: int = option(1, help="torch CPU threads (0: torch's default).")

    def validate(self) -> None:
        super().validate()
        require_at_least(self, 1, "episodes", "k")
        require_at_least(self, 0, "threads")
        if self.beta < 0 or self.temperature < 0 or self.adv_clip < 0:
            raise ConfigError("beta, temperature and adv_clip must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")


# ------------------------------------------------------------------------------------------ commands


def _start(cfg, project: str):
    """The output contract of `rlhf.runs`: output_dir checked and locked, config.yaml written, a RunLogger."""
    from rlhf.distributed import make_accelerator
    from rlhf.runs import RunLogger, prepare_output_dir

    accelerator = make_accelerator(bf16=False, report_to=cfg.report_to, project_dir=cfg.output_dir)
    out = prepare_output_dir(cfg, accelerator)
    return out, RunLogger(accelerator, cfg, project)


def _scalars(prefix: str, result: dict) -> dict:
    """The numbers of a result, flat: {"success": {"mean": m, "ci95": c}} -> {"<prefix>/success": m,
    "<prefix>/success_ci95": c}; strings and lists are left out."""
    flat = {}
    for key, value in result.items():
        if isinstance(value, dict) and "mean" in value:
            flat[f"{prefix}/{key}"] = value["mean"]
            if "ci95" in value:
                flat[f"{prefix}/{key}_ci95"] = value["ci95"]
        elif isinstance(value, dict):
            flat.update(_scalars(f"{prefix}/{key}", value))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[f"{prefix}/{key}"] = value
    return flat


@releases_run_lock
def make_data(cfg: DialogueDataConfig) -> dict:
    from rlhf.dialogue.data import generate, save_jsonl

    out, logger = _start(cfg, "rlhf-dialogue-data")
    records = generate(cfg.env, cfg.episodes_per_policy, cfg.seed, cfg.policies)
    save_jsonl(records, out / "trajectories.jsonl")
    summary = {"env": cfg.env, "episodes": len(records)}
    for p in cfg.policies:
        rs = [r for r in records if r["policy"] == p]
        summary[p] = {"success": sum(r["success"] for r in rs) / len(rs),
                      "return": sum(r["return"] for r in rs) / len(rs),
                      "turns": sum(len(r["turns"]) for r in rs) / len(rs)}
    atomic_write_json(out / "summary.json", summary, what="summary")
    print(json.dumps(summary))
    logger.log(_scalars("data", summary), step=1)
    logger.finish({"env": cfg.env, **_scalars("data", summary)})
    return summary


def load_lm(directory: str | Path):
    from transformers import AutoModelForCausalLM

    path = Path(directory, "lm")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{directory} holds no behaviour-cloned LM ({path}/config.json); "
                                "train one with `rlhf dialogue train --algorithm bc`")
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


@releases_run_lock
def train(cfg: DialogueTrainConfig) -> dict:
    """Train one learner; returns metrics including the compute it took (wall time, steps, parameters)."""
    from rlhf.dialogue.algorithms import train_bc, train_ilql, train_mc_iql, train_utterance_q
    from rlhf.dialogue.data import load_jsonl, top_fraction
    from rlhf.models import build_tiny_tokenizer

    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    out, logger = _start(cfg, "rlhf-dialogue")
    torch.manual_seed(cfg.seed)
    records = load_jsonl(cfg.data)
    tokenizer = build_tiny_tokenizer()
    metrics: dict = {"algorithm": cfg.algorithm, "env": records[0]["env"], "episodes": len(records)}
    bc_steps = 0  # trackers see the value phase's steps after the BC phase's (log.jsonl counts each from 1)
    start = time.time()
    if cfg.algorithm in ("bc", "filtered_bc") or not cfg.lm:
        data = top_fraction(records, cfg.filter_fraction) if cfg.algorithm == "filtered_bc" else records
        lm, st = train_bc(data, tokenizer, hidden=cfg.hidden, layers=cfg.layers, steps=cfg.bc_steps,
                          batch_size=cfg.bc_batch_size, lr=cfg.bc_lr, seed=cfg.seed, log_every=cfg.log_every,
                          env_tokens=cfg.bc_env_tokens)
        with publish_dir(out / "lm", what="model") as tmp:
            lm.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
        metrics.update({"bc/steps": st.steps, "bc/seconds": st.seconds, "bc/parameters": st.parameters,
                        "bc/episodes": len(data)})
        for row in st.log:
            logger.log({k: v for k, v in row.items() if k != "step"}, step=row["step"])
        bc_steps = st.steps
    else:
        lm = load_lm(cfg.lm)
        metrics["lm"] = cfg.lm
    if cfg.algorithm in VALUE_BASED:
        common = dict(steps=cfg.value_steps, batch_size=cfg.value_batch_size, lr=cfg.value_lr, seed=cfg.seed,
                      gamma=cfg.gamma, width=cfg.head_width, log_every=cfg.log_every)
        if cfg.algorithm in TOKEN_HEADS:
            common.update(tau=cfg.expectile, cql_weight=cfg.cql_weight, polyak=cfg.polyak,
                          trunk_layers=cfg.value_trunk_layers, trunk_batch_size=cfg.value_trunk_batch_size)
        if cfg.algorithm == "ilql":
            heads, st = train_ilql(records, tokenizer, lm, bootstrap=cfg.value_bootstrap, lam=cfg.value_lambda,
                                   **common)
        elif cfg.algorithm == "mc_iql":
            heads, st = train_mc_iql(records, tokenizer, lm, **common)
        else:
            heads, st = train_utterance_q(records, tokenizer, lm, mode=cfg.algorithm, cql_weight=cfg.cql_weight,
                                          polyak=cfg.polyak, num_candidates=cfg.num_candidates, **common)
        heads.save(out / "heads")
        metrics.update({"value/steps": st.steps, "value/seconds": st.seconds, "value/parameters": st.parameters,
                        "value/feature_seconds": st.extra_seconds})
        for row in st.log:
            logger.log({k: v for k, v in row.items() if k != "step"}, step=row["step"],
                       tracker_step=bc_steps + row["step"])
    metrics["seconds"] = time.time() - start
    metrics = logger.finish(metrics)
    print(json.dumps(metrics))
    return metrics


def load_agent(run: str | Path, beta: float = 16.0, k: int = 8, temperature: float = 1.0, top_p: float = 1.0,
               adv_clip: float = 0.0):
    """The agent a train run produced: its LM (or the one it names) and its heads."""
    import yaml

    from rlhf.dialogue.agents import Agent
    from rlhf.dialogue.data import Encoder
    from rlhf.dialogue.models import ValueHeads
    from rlhf.models import build_tiny_tokenizer

    run = Path(run)
    if not (run / "config.yaml").is_file():
        raise FileNotFoundError(f"{run} is not a `rlhf dialogue train` run (no config.yaml)")
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    algorithm = cfg["algorithm"]
    lm = load_lm(run if (run / "lm").exists() else cfg["lm"])
    heads = ValueHeads.load(run / "heads") if algorithm in VALUE_BASED else None
    kind = "bc" if algorithm in ("bc", "filtered_bc") else algorithm
    return Agent(kind, lm, Encoder(build_tiny_tokenizer()), heads, beta=beta, k=k, temperature=temperature,
                 top_p=top_p, adv_clip=adv_clip or None), cfg


@releases_run_lock
def evaluate_run(cfg: DialogueEvalConfig) -> dict:
    from rlhf.dialogue.agents import evaluate, scripted_return
    from rlhf.dialogue.data import load_jsonl
    from rlhf.dialogue.envs import normalised_score

    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    out, logger = _start(cfg, "rlhf-dialogue-eval")
    agent, run_cfg = load_agent(cfg.run, cfg.beta, cfg.k, cfg.temperature, cfg.top_p, cfg.adv_clip)
    env = cfg.env or load_jsonl(run_cfg["data"])[0]["env"]
    torch.manual_seed(cfg.seed)
    t0 = time.time()
    result = evaluate(agent, env, cfg.episodes, cfg.seed)
    result = {"algorithm": run_cfg["algorithm"], "env": env, "seconds": time.time() - t0, **result}
    if env.startswith("maze"):
        r_random = scripted_return(env, "random", 2000, cfg.seed)
        r_opt = scripted_return(env, "optimal", 2000, cfg.seed)
        result["normalised_score"] = normalised_score(result["return"]["mean"], r_random, r_opt)
    result.pop("returns")
    atomic_write_json(out / "eval.json", result, what="eval")
    print(json.dumps({k: v for k, v in result.items() if k != "transcripts"}))
    scores = _scalars("eval", {k: v for k, v in result.items() if k != "transcripts"})
    logger.log(scores, step=1)
    logger.finish({"algorithm": run_cfg["algorithm"], "env": env, **scores})
    return result
