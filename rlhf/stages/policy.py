"""Stage 4: KL-penalised, importance-sampled policy gradient.

    python scripts/policy.py --config configs/policy.yaml
    accelerate launch --multi_gpu --num_processes 2 scripts/policy.py --config configs/tiny/policy.yaml
    rlhf policy --config configs/tiny/policy.yaml --num_updates 10

Objective: E[r(s, a) - beta * KL(pi_theta || pi_ref)], pi_ref the frozen SFT policy. Each update:
    1. sample a batch of completions from pi_theta (k per prompt, KV-cached generation);
    2. score them with the reward model (normalised with the mean/std stored by stage 3) or a reward function;
    3. set pi_bar = pi_theta: record the sampling and reference log-probabilities once for the batch (with
       one optimiser step per batch, the sampling log-probabilities come from that step's own forward);
       sequence return R = score - beta * sum_t k1_t; advantage = R - baseline (leave-one-out over the k
       samples of a prompt, or the batch mean), optionally whitened; with baseline 'group' (GRPO) the
       group-centred return over the group's (or batch's) standard deviation; or, with baseline 'gae', per-token
       rewards (-beta * k1_t on every token, the score on the last) and GAE over a learned value head;
    4. K times: take a minibatch and step along (pi_theta / pi_bar) grad log pi_theta * advantage, with
       PPO-style ratio clipping (clip_range 0 gives the plain importance-sampled estimator).
On N processes each rank samples, scores and runs the forward passes of its share of the batch, and every
rank holds the whole batch (gathered), so baselines, whitening, minibatches, token means and logged figures
are those of the global batch: N processes train as one does with the same global sizes.
With kl_estimator k3 the penalty is a loss term beta * k3 instead of a reward term. The KL that is logged is
the estimator that is penalised. With LoRA the reference is the same model with its adapters disabled.

In the code, `train` runs these steps in order over a typed batch: `sample_completions` (1) and `score` (2)
make a `Rollout`, `record_pi_bar` and `advantages` (3) its `Advantages`, `optimise` (4) the K steps. How they
run (prompts shared by their k rows, the reused forward, micro-batches, the DeepSpeed/FSDP gates) is an
`ExecutionPlan`, decided once; the KL controller's state (beta) is saved in each checkpoint's trainer state.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from rlhf.backends import full_state_dict, gathered_for_generation, micro_batch, shards_optimizer
from rlhf.batching import PROMPT_SEED_STRIDE, global_batch_indices, minibatches, rank_slice, split_evenly
from rlhf.config import ConfigError, RunConfig, option, require_at_least
from rlhf.distributed import gather_padded, gather_rows, global_mean_share, make_accelerator, reduce_token_stats
from rlhf.losses import (
    AdaptiveKLController,
    FixedKLController,
    gae,
    group_normalized_advantages,
    kl_k1,
    kl_k3,
    leave_one_out_baseline,
    masked_mean,
    policy_gradient_loss,
    value_loss,
    whiten,
)
from rlhf.rollout import (PolicyWithValue, Samples, in_pieces, length_mask, load_prompts, response_logprobs_and_values,
                          sample)
from rlhf.sampling import seeded_sampling_kwargs
from rlhf.fsio import publish_dir, releases_run_lock


@dataclass
class PolicyConfig(RunConfig):
    """KL-penalised, importance-sampled policy optimisation (stage 4)."""

    output_dir: str = option("runs/policy", help="Where the aligned model/ and the run files go.")
    model_name_or_path: str = option("runs/quickstart/sft/model", help="Initial policy, also the frozen "
                                     "reference: hub id, local model or adapter directory, or an alias.")
    reward_model: str = option("runs/quickstart/reward/model", help="Reward model directory (rlhf reward).")
    reward_fn: str = option("", help="Instead of a reward model, 'module:function' (several comma-separated: "
                            "their weighted sum), each called as f(prompts, completions, records) or as TRL's "
                            "f(prompts, completions, **columns) -> list of floats (rlhf/reward_functions.py).")
    reward_weights: list[float] = option([], help="Weights of the reward_fn functions, in order (empty: 1 each).")
    normalize_rewards: bool = option(True, help="Use (r - mean) / std with the reward model's stored statistics.")
    reward_aggregate: str = option("mean", help="How an ensemble reward model's members make the reward: their "
                                   "mean, a conservative lcb (mean - reward_lcb_k x their spread) or min (the "
                                   "worst member), against over-optimisation.", choices=("mean", "lcb", "min"))
    reward_lcb_k: float = option(1.0, help="k of reward_aggregate lcb.")
    prompts: str = option("reward_data/prompts_train.jsonl", help="Prompts (.jsonl/.json/.parquet or hub).")
    prompts_split: str = option("train", help="Split for a hub prompt data set.")
    prompts_per_update: int = option(8, help="Prompts per update, over all processes.")
    k: int = option(4, help="Completions per prompt (>= 2 for the leave-one-out baseline).")
    temperature: float = option(1.0, help="Sampling temperature.")
    top_p: float = option(1.0, help="Nucleus sampling mass.")
    max_new_tokens: int = option(32, help="New tokens per completion.")
    missing_eos_penalty: float = option(0.0, help="Subtracted from the score of a completion cut without EOS.")
    num_updates: int = option(30, help="Sample-score-update rounds.")
    ppo_epochs: int = option(1, help="Passes over each batch (K = ppo_epochs x batch / minibatch_size).")
    minibatch_size: int = option(16, help="Completions per optimiser step, over all processes.")
    clip_range: float = option(0.2, help="PPO ratio clipping; 0 gives the plain importance-sampled estimator.")
    beta: float = option(0.05, help="KL penalty coefficient (the initial one when target_kl > 0).")
    kl_estimator: str = option("k1", help="k1: beta * (log pi - log pi_ref) per token in the reward; k3: "
                               "beta * k3 as a loss term.", choices=("k1", "k3"))
    target_kl: float = option(0.0, help="Adapt beta toward this sequence KL (0: fixed beta).")
    kl_horizon: int = option(10000, help="Horizon of the adaptive KL controller, in samples.")
    baseline: str = option("loo", help="Advantage baseline: leave-one-out over the k samples of a prompt (RLOO), "
                           "the batch mean, the group mean with scale_rewards (GRPO), or a learned value head with "
                           "GAE over tokens.", choices=("loo", "mean", "group", "gae"))
    scale_rewards: str = option("group", help="Baseline 'group' (GRPO): divide the group-centred returns by the "
                                "standard deviation over the prompt's k samples ('group'), over the batch "
                                "('batch'), or not at all ('none').", choices=("group", "batch", "none"))
    gamma: float = option(1.0, help="GAE discount over response tokens (baseline gae).")
    lam: float = option(0.95, help="GAE lambda (baseline gae).")
    vf_coef: float = option(0.1, help="Weight of the value-head loss (baseline gae).")
    value_clip: float = option(0.2, help="PPO-style value clipping around the sampling-time values; 0: off.")
    whiten_advantages: bool = option(False, help="Whiten advantages over the batch.")
    reuse_step_forward: bool = option(True, help="With one optimiser step per batch (ppo_epochs 1, one "
                                      "minibatch), take pi_bar's log-probs from that step's own forward pass "
                                      "instead of a separate one (pi_bar = pi_theta there; not under "
                                      "DeepSpeed/FSDP).")
    micro_batch_size: int = option(0, help="Completions per forward/backward pass, per process: a minibatch "
                                   "runs in pieces of this many rows, their gradients accumulated into one "
                                   "optimiser step, and the no-grad log-prob passes run in pieces of as many "
                                   "whole prompt groups. Bounds the activation memory (about proportionally) "
                                   "for the same update up to float rounding; below the rows of a one-step "
                                   "batch it turns reuse_step_forward off (pi_bar then takes a no-grad pass). "
                                   "0: each minibatch in one piece.")
    share_prompts: bool = option(True, help="Run each prompt once for its k completions, its keys and values "
                                 "repeated for the k rows, in generation's prefill and in the log-prob passes "
                                 "over whole prompt groups (not under DeepSpeed/FSDP). Off: each row runs its "
                                 "own copy of the prompt. Same values up to float rounding.")
    use_peft: bool = option(True, help="Train LoRA adapters (the reference is the model with adapters off).")
    lora_r: int = option(16, help="LoRA rank.")
    lora_alpha: int = option(32, help="LoRA alpha.")
    learning_rate: float = option(1e-5, help="AdamW learning rate.")
    bf16: bool = option(False, help="bf16 autocast (mixed precision) for sampling and the log-prob passes; "
                        "weights, optimiser state and the advantages stay fp32.")
    gradient_checkpointing: bool = option(False, help="Recompute the policy's activations in backward to save "
                                          "memory (same gradients; the prompt then runs per row, as with "
                                          "share_prompts off).")
    max_grad_norm: float = option(1.0, help="Clip the gradient norm to this (<= 0: no clipping, as in SFT).")
    probe_every: int = option(0, help="Every this many updates, and before the first, sample a fixed set of "
                              "held-out prompts (probe_prompts) with fixed seeds and log the proxy score (the "
                              "reward being optimised), the gold judge's score (probe_gold_fn) and the KL to the "
                              "reference as probe/proxy, probe/gold, probe/kl: over-optimisation seen as it "
                              "happens (rlhf/probe.py). 0: off.")
    probe_prompts: str = option("reward_data/prompts_test.jsonl", help="Held-out prompts of the probe, with the "
                                "fields the gold judge reads.")
    probe_max_prompts: int = option(32, help="Probe at most this many of them (0: all).")
    probe_samples: int = option(2, help="Completions per probe prompt.")
    probe_gold_fn: str = option("rlhf.tasks.rewards:gold_judge", help="The gold judge, 'module:function' called "
                                "as a reward_fn is (the built-in task's judge by default).")
    sample_every: int = option(5, help="Print a prompt / response / score / KL table every this many updates.")
    save_every: int = option(0, help="Checkpoint every this many updates (0: only at the end).")
    stop_after_update: int = option(0, help="Checkpoint and stop after this update, as if interrupted; "
                                    "continue with --resume true. 0: off.")

    RESUMABLE_CHANGES = RunConfig.RESUMABLE_CHANGES + ("sample_every", "save_every", "stop_after_update")

    def validate(self) -> None:
        super().validate()
        require_at_least(self, 1, "prompts_per_update", "k", "max_new_tokens", "num_updates", "ppo_epochs",
                         "minibatch_size")
        require_at_least(self, 0, "micro_batch_size")
        if self.baseline in ("loo", "group") and self.k < 2:
            raise ConfigError(f"baseline '{self.baseline}' needs k >= 2")
        if self.reward_weights and len(self.reward_weights) != len([f for f in self.reward_fn.split(",") if f.strip()]):
            raise ConfigError(f"reward_weights has {len(self.reward_weights)} values for the "
                              f"{len([f for f in self.reward_fn.split(',') if f.strip()])} functions of reward_fn")
        if (self.prompts_per_update * self.k) % self.minibatch_size:
            raise ConfigError(f"minibatch_size {self.minibatch_size} must divide the batch "
                              f"prompts_per_update x k = {self.prompts_per_update * self.k}")
        if not (math.isfinite(self.reward_lcb_k) and self.reward_lcb_k >= 0):
            raise ConfigError(f"reward_lcb_k must be a finite number >= 0, got {self.reward_lcb_k}")
        if not self.temperature > 0 or not 0 < self.top_p <= 1 or self.beta < 0 or self.clip_range < 0:
            raise ConfigError("need temperature > 0, 0 < top_p <= 1, beta >= 0, clip_range >= 0")
        if not (0 <= self.gamma <= 1 and 0 <= self.lam <= 1 and self.vf_coef >= 0 and self.value_clip >= 0):
            raise ConfigError("need 0 <= gamma, lam <= 1 and vf_coef, value_clip >= 0")
        require_at_least(self, 0, "probe_every", "probe_max_prompts")
        require_at_least(self, 1, "probe_samples")
        if self.probe_every:
            from rlhf.fingerprint import module_file

            module_file(self.probe_gold_fn)
        if self.reward_fn:
            from rlhf.fingerprint import module_file

            for spec in (x.strip() for x in self.reward_fn.split(",") if x.strip()):  # several: comma-separated
                module_file(spec)  # 'module:function' whose module exists (ConfigError otherwise)


# ------------------------------------------------------------------------------------------ pieces


def load_reward(cfg: PolicyConfig, device):
    """A function (prompts, completions, records, completion_ids=None) -> scores [N] tensor."""
    if cfg.reward_fn:
        from rlhf.reward_functions import RewardFunctionError, RewardFunctions

        try:
            return RewardFunctions.from_spec(cfg.reward_fn, cfg.reward_weights)
        except RewardFunctionError as e:
            raise ConfigError(str(e)) from None
    from rlhf.reward import RewardModel

    rm = RewardModel.load(cfg.reward_model).to(device)
    if cfg.reward_aggregate != "mean" and rm.n_members < 2:
        raise ConfigError(f"reward_aggregate {cfg.reward_aggregate!r} needs an ensemble reward model; "
                          f"{cfg.reward_model} has one head (train it with rlhf reward --ensemble_size 5)")
    return lambda prompts, completions, records, completion_ids=None: torch.tensor(
        rm.score(prompts, completions, normalize=cfg.normalize_rewards, aggregate=cfg.reward_aggregate,
                 k=cfg.reward_lcb_k), dtype=torch.float32)


def combine_token_stats(stats: list[dict], counts: list[float], maxima: tuple[str, ...] = ()) -> dict:
    """One step's statistics from those of its pieces: token-weighted means (the keys in `maxima`: the
    largest), as if the step's rows had run in one piece. A piece without tokens counts for nothing."""
    if len(stats) == 1:
        return stats[0]
    total = sum(counts)
    out = {}
    for key in stats[0]:
        if key in maxima:
            out[key] = max(s[key] for s, c in zip(stats, counts) if c) if total else stats[0][key]
        else:
            out[key] = sum(s[key] * c for s, c in zip(stats, counts)) / total if total else stats[0][key]
    return out


# -------------------------------------------------------------------------------- execution plan


@dataclass(frozen=True)
class ExecutionPlan:
    """How the loop runs here, decided once from the config and the back end (`decide`); the steps follow it
    and read none of the switches behind it. None of it changes what is computed, only how (the same values up
    to float rounding).

    DeepSpeed and FSDP keep their sharded forward to the plain order (no-grad passes first, then forward and
    backward at once, one pass per phase): no prompt sharing and no reused forward there. Gradient
    checkpointing runs the prompt per row too."""

    rank: int
    world: int
    rows: int  # rows this rank samples and scores: its prompts_per_update / world prompts x k
    group: int  # rows whose prompt runs once in sampling and in the passes over this rank's rows: k, or 1
    reuse_step_forward: bool  # one optimiser step per batch, whose forward (with gradients) is pi_bar's
    nograd_piece: int  # rows per no-grad log-prob pass, whole prompt groups; 0: this rank's rows at once
    grad_piece: int  # rows per forward/backward of an optimiser step, gradients accumulated; 0: one piece

    @classmethod
    def decide(cls, cfg: PolicyConfig, accelerator) -> ExecutionPlan:
        world, rank = accelerator.num_processes, accelerator.process_index
        local_prompts = split_evenly(cfg.prompts_per_update, world, "prompts_per_update")  # per-rank sizes
        split_evenly(cfg.minibatch_size, world, "minibatch_size")  # each rank takes an equal share of a minibatch
        sharded = shards_optimizer(accelerator)
        rows = local_prompts * cfg.k
        group = cfg.k if cfg.share_prompts and not sharded and not cfg.gradient_checkpointing else 1
        # micro-batches smaller than the rank's rows split the one step, whose forward then cannot be pi_bar's
        reuse = (cfg.reuse_step_forward and cfg.ppo_epochs == 1 and cfg.minibatch_size == cfg.prompts_per_update
                 * cfg.k and not sharded and not 0 < cfg.micro_batch_size < rows)
        nograd_piece = max(group, cfg.micro_batch_size // group * group) if cfg.micro_batch_size else 0
        return cls(rank, world, rows, group, reuse, nograd_piece, 0 if reuse else cfg.micro_batch_size)

    @property
    def own(self) -> slice:
        """This rank's rows of the gathered batch."""
        return slice(self.rank * self.rows, (self.rank + 1) * self.rows)

    def minibatch_rows(self, minibatch: torch.Tensor):
        """This rank's rows of a global minibatch: its share, or, when the one step reuses pi_bar's forward
        (the minibatch is the whole batch), the rows that forward ran on (one minibatch's gradient does not
        depend on how its rows are split over the ranks)."""
        return self.own if self.reuse_step_forward else rank_slice(minibatch, self.rank, self.world)

    def pieces(self, rows) -> list:
        """The pieces of this rank's rows of a minibatch that run one forward/backward each."""
        return list(torch.as_tensor(rows).split(self.grad_piece)) if self.grad_piece else [rows]

    def pi_bar_pass(self, models: PolicyModels, batch: Rollout):
        """pi_bar's log-probs and values [n, T_r] on this rank's rows, and the forward of an optimiser step
        (rows -> log-probs, values)."""
        record = pi_bar_from_the_step if self.reuse_step_forward else pi_bar_from_a_no_grad_pass
        return record(models, batch, self)


# ------------------------------------------------------------------------------------------ models


@dataclass
class PolicyModels:
    """The models of the loop, and the log-prob passes over them (under bf16 autocast when asked)."""

    accelerator: object
    policy: torch.nn.Module  # what the optimiser steps, prepared: the LM, or PolicyWithValue (baseline gae)
    core: torch.nn.Module  # the unwrapped LM (with its LoRA adapters): sampling and saving
    value_head: torch.nn.Module | None  # PolicyWithValue's head (baseline gae)
    reference: torch.nn.Module | None  # a frozen copy of the initial policy; None with LoRA (adapters off)

    def logprobs_and_values(self, model, sequences, mask, n_query: int, group: int = 1):
        with self.accelerator.autocast():
            return response_logprobs_and_values(model, sequences, mask, n_query, group)

    def reference_logprobs(self, sequences, mask, n_query: int, group: int) -> torch.Tensor:
        if self.reference is not None:
            return self.logprobs_and_values(self.reference, sequences, mask, n_query, group)[0]
        with self.core.disable_adapter():
            return self.logprobs_and_values(self.core, sequences, mask, n_query, group)[0]

    @property
    def scorer(self) -> torch.nn.Module:
        """The model of the no-grad passes: through the value head where there is one."""
        return self.policy if self.value_head is not None else self.core


def load_policy(cfg: PolicyConfig, accelerator):
    """(tokenizer, prompts, policy, reference): the initial policy with fresh LoRA adapters, the reference
    then being the same model with its adapters off (None), or, under full fine-tuning, a frozen copy."""
    from rlhf.models import apply_lora, load_model, load_tokenizer

    with accelerator.main_process_first():
        tokenizer = load_tokenizer(cfg.model_name_or_path)
        prompts = load_prompts(cfg.prompts, cfg.prompts_split, tokenizer)
        policy = load_model(cfg.model_name_or_path)
        if hasattr(policy, "peft_config"):
            policy = policy.merge_and_unload()
        ref = None
        if cfg.use_peft:
            policy = apply_lora(policy, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=0.0,
                                target_modules=["all-linear"], base_name=cfg.model_name_or_path)
        else:  # full fine-tuning: a frozen copy is the reference
            ref = load_model(cfg.model_name_or_path).eval().requires_grad_(False).to(accelerator.device)
    if len(prompts) < cfg.prompts_per_update:  # (outside main_process_first: every rank raises)
        raise ConfigError(f"prompts: {cfg.prompts} holds {len(prompts)} prompts, fewer than prompts_per_update "
                          f"{cfg.prompts_per_update}; lower prompts_per_update (and minibatch_size) or add prompts")
    return tokenizer, prompts, policy, ref


def prepare_models(cfg: PolicyConfig, accelerator, policy, ref):
    """(PolicyModels, optimizer): checkpointing and the value head as configured, AdamW over what trains,
    prepared by accelerate."""
    if cfg.gradient_checkpointing:
        from rlhf.models import enable_gradient_checkpointing

        enable_gradient_checkpointing(policy)
    if cfg.baseline == "gae":
        policy = PolicyWithValue(policy)
    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate)
    policy, optimizer = accelerator.prepare(policy, optimizer)
    unwrapped = accelerator.unwrap_model(policy)
    value_head = unwrapped.value_head if cfg.baseline == "gae" else None
    core = unwrapped.policy if cfg.baseline == "gae" else unwrapped
    return PolicyModels(accelerator, policy, core, value_head, ref), optimizer


# ---------------------------------------------------------------------------------- checkpoints


def save_model(models: PolicyModels, tokenizer, directory: Path) -> None:
    from rlhf.models import save_pretrained

    save_pretrained(models.core, tokenizer, directory)
    if models.value_head is not None:  # beside the model directory (which holds the policy alone): exact resume
        from safetensors.torch import save_file

        save_file(models.value_head.state_dict(), str(directory.parent / "value_head.safetensors"))


def save(accelerator, out: Path, update: int, models: PolicyModels, tokenizer, optimizer, kl_ctl) -> None:
    """A checkpoint after `update` updates; the KL controller's state (beta) goes into its trainer state."""
    from rlhf.runs import save_checkpoint

    save_checkpoint(accelerator, out, update, lambda d: save_model(models, tokenizer, d), optimizer, None,
                    {"kl_controller": kl_ctl.state_dict()}, keep=2)


def restore(accelerator, ckpt: Path, models: PolicyModels, optimizer, kl_ctl) -> int:
    """Weights, optimiser, RNG and KL controller from a checkpoint; the number of updates it holds."""
    from rlhf.models import load_model_weights
    from rlhf.runs import load_checkpoint

    load_model_weights(models.core, ckpt / "model")
    if models.value_head is not None and (ckpt / "value_head.safetensors").exists():  # (ZeRO/FSDP: load_state)
        from safetensors.torch import load_file

        models.value_head.load_state_dict(load_file(str(ckpt / "value_head.safetensors")))
    state = load_checkpoint(accelerator, ckpt, optimizer, None)
    kl_state = state.get("kl_controller")
    if kl_state is None and (ckpt / "scheduler.pt").is_file():  # a checkpoint of an older release kept it there
        kl_state = torch.load(ckpt / "scheduler.pt", weights_only=True).get("kl")
    if kl_state:
        kl_ctl.load_state_dict(kl_state)
    return state["step"]


# ------------------------------------------------------------------------------------ the steps


@dataclass
class Rollout:
    """One update's sampled and scored batch (steps 1 and 2). Every rank holds all N = prompts_per_update x k
    rows, gathered in rank order, padded to the longest query (left) and response (right) over the ranks: the
    tensors of one process sampling it all. The k rows of a prompt are adjacent."""

    sequences: torch.Tensor  # [N, T_q + T_r] query, then response
    mask: torch.Tensor  # [N, T_q + T_r] attention mask: the query's, then each response up to its length
    response_mask: torch.Tensor  # [N, T_r] (long)
    n_query: int  # T_q
    scores: torch.Tensor  # [N] reward of each completion (minus the missing-EOS penalty)
    lengths: torch.Tensor  # [N] response tokens up to and including the first EOS
    ended: torch.Tensor  # [N] bool: the response has an EOS
    records: list[dict]  # this rank's rows' prompt records [n]
    texts: list[str]  # this rank's rows' completions [n]
    reward_stats: dict  # each reward function's statistics over the whole batch


@dataclass
class Advantages:
    """Step 3's record of a batch: what the K minibatch steps train against, all [N, T_r] but seq_kl [N]."""

    logp_old: torch.Tensor  # log pi_bar of each response token
    logp_ref: torch.Tensor  # log pi_ref
    values_old: torch.Tensor | None  # V(s_t) at sampling time, masked (baseline gae)
    kl_tokens: torch.Tensor  # the KL estimator per token, masked
    seq_kl: torch.Tensor  # [N] its sum over each response
    tokens: torch.Tensor  # the advantage of each token (a sequence's advantage repeated, or GAE's)
    value_targets: torch.Tensor | None  # GAE's returns (baseline gae)


def sample_completions(models: PolicyModels, tokenizer, batch: list[dict], cfg: PolicyConfig,
                       plan: ExecutionPlan, update: int) -> Samples:
    """1. k completions of each of this rank's prompts from pi_theta, KV-cached. Weights gathered once for
    the phase under ZeRO-3/FSDP2; row r samples from seed (seed, update, global row), so any number of
    processes draws the same completions."""
    models.core.eval()
    with torch.no_grad(), gathered_for_generation(models.accelerator, models.policy), models.accelerator.autocast():
        return sample(models.core, tokenizer, [p["prompt"] for p in batch], cfg.k, models.accelerator.device,
                      share_prompts=plan.group > 1,
                      **seeded_sampling_kwargs(cfg.seed, update, plan.rank * plan.rows, plan.rows,
                                               cfg.max_new_tokens, cfg.temperature, cfg.top_p))


def score(samples: Samples, batch: list[dict], reward, cfg: PolicyConfig, accelerator, pad: int) -> Rollout:
    """2. Score this rank's completions (the score sits on each response's EOS / last token; with
    sequence-level advantages that is the sequence return), a completion cut without EOS less a penalty, and
    gather the whole batch onto every rank."""
    records = [p for p in batch for _ in range(cfg.k)]
    response = samples.response
    scores = reward([r["prompt"] for r in records], samples.texts, records,
                    [r[:n].tolist() for r, n in zip(response, samples.lengths)]).to(accelerator.device)
    reward_stats = (reward.stats(lambda t: gather_rows(accelerator, t.to(accelerator.device)))
                    if hasattr(reward, "stats") else {})  # each reward function's, over the whole batch
    scores = scores - cfg.missing_eos_penalty * (~samples.ended).float()
    query = gather_padded(accelerator, samples.query, pad, pad_first=True)  # [N, T_q]
    qmask = gather_padded(accelerator, samples.query_mask, 0, pad_first=True)
    response = gather_padded(accelerator, response, pad)  # [N, T_r]
    scores, lengths = gather_rows(accelerator, scores), gather_rows(accelerator, samples.lengths)  # [N]
    ended = gather_rows(accelerator, samples.ended.long()).bool()
    rmask = length_mask(lengths, response.shape[1])  # [N, T_r]
    return Rollout(torch.cat([query, response], dim=1), torch.cat([qmask, rmask], dim=1), rmask, query.shape[1],
                   scores, lengths, ended, records, samples.texts, reward_stats)


def pi_bar_from_a_no_grad_pass(models: PolicyModels, batch: Rollout, plan: ExecutionPlan):
    """pi_bar's log-probs (and values) from a no-grad pass over this rank's rows, in pieces of whole prompt
    groups; each optimiser step then runs its own forward, with gradients, over its rows."""
    sequences, mask = batch.sequences[plan.own], batch.mask[plan.own]
    with torch.no_grad():
        old = in_pieces(lambda rows: models.logprobs_and_values(models.scorer, sequences[rows], mask[rows],
                                                                batch.n_query, plan.group),
                        len(sequences), plan.nograd_piece)  # [n, T_r]
    return old, lambda rows: models.logprobs_and_values(models.policy, batch.sequences[rows], batch.mask[rows],
                                                        batch.n_query)


def pi_bar_from_the_step(models: PolicyModels, batch: Rollout, plan: ExecutionPlan):
    """With one optimiser step per batch, pi_bar = pi_theta at that step: the step's forward (with gradients,
    through the wrapped model, over this rank's rows) is pi_bar's. It runs here and the step reuses it."""
    models.core.train()
    forward = models.logprobs_and_values(models.policy, batch.sequences[plan.own], batch.mask[plan.own],
                                         batch.n_query, plan.group)
    return tuple(None if t is None else t.detach() for t in forward), lambda rows: forward


def record_pi_bar(models: PolicyModels, batch: Rollout, plan: ExecutionPlan):
    """3a. pi_bar = pi_theta: the sampling and reference log-probabilities, once per batch, each rank on its
    rows, gathered: (logp_old, logp_ref, values_old or None), [N, T_r] each, and the optimiser steps' forward."""
    (logp_old, values_old), step_forward = plan.pi_bar_pass(models, batch)
    sequences, mask = batch.sequences[plan.own], batch.mask[plan.own]
    with torch.no_grad():
        logp_ref = in_pieces(lambda rows: models.reference_logprobs(sequences[rows], mask[rows], batch.n_query,
                                                                    plan.group), len(sequences), plan.nograd_piece)
    accelerator = models.accelerator
    logp_old, logp_ref = gather_rows(accelerator, logp_old), gather_rows(accelerator, logp_ref)  # [N, T_r]
    if values_old is not None:
        values_old = gather_rows(accelerator, values_old)
    return logp_old, logp_ref, values_old, step_forward


def advantages(batch: Rollout, logp_old, logp_ref, values_old, cfg: PolicyConfig, beta: float) -> Advantages:
    """3b. The KL penalty, returns and advantages over the whole batch (the same on every rank)."""
    rmask = batch.response_mask
    kl_tokens = (kl_k1 if cfg.kl_estimator == "k1" else kl_k3)(logp_old, logp_ref) * rmask
    seq_kl = kl_tokens.sum(1)  # [N]
    value_targets = None
    if cfg.baseline == "gae":
        # Per-token rewards: -beta * k1_t on every response token, plus the score on the last one
        # (the EOS, or the last token of a cut response); advantages by GAE over the value head.
        token_rewards = -beta * kl_tokens if cfg.kl_estimator == "k1" else torch.zeros_like(kl_tokens)
        last = (batch.lengths - 1).clamp(min=0)
        token_rewards[torch.arange(len(last)), last] += batch.scores
        values_old = values_old * rmask
        adv_tokens, value_targets = gae(token_rewards, values_old, rmask, cfg.gamma, cfg.lam)  # [N, T_r]
        if cfg.whiten_advantages:
            adv_tokens = whiten(adv_tokens, rmask) * rmask
    else:
        returns = batch.scores - beta * seq_kl if cfg.kl_estimator == "k1" else batch.scores
        grouped = returns.view(-1, cfg.k)
        if cfg.baseline == "group":
            advantages = group_normalized_advantages(grouped, cfg.scale_rewards).flatten()
        else:
            base = leave_one_out_baseline(grouped) if cfg.baseline == "loo" else grouped.mean().expand_as(grouped)
            advantages = (grouped - base).flatten()
        if cfg.whiten_advantages:
            advantages = whiten(advantages)
        adv_tokens = advantages[:, None].expand_as(logp_old)  # [N, T_r]
    return Advantages(logp_old, logp_ref, values_old, kl_tokens, seq_kl, adv_tokens, value_targets)


def piece_loss(forward, adv: Advantages, rmask: torch.Tensor, rows, cfg: PolicyConfig, beta: float):
    """The loss of some rows of a minibatch and its statistics (token means over those rows): the clipped
    importance-sampled policy gradient, the value loss (baseline gae), the k3 penalty (kl_estimator k3)."""
    logp, values = forward
    loss, stats = policy_gradient_loss(logp, adv.logp_old[rows], adv.tokens[rows], rmask[rows],
                                       cfg.clip_range or None)
    if values is not None:
        v_loss, v_stats = value_loss(values, adv.values_old[rows], adv.value_targets[rows], rmask[rows],
                                     cfg.value_clip or None)
        loss = loss + cfg.vf_coef * v_loss
        stats = {**stats, **v_stats}
    if cfg.kl_estimator == "k3":
        loss = loss + beta * masked_mean(kl_k3(logp, adv.logp_ref[rows]), rmask[rows])
    return loss, stats


def optimise(models: PolicyModels, optimizer, batch: Rollout, adv: Advantages, step_forward, cfg: PolicyConfig,
             plan: ExecutionPlan, update: int, beta: float) -> dict:
    """4. K minibatch steps along (pi_theta / pi_bar) grad log pi_theta * advantage. Minibatches are cut from
    the whole batch, each rank taking its share of each, in pieces (gradients accumulated into one step); a
    token mean is over the whole minibatch's tokens (global_mean_share). Returns the steps' statistics, each
    over its whole minibatch (reduce_token_stats), averaged over the steps."""
    accelerator, rmask = models.accelerator, batch.response_mask
    models.core.train()
    step_stats, step_tokens = [], []
    for epoch in range(cfg.ppo_epochs):
        for minibatch in minibatches(cfg.seed, update, epoch, len(batch.sequences), cfg.minibatch_size):
            mine = plan.minibatch_rows(minibatch)
            n_global = rmask[minibatch].sum().item()
            pieces, piece_stats, piece_tokens = plan.pieces(mine), [], []
            for j, rows in enumerate(pieces):
                with micro_batch(accelerator, models.policy, last=j == len(pieces) - 1):
                    loss, stats = piece_loss(step_forward(rows), adv, rmask, rows, cfg, beta)
                    piece_tokens.append(rmask[rows].sum().item())
                    accelerator.backward(global_mean_share(loss, piece_tokens[-1], n_global, plan.world))
                piece_stats.append(stats)
            accelerator.clip_grad_norm_(list(models.policy.parameters()),  # (FSDP2: DTensors)
                                        cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf"))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step_stats.append(combine_token_stats(piece_stats, piece_tokens, maxima=("policy/ratio_max",)))
            step_tokens.append(rmask[mine].sum().item())
    return reduce_token_stats(accelerator, step_stats, step_tokens, maxima=("policy/ratio_max",))


def update_row(batch: Rollout, adv: Advantages, step_stats: dict, beta: float) -> dict:
    """The logged figures of one update, over the whole batch."""
    rmask = batch.response_mask
    entropy = -(adv.logp_old * rmask).sum() / rmask.sum()  # sampled-token estimate of the per-token entropy
    return {"objective/scores": batch.scores.mean().item(), "objective/kl": adv.seq_kl.mean().item(),
            "objective/non_score_reward": (-beta * adv.seq_kl.mean()).item(), "objective/beta": beta,
            "policy/entropy": entropy.item(), "response/length": batch.lengths.float().mean().item(),
            "response/eos_fraction": batch.ended.float().mean().item(),
            # each step's statistics over its whole minibatch, averaged over the steps
            **step_stats, **batch.reward_stats}


def show_rollouts(accelerator, cfg: PolicyConfig, batch: Rollout, adv: Advantages, own: slice, update: int) -> None:
    """The main process's rollouts as a printed prompt / response / score / KL table, and in the tracker."""
    scores, kl = batch.scores[own], adv.seq_kl[own]
    print_rollouts(batch.records, batch.texts, scores, kl)
    if cfg.report_to != "none":
        from rlhf.trackers import log_table

        log_table(accelerator, "policy/rollouts", ["prompt", "response", "score", "kl"],
                  [[r["prompt"][-1]["content"] if isinstance(r["prompt"], list) else r["prompt"], t, s, k]
                   for r, t, s, k in zip(batch.records, batch.texts, scores.tolist(), kl.tolist())],
                  step=update + 1)


def make_probe(cfg: PolicyConfig, tokenizer):
    """(probe, gold judge) for probe_every > 0: the held-out prompts and the gold judge's function."""
    from rlhf.probe import HeldOutProbe
    from rlhf.reward_functions import RewardFunctionError, RewardFunctions

    prompts = load_prompts(cfg.probe_prompts, "test", tokenizer, max_prompts=cfg.probe_max_prompts)
    try:
        gold = RewardFunctions.from_spec(cfg.probe_gold_fn, [])
    except RewardFunctionError as e:
        raise ConfigError(f"probe_gold_fn: {e}") from None
    return HeldOutProbe(prompts, cfg.probe_samples, cfg.max_new_tokens, cfg.temperature, cfg.top_p, cfg.seed), gold


def run_probe(probe, models: PolicyModels, tokenizer, reward, gold) -> dict:
    """The probe's figures for the policy as it stands (every rank computes all of them: see rlhf/probe.py)."""
    acc = models.accelerator
    return probe.run(models.core, tokenizer, acc.device, proxy=reward, gold=gold,
                     policy_logprobs=lambda s, m, q: models.logprobs_and_values(models.core, s, m, q)[0],
                     reference_logprobs=lambda s, m, q: models.reference_logprobs(s, m, q, 1),
                     context=lambda: _generation_context(models))


def _generation_context(models: PolicyModels):
    from contextlib import ExitStack

    stack = ExitStack()
    stack.enter_context(gathered_for_generation(models.accelerator, models.policy))
    stack.enter_context(models.accelerator.autocast())
    return stack


def finish(accelerator, cfg: PolicyConfig, out: Path, models: PolicyModels, tokenizer, optimizer, kl_ctl, logger,
           history: list[dict], start: int, started: float, probes: list[dict]) -> dict:
    """The last checkpoint, the trained model in <output_dir>/model, and the run's metrics."""
    from rlhf.models import save_pretrained

    save(accelerator, out, cfg.num_updates, models, tokenizer, optimizer, kl_ctl)
    full = full_state_dict(accelerator, models.policy)  # collective; None unless ZeRO-3/FSDP shard the weights
    if full is not None and models.value_head is not None:  # PolicyWithValue: the policy's own weights
        full = {k.removeprefix("policy."): v for k, v in full.items() if k.startswith("policy.")}
    if accelerator.is_main_process:
        with publish_dir(out / "model", what="model") as tmp:  # an older model/ stays whole until replaced
            save_pretrained(models.core, tokenizer, tmp, state_dict=full)
    accelerator.wait_for_everyone()
    first = history[: max(1, len(history) // 5)]
    last = history[-max(1, len(history) // 5):]
    mean = lambda rows, key: sum(r[key] for r in rows) / len(rows) if rows else math.nan
    metrics = logger.finish({
        "policy/updates": cfg.num_updates, "policy/seconds": time.time() - started,
        "objective/scores_first": mean(first, "objective/scores"), "objective/scores_last": mean(last, "objective/scores"),
        "objective/kl_last": mean(last, "objective/kl"), "model_dir": str(out / "model"),
        "completions_per_second": cfg.prompts_per_update * cfg.k * (cfg.num_updates - start)
        / max(time.time() - started, 1e-9),
        **probe_summary(probes),
    })
    accelerator.print(f"[policy] score {metrics['objective/scores_first']:.3f} -> {metrics['objective/scores_last']:.3f}"
                      f" (first vs last fifth of updates), KL {metrics['objective/kl_last']:.3f}; model in {out / 'model'}")
    return metrics


def probe_summary(rows: list[dict]) -> dict:
    """The first and last probe's figures (before training and after the last probed update)."""
    if not rows:
        return {}
    return {f"probe/{key}_{end}": row[f"probe/{key}"] for end, row in (("first", rows[0]), ("last", rows[-1]))
            for key in ("proxy", "gold", "kl")}


# ------------------------------------------------------------------------------------------ train


@releases_run_lock
def train(cfg: PolicyConfig) -> dict:
    from tqdm.auto import tqdm
    from transformers.utils import logging as hf_logging

    from rlhf.runs import RunLogger, latest_checkpoint, prepare_output_dir

    hf_logging.disable_progress_bar()
    accelerator = make_accelerator(bf16=cfg.bf16, report_to=cfg.report_to, project_dir=cfg.output_dir)
    plan = ExecutionPlan.decide(cfg, accelerator)
    ckpt = latest_checkpoint(cfg.output_dir) if cfg.resume else None
    out = prepare_output_dir(cfg, accelerator)
    torch.manual_seed(cfg.seed + plan.rank)
    tokenizer, prompts, policy, ref = load_policy(cfg, accelerator)
    reward = load_reward(cfg, accelerator.device)
    models, optimizer = prepare_models(cfg, accelerator, policy, ref)
    kl_ctl = AdaptiveKLController(cfg.beta, cfg.target_kl, cfg.kl_horizon) if cfg.target_kl > 0 \
        else FixedKLController(cfg.beta)
    start = restore(accelerator, ckpt, models, optimizer, kl_ctl) if ckpt is not None else 0
    logger = RunLogger(accelerator, cfg, "rlhf-policy", resume_step=start if ckpt is not None else None)
    probe, gold = make_probe(cfg, tokenizer) if cfg.probe_every else (None, None)
    probes = [r for r in logger.resumed if "probe/gold" in r]  # (step 0's has no update figures)
    if probe is not None and start == 0:  # the initial policy's figures: where the curves start
        probes.append({"step": 0, **run_probe(probe, models, tokenizer, reward, gold)})
        logger.log({k: v for k, v in probes[-1].items() if k != "step"}, step=0)
    bar = tqdm(total=cfg.num_updates, initial=start, desc="policy", disable=not accelerator.is_main_process)
    # whole-run metrics after a resume too: the updates before it come from the log
    started, history = time.time(), [r for r in logger.resumed if "objective/scores" in r]
    for update in range(start, cfg.num_updates):
        t0, beta = time.time(), kl_ctl.value
        chosen, _ = global_batch_indices(update, len(prompts), cfg.prompts_per_update, cfg.seed,
                                         name="prompts_per_update", seed_stride=PROMPT_SEED_STRIDE)
        batch = [prompts[i] for i in rank_slice(chosen, plan.rank, plan.world)]  # this rank's prompts
        # 1. Sample k completions per prompt from pi_theta.
        samples = sample_completions(models, tokenizer, batch, cfg, plan, update)
        t_sample = time.time() - t0
        # 2. Score them; every rank then holds the whole batch.
        rollout = score(samples, batch, reward, cfg, accelerator, tokenizer.pad_token_id)
        # 3. pi_bar = pi_theta: record the sampling and reference log-probs, then returns and advantages.
        logp_old, logp_ref, values_old, step_forward = record_pi_bar(models, rollout, plan)
        adv = advantages(rollout, logp_old, logp_ref, values_old, cfg, beta)
        # 4. K minibatch steps along (pi_theta / pi_bar) grad log pi_theta * advantage.
        step_stats = optimise(models, optimizer, rollout, adv, step_forward, cfg, plan, update, beta)
        kl_ctl.update(adv.seq_kl.mean().item(), cfg.prompts_per_update * cfg.k)

        row = {**update_row(rollout, adv, step_stats, beta), "time/sample_seconds": t_sample,
               "time/update_seconds": time.time() - t0}
        if probe is not None and (update + 1) % cfg.probe_every == 0:  # held-out proxy, gold and KL
            row.update(run_probe(probe, models, tokenizer, reward, gold))
            probes.append(row)
        logger.log(row, step=update + 1)
        history.append(row)
        bar.update(1)
        bar.set_postfix(score=f"{row['objective/scores']:.3f}", kl=f"{row['objective/kl']:.3f}")
        if cfg.sample_every and (update + 1) % cfg.sample_every == 0 and accelerator.is_main_process:
            show_rollouts(accelerator, cfg, rollout, adv, plan.own, update)
        done = update + 1
        if done < cfg.num_updates and ((cfg.save_every and done % cfg.save_every == 0)
                                       or done == cfg.stop_after_update):
            save(accelerator, out, done, models, tokenizer, optimizer, kl_ctl)
        if done == cfg.stop_after_update and done < cfg.num_updates:
            bar.close()
            accelerator.print(f"[policy] stopped after update {done}; continue with --resume true")
            return {"stopped_at_update": done}
    bar.close()
    return finish(accelerator, cfg, out, models, tokenizer, optimizer, kl_ctl, logger, history, start, started, probes)


def print_rollouts(records, texts, scores, kl, n: int = 4, width: int = 44) -> None:
    cut = lambda t: (t if len(t) <= width else t[: width - 1] + "…").replace("\n", " ")
    print(f"\n{'prompt':<{width}} | {'response':<{width}} | {'score':>6} | {'KL':>6}")
    for r, t, s, k in list(zip(records, texts, scores.tolist(), kl.tolist()))[:n]:
        print(f"{cut(r['prompt'][-1]['content']):<{width}} | {cut(t):<{width}} | {s:>6.3f} | {k:>6.3f}")


def main(argv: list[str] | None = None) -> dict:
    from rlhf.config import parse_args

    return train(parse_args(PolicyConfig, argv, prog="rlhf policy"))
