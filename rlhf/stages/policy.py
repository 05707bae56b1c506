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
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from rlhf.config import ConfigError, RunConfig, option, require_at_least
from rlhf.distributed import (full_state_dict, gather_padded, gather_rows, gathered_for_generation, global_mean_share,
                               make_accelerator, micro_batch, minibatches, rank_slice, reduce_token_stats,
                               seeded_sampling_kwargs, shards_optimizer, split_evenly)
from rlhf.losses import (
    AdaptiveKLController,
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
from rlhf.rollout import (PolicyWithValue, eos_lengths, generate_shared_prompts, in_pieces, left_pad, load_prompts,
                          render_prompt_ids, response_logprobs_and_values)
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


def prompt_batch(update: int, n_prompts: int, per_update: int, seed: int) -> list[int]:
    """Prompt indices of one update: a seeded permutation per pass over the prompts (pure of (seed, update))."""
    per_pass = n_prompts // per_update
    epoch, b = divmod(update, per_pass)
    order = torch.randperm(n_prompts, generator=torch.Generator().manual_seed(seed * 7919 + epoch))
    return order[b * per_update:(b + 1) * per_update].tolist()


# ------------------------------------------------------------------------------------------ train


@releases_run_lock
def train(cfg: PolicyConfig) -> dict:
    from tqdm.auto import tqdm
    from transformers.utils import logging as hf_logging

    from rlhf.models import apply_lora, load_model, load_model_weights, load_tokenizer, save_pretrained
    from rlhf.runs import RunLogger, latest_checkpoint, load_checkpoint, prepare_output_dir, save_checkpoint

    hf_logging.disable_progress_bar()
    accelerator = make_accelerator(bf16=cfg.bf16, report_to=cfg.report_to, project_dir=cfg.output_dir)
    world, rank = accelerator.num_processes, accelerator.process_index
    local_prompts = split_evenly(cfg.prompts_per_update, world, "prompts_per_update")  # per-rank sizes
    split_evenly(cfg.minibatch_size, world, "minibatch_size")  # each rank takes an equal share of a minibatch
    ckpt = latest_checkpoint(cfg.output_dir) if cfg.resume else None
    out = prepare_output_dir(cfg, accelerator)
    torch.manual_seed(cfg.seed + rank)

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
    reward = load_reward(cfg, accelerator.device)
    if cfg.gradient_checkpointing:
        from rlhf.models import enable_gradient_checkpointing

        enable_gradient_checkpointing(policy)
    if cfg.baseline == "gae":
        policy = PolicyWithValue(policy)
    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate)
    policy, optimizer = accelerator.prepare(policy, optimizer)
    value_head = accelerator.unwrap_model(policy).value_head if cfg.baseline == "gae" else None
    core = accelerator.unwrap_model(policy).policy if cfg.baseline == "gae" else accelerator.unwrap_model(policy)

    def save_model(directory: Path) -> None:
        save_pretrained(core, tokenizer, directory)
        if value_head is not None:  # beside the model directory (which holds the policy alone): exact resume
            from safetensors.torch import save_file
            save_file(value_head.state_dict(), str(directory.parent / "value_head.safetensors"))
    kl_ctl = AdaptiveKLController(cfg.beta, cfg.target_kl, cfg.kl_horizon) if cfg.target_kl > 0 else None

    class _NoScheduler:  # the checkpoint format has a scheduler slot; this stage keeps a constant rate
        def state_dict(self):
            return {"kl": kl_ctl.state_dict() if kl_ctl else None}

        def load_state_dict(self, state):
            if kl_ctl and state.get("kl"):
                kl_ctl.load_state_dict(state["kl"])

    start = 0
    if ckpt is not None:
        load_model_weights(core, ckpt / "model")
        if value_head is not None and (ckpt / "value_head.safetensors").exists():  # (ZeRO/FSDP: load_state)
            from safetensors.torch import load_file
            value_head.load_state_dict(load_file(str(ckpt / "value_head.safetensors")))
        start = load_checkpoint(accelerator, ckpt, optimizer, _NoScheduler())["step"]
    logger = RunLogger(accelerator, cfg, "rlhf-policy", resume_step=start if ckpt is not None else None)

    def logprobs_and_values(*args):  # every log-prob pass, under bf16 autocast when asked
        with accelerator.autocast():
            return response_logprobs_and_values(*args)

    def reference_logprobs(seqs, mask, n_query, group):
        if ref is not None:
            return logprobs_and_values(ref, seqs, mask, n_query, group)[0]
        with core.disable_adapter():
            return logprobs_and_values(core, seqs, mask, n_query, group)[0]

    # Each rank's rows are whole prompt groups (k completions of one prompt, adjacent) in sampling and in
    # the passes over all its rows: the prompt runs once per group there (not under DeepSpeed/FSDP, whose
    # sharded forward is kept to one plain pass per phase).
    group = cfg.k if cfg.share_prompts and not shards_optimizer(accelerator) and not cfg.gradient_checkpointing else 1

    # One optimiser step per batch: its forward pass doubles as pi_bar's (not under DeepSpeed/FSDP, whose
    # sharded forward is kept to the plain order: no-grad passes first, then forward and backward at once).
    single_step = (cfg.reuse_step_forward and cfg.ppo_epochs == 1
                   and cfg.minibatch_size == cfg.prompts_per_update * cfg.k and not shards_optimizer(accelerator)
                   and not 0 < cfg.micro_batch_size < local_prompts * cfg.k)
    # Memory: the no-grad log-prob passes run in pieces of whole prompt groups, the grad passes in pieces of
    # micro_batch_size rows (gradients accumulated); 0 runs each in one piece.
    nograd_piece = max(group, cfg.micro_batch_size // group * group) if cfg.micro_batch_size else 0
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    bar = tqdm(total=cfg.num_updates, initial=start, desc="policy", disable=not accelerator.is_main_process)
    # whole-run metrics after a resume too: the updates before it come from the log
    started, history = time.time(), [r for r in logger.resumed if "objective/scores" in r]
    for update in range(start, cfg.num_updates):
        t0 = time.time()
        beta = kl_ctl.value if kl_ctl else cfg.beta
        chosen = prompt_batch(update, len(prompts), cfg.prompts_per_update, cfg.seed)
        batch = [prompts[i] for i in rank_slice(chosen, rank, world)]  # this rank's local_prompts

        # 1. Sample k completions per prompt from pi_theta.
        core.eval()
        query, qmask = left_pad([render_prompt_ids(tokenizer, p["prompt"]) for p in batch], pad)
        query = query.repeat_interleave(cfg.k, 0).to(accelerator.device)  # [n, T_q], n = local_prompts x k
        qmask = qmask.repeat_interleave(cfg.k, 0).to(accelerator.device)
        n_query = query.shape[1]
        #    Weights gathered once for the phase under ZeRO-3/FSDP2; row r samples from seed (seed, update,
        #    global row), so any number of processes draws the same completions.
        with torch.no_grad(), gathered_for_generation(accelerator, policy), accelerator.autocast():
            seqs = generate_shared_prompts(
                core, query, qmask, group, pad_token_id=pad, eos_token_id=eos, use_cache=True,
                **seeded_sampling_kwargs(cfg.seed, update, rank * len(query), len(query), cfg.max_new_tokens,
                                         cfg.temperature, cfg.top_p))  # [n, T_q + T_r]
        response = seqs[:, n_query:]
        lengths, ended = eos_lengths(response, eos)  # from the first EOS, never by matching the pad token
        texts = [tokenizer.decode(r[:n], skip_special_tokens=True).strip() for r, n in zip(response, lengths)]
        t_sample = time.time() - t0

        # 2. Score (the score sits on each response's EOS / last token; with sequence-level advantages that
        #    is the sequence return below). A completion cut without EOS can take a penalty.
        records = [p for p in batch for _ in range(cfg.k)]
        scores = reward([r["prompt"] for r in records], texts, records,
                        [r[:n].tolist() for r, n in zip(response, lengths)]).to(accelerator.device)
        reward_stats = (reward.stats(lambda t: gather_rows(accelerator, t.to(accelerator.device)))
                        if hasattr(reward, "stats") else {})  # each reward function's, over the whole batch
        scores = scores - cfg.missing_eos_penalty * (~ended).float()

        #    Every rank now holds the whole batch [N, ...], N = prompts_per_update x k, rows in rank order,
        #    padded to the longest query (left) and response (right) over the ranks: the tensors of one
        #    process sampling it all. Rows `own` are this rank's.
        query = gather_padded(accelerator, query, pad, pad_first=True)  # [N, T_q]
        qmask = gather_padded(accelerator, qmask, 0, pad_first=True)
        response = gather_padded(accelerator, response, pad)
        scores, lengths = gather_rows(accelerator, scores), gather_rows(accelerator, lengths)  # [N]
        ended = gather_rows(accelerator, ended.long()).bool()
        own = slice(rank * local_prompts * cfg.k, (rank + 1) * local_prompts * cfg.k)
        n_query = query.shape[1]
        seqs = torch.cat([query, response], dim=1)  # [N, T_q + T_r]
        rmask = (torch.arange(response.shape[1], device=response.device)[None] < lengths[:, None]).long()  # [N, T_r]
        mask = torch.cat([qmask, rmask], dim=1)

        # 3. pi_bar = pi_theta: sampling and reference log-probabilities, once per batch (each rank its rows),
        #    then returns and advantages over the whole batch, on every rank. With a single optimiser step
        #    per batch, that step's forward (with gradients, through the wrapped model) is pi_bar's: it runs
        #    here, and the step below reuses it (each rank stepping on its own rows; one minibatch's gradient
        #    does not depend on how its rows are split over the ranks).
        step_forward = None
        if single_step:
            core.train()
            step_forward = logprobs_and_values(policy, seqs[own], mask[own], n_query, group)
            logp_old, values_old = (None if t is None else t.detach() for t in step_forward)
        else:
            with torch.no_grad():
                scorer = policy if value_head is not None else core
                logp_old, values_old = in_pieces(
                    lambda rows: logprobs_and_values(scorer, seqs[own][rows], mask[own][rows], n_query, group),
                    len(seqs[own]), nograd_piece)  # [n, T_r]
        with torch.no_grad():
            logp_ref = in_pieces(lambda rows: reference_logprobs(seqs[own][rows], mask[own][rows], n_query, group),
                                 len(seqs[own]), nograd_piece)
        logp_old, logp_ref = gather_rows(accelerator, logp_old), gather_rows(accelerator, logp_ref)  # [N, T_r]
        if values_old is not None:
            values_old = gather_rows(accelerator, values_old)
        kl_tokens = (kl_k1 if cfg.kl_estimator == "k1" else kl_k3)(logp_old, logp_ref) * rmask
        seq_kl = kl_tokens.sum(1)  # [N]
        if cfg.baseline == "gae":
            # Per-token rewards: -beta * k1_t on every response token, plus the score on the last one
            # (the EOS, or the last token of a cut response); advantages by GAE over the value head.
            token_rewards = -beta * kl_tokens if cfg.kl_estimator == "k1" else torch.zeros_like(kl_tokens)
            last = (lengths - 1).clamp(min=0)
            token_rewards[torch.arange(len(last)), last] += scores
            values_old = values_old * rmask
            adv_tokens, value_targets = gae(token_rewards, values_old, rmask, cfg.gamma, cfg.lam)  # [N, T_r]
            if cfg.whiten_advantages:
                adv_tokens = whiten(adv_tokens, rmask) * rmask
        else:
            returns = scores - beta * seq_kl if cfg.kl_estimator == "k1" else scores
            grouped = returns.view(-1, cfg.k)
            if cfg.baseline == "group":
                advantages = group_normalized_advantages(grouped, cfg.scale_rewards).flatten()
            else:
                base = leave_one_out_baseline(grouped) if cfg.baseline == "loo" else grouped.mean().expand_as(grouped)
                advantages = (grouped - base).flatten()
            if cfg.whiten_advantages:
                advantages = whiten(advantages)
            adv_tokens = advantages[:, None].expand_as(logp_old)  # [N, T_r]

        # 4. K minibatch steps along (pi_theta / pi_bar) grad log pi_theta * advantage. Minibatches are cut
        #    from the whole batch, each rank taking its share of each; a token mean is over the whole
        #    minibatch's tokens (global_mean_share), and so are the statistics (reduce_token_stats).
        core.train()
        step_stats, step_tokens = [], []
        for epoch in range(cfg.ppo_epochs):
            for global_mb in minibatches(cfg.seed, update, epoch, len(seqs), cfg.minibatch_size):
                mb = own if single_step else rank_slice(global_mb, rank, world)
                n_tokens, n_global = rmask[mb].sum().item(), rmask[global_mb].sum().item()
                #    This rank's rows of the minibatch in pieces of micro_batch_size (one piece by default),
                #    each piece's share of the minibatch's token mean backpropagated, then one step.
                pieces = [mb] if single_step or not cfg.micro_batch_size else \
                    list(torch.as_tensor(mb).split(cfg.micro_batch_size))
                piece_stats, piece_tokens = [], []
                for j, rows in enumerate(pieces):
                    with micro_batch(accelerator, policy, last=j == len(pieces) - 1):
                        if single_step:
                            logp, values = step_forward
                        else:
                            logp, values = logprobs_and_values(policy, seqs[rows], mask[rows], n_query)
                        loss, stats = policy_gradient_loss(logp, logp_old[rows], adv_tokens[rows], rmask[rows],
                                                           cfg.clip_range or None)
                        if values is not None:
                            v_loss, v_stats = value_loss(values, values_old[rows], value_targets[rows],
                                                         rmask[rows], cfg.value_clip or None)
                            loss = loss + cfg.vf_coef * v_loss
                            stats = {**stats, **v_stats}
                        if cfg.kl_estimator == "k3":
                            loss = loss + beta * masked_mean(kl_k3(logp, logp_ref[rows]), rmask[rows])
                        piece_tokens.append(rmask[rows].sum().item())
                        accelerator.backward(global_mean_share(loss, piece_tokens[-1], n_global, world))
                    piece_stats.append(stats)
                accelerator.clip_grad_norm_(list(policy.parameters()),  # (FSDP2: DTensors)
                                            cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf"))
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                step_stats.append(combine_token_stats(piece_stats, piece_tokens, maxima=("policy/ratio_max",)))
                step_tokens.append(n_tokens)
        if kl_ctl:
            kl_ctl.update(seq_kl.mean().item(), cfg.prompts_per_update * cfg.k)

        entropy = -(logp_old * rmask).sum() / rmask.sum()  # sampled-token estimate of the per-token entropy
        row = {"objective/scores": scores.mean().item(), "objective/kl": seq_kl.mean().item(),
               "objective/non_score_reward": (-beta * seq_kl.mean()).item(), "objective/beta": beta,
               "policy/entropy": entropy.item(), "response/length": lengths.float().mean().item(),
               "response/eos_fraction": ended.float().mean().item(),
               # each step's statistics over its whole minibatch, averaged over the steps
               **reduce_token_stats(accelerator, step_stats, step_tokens, maxima=("policy/ratio_max",)),
               **reward_stats, "time/sample_seconds": t_sample, "time/update_seconds": time.time() - t0}
        logger.log(row, step=update + 1)
        history.append(row)
        bar.update(1)
        bar.set_postfix(score=f"{row['objective/scores']:.3f}", kl=f"{row['objective/kl']:.3f}")
        if cfg.sample_every and (update + 1) % cfg.sample_every == 0 and accelerator.is_main_process:
            print_rollouts(records, texts, scores[own], seq_kl[own])
            if cfg.report_to != "none":  # the main process's rollouts, as a table in the tracker
                from rlhf.trackers import log_table

                log_table(accelerator, "policy/rollouts", ["prompt", "response", "score", "kl"],
                          [[r["prompt"][-1]["content"] if isinstance(r["prompt"], list) else r["prompt"], t, s, k]
                           for r, t, s, k in zip(records, texts, scores[own].tolist(), seq_kl[own].tolist())],
                          step=update + 1)
        done = update + 1
        if done < cfg.num_updates and ((cfg.save_every and done % cfg.save_every == 0)
                                       or done == cfg.stop_after_update):
            save_checkpoint(accelerator, out, done, save_model, optimizer,
                            _NoScheduler(), {}, keep=2)
        if done == cfg.stop_after_update and done < cfg.num_updates:
            bar.close()
            accelerator.print(f"[policy] stopped after update {done}; continue with --resume true")
            return {"stopped_at_update": done}
    bar.close()

    save_checkpoint(accelerator, out, cfg.num_updates, save_model, optimizer,
                    _NoScheduler(), {}, keep=2)
    full = full_state_dict(accelerator, policy)  # collective; None unless ZeRO-3/FSDP shard the weights
    if full is not None and value_head is not None:  # PolicyWithValue: the policy's own weights
        full = {k.removeprefix("policy."): v for k, v in full.items() if k.startswith("policy.")}
    if accelerator.is_main_process:
        with publish_dir(out / "model", what="model") as tmp:  # an older model/ stays whole until replaced
            save_pretrained(core, tokenizer, tmp, state_dict=full)
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
    })
    accelerator.print(f"[policy] score {metrics['objective/scores_first']:.3f} -> {metrics['objective/scores_last']:.3f}"
                      f" (first vs last fifth of updates), KL {metrics['objective/kl_last']:.3f}; model in {out / 'model'}")
    return metrics


def print_rollouts(records, texts, scores, kl, n: int = 4, width: int = 44) -> None:
    cut = lambda t: (t if len(t) <= width else t[: width - 1] + "…").replace("\n", " ")
    print(f"\n{'prompt':<{width}} | {'response':<{width}} | {'score':>6} | {'KL':>6}")
    for r, t, s, k in list(zip(records, texts, scores.tolist(), kl.tolist()))[:n]:
        print(f"{cut(r['prompt'][-1]['content']):<{width}} | {cut(t):<{width}} | {s:>6.3f} | {k:>6.3f}")


def main(argv: list[str] | None = None) -> dict:
    from rlhf.config import parse_args

    return train(parse_args(PolicyConfig, argv, prog="rlhf policy"))
