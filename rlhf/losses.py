"""Pure loss math, with shapes in the docstrings. Trainers call these; they do not re-derive them inline."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rlhf.sampling import nucleus

IGNORE_INDEX = -100


def token_nll_sum(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token negative log-likelihood and the number of target tokens.

    logits: [B, T, V] for positions 0..T-1; labels: [B, T] with IGNORE_INDEX where no loss is taken.
    Position t predicts labels[:, t + 1]. Returns (sum of NLL over targets, count of targets), both scalars.
    Summing (not averaging) per micro-batch lets the caller normalise by the global batch's target count,
    which makes gradient accumulation and data parallelism give the same gradient as one big batch.
    """
    shift_logits = logits[:, :-1, :].float()  # [B, T-1, V]
    shift_labels = labels[:, 1:]  # [B, T-1]
    nll = F.cross_entropy(shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1),
                          ignore_index=IGNORE_INDEX, reduction="sum")
    return nll, (shift_labels != IGNORE_INDEX).sum()


# ------------------------------------------------------------------------------- preference losses


def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor, margin: torch.Tensor | float = 0.0,
                       label_smoothing: torch.Tensor | float = 0.0) -> torch.Tensor:
    """Per-pair Bradley-Terry loss -log sigma(r_c - r_r - margin), with label smoothing eps:

        (1 - eps) * -log sigma(d) + eps * -log sigma(-d),   d = r_c - r_r - margin

    r_chosen, r_rejected: [N]; margin and label_smoothing: scalars or [N]. Returns [N].
    eps = 0.5 is the loss of a tie (both orders equally likely); a small eps models label noise
    (the "conservative" DPO/RM variant). The margin follows Llama 2's reward model (Touvron et al., 2023).
    Equal rewards, no margin, give log 2 whatever eps.
    """
    d = r_chosen - r_rejected - margin
    return -(1 - label_smoothing) * F.logsigmoid(d) - label_smoothing * F.logsigmoid(-d)


def reward_centering_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """mean((r_c + r_r)^2) over pairs [N] -> scalar: pulls rewards toward zero mean, where Bradley-Terry
    alone leaves the offset free (Eisenstein et al., 2023, "Helping or Herding?"; TRL's
    center_rewards_coefficient)."""
    return ((r_chosen + r_rejected) ** 2).mean()


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 10) -> float:
    """ECE of predicted probabilities [N] against 0/1 outcomes [N], with equal-width bins on [0, 1]:
    sum over bins of (bin size / N) * |mean outcome - mean probability|."""
    probs, labels = probs.double().flatten(), labels.double().flatten()
    bins = torch.clamp((probs * n_bins).long(), max=n_bins - 1)
    ece = torch.zeros((), dtype=torch.float64)
    for b in range(n_bins):
        sel = bins == b
        if sel.any():
            ece += sel.double().mean() * (labels[sel].mean() - probs[sel].mean()).abs()
    return float(ece)


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position of the last real token of each row: attention_mask [B, T] of 0/1 -> [B].

    Works for left and right padding alike and never looks at token ids, so a pad token equal to EOS
    cannot move it.
    """
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)  # [T]
    return (attention_mask.long() * positions).argmax(dim=1)



def masked_mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of hidden [B, T, H] over the positions where mask [B, T] is 1 -> [B, H] (zeros for an empty row)."""
    m = mask.to(hidden.dtype).unsqueeze(-1)  # [B, T, 1]
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1)


def logprob_stats(token_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean and minimum of per-token log-probs token_logp [B, T] over mask [B, T] -> [B, 2]; (0, 0) for a row
    with no masked token."""
    m = mask.bool()
    mean = (token_logp * m).sum(1) / m.sum(1).clamp(min=1)
    low = token_logp.masked_fill(~m, float("inf")).min(1).values
    low = torch.where(m.any(1), low, torch.zeros_like(low))
    return torch.stack([mean, low], dim=1)


def ensemble_score(members: torch.Tensor, aggregate: str = "mean", k: float = 1.0) -> torch.Tensor:
    """One score per row from an ensemble's member scores [B, N] -> [B]: "mean"; "lcb", the mean minus k
    times the members' standard deviation (population, /N); "min", the worst member (Coste et al. 2023,
    "Reward Model Ensembles Help Mitigate Overoptimization")."""
    if aggregate == "mean":
        return members.mean(-1)
    if aggregate == "lcb":
        return members.mean(-1) - k * members.std(-1, correction=0)
    if aggregate == "min":
        return members.min(-1).values
    raise ValueError(f"unknown ensemble aggregate {aggregate!r} (mean, lcb or min)")


# --------------------------------------------------------------------------------- policy gradient


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log pi(token_t | prefix): logits [B, T, V] already aligned with tokens [B, T] (logits[:, t] predicts
    tokens[:, t]) -> [B, T]."""
    return torch.gather(F.log_softmax(logits.float(), dim=-1), 2, tokens.unsqueeze(-1)).squeeze(-1)


def kl_k1(logp: torch.Tensor, logp_ref: torch.Tensor) -> torch.Tensor:
    """Per-token k1 estimator of KL(pi || pi_ref) on tokens sampled from pi: log pi - log pi_ref. [B, T]."""
    return logp - logp_ref


def kl_k3(logp: torch.Tensor, logp_ref: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimator (Schulman, "Approximating KL divergence", 2020): r - 1 - log r with
    r = pi_ref / pi; unbiased and never negative. [B, T]."""
    log_ratio = logp_ref - logp
    return torch.exp(log_ratio) - 1 - log_ratio


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def whiten(x: torch.Tensor, mask: torch.Tensor | None = None, shift_mean: bool = True) -> torch.Tensor:
    """(x - mean) / std over the masked entries (the mean is kept when `shift_mean` is False)."""
    if mask is None:
        mask = torch.ones_like(x)
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    return out if shift_mean else out + mean


def leave_one_out_baseline(scores: torch.Tensor) -> torch.Tensor:
    """For k samples of each prompt, scores [P, k] -> baselines [P, k]: the mean of the other k - 1 scores
    (RLOO; Kool et al., 2019, "Buy 4 REINFORCE samples, get a baseline for free")."""
    k = scores.shape[1]
    if k < 2:
        raise ValueError("a leave-one-out baseline needs k >= 2 samples per prompt")
    return (scores.sum(dim=1, keepdim=True) - scores) / (k - 1)


def group_normalized_advantages(scores: torch.Tensor, scale: str = "group", eps: float = 1e-4) -> torch.Tensor:
    """GRPO's advantages (Shao et al., 2024): scores [P, k] (k samples of each of P prompts) -> [P, k],
    (r - mean of the prompt's k scores) / (std + eps). `scale`: "group" divides by the standard deviation
    over the prompt's k scores, "batch" by the one over all P x k, "none" not at all (mean-centred only, as
    later analyses of GRPO recommend: Liu et al., 2025, "Understanding R1-Zero-Like Training"). Standard
    deviations are the sample ones (k - 1 in the denominator) and eps is 1e-4, as in TRL's GRPOTrainer."""
    k = scores.shape[1]
    if k < 2:
        raise ValueError("a group-normalised baseline needs k >= 2 samples per prompt")
    centred = scores - scores.mean(dim=1, keepdim=True)
    if scale == "group":
        return centred / (scores.std(dim=1, keepdim=True) + eps)
    if scale == "batch":
        return centred / (scores.std() + eps)
    if scale == "none":
        return centred
    raise ValueError(f"scale must be 'group', 'batch' or 'none', got {scale!r}")


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float):
    """Generalised advantage estimation (Schulman et al., 2016) over token time steps.

    rewards, values, mask: [B, T] (mask 1 on response tokens, which come first in each row). The value after
    the last real token is 0. Returns (advantages, returns), both [B, T], zero where mask is 0. The
    advantages are `lambda_advantages` (no loop over time).
    """
    advantages = lambda_advantages(rewards, values, mask, gamma, lam)
    return advantages, (advantages + values) * mask.to(rewards.dtype)


def policy_gradient_loss(logp: torch.Tensor, logp_old: torch.Tensor, advantages: torch.Tensor,
                         mask: torch.Tensor, clip_range: float | None) -> tuple[torch.Tensor, dict]:
    """Importance-sampled policy-gradient loss with optional PPO clipping, and its statistics.

    logp (current pi_theta, with grad), logp_old (pi_bar, the sampling policy), advantages, mask: [B, T].
    Loss per token: -ratio * A, ratio = pi_theta / pi_bar; with `clip_range` eps the pessimistic
    max(-ratio * A, -clip(ratio, 1 - eps, 1 + eps) * A) (PPO, Schulman et al., 2017). At pi_theta = pi_bar
    the gradient is the on-policy REINFORCE gradient A * grad log pi. Returns (masked mean loss, stats).
    """
    log_ratio = logp - logp_old
    ratio = torch.exp(log_ratio)
    loss = -advantages * ratio
    if clip_range is not None and clip_range > 0:
        clipped = -advantages * torch.clamp(ratio, 1 - clip_range, 1 + clip_range)
        clip_hit = (clipped > loss).float()
        loss = torch.maximum(loss, clipped)
    else:
        clip_hit = torch.zeros_like(loss)
    with torch.no_grad():
        stats = {"policy/approxkl": masked_mean(0.5 * log_ratio**2, mask).item(),
                 "policy/clipfrac": masked_mean(clip_hit, mask).item(),
                 "policy/ratio_mean": masked_mean(ratio, mask).item(),
                 "policy/ratio_max": ratio[mask.bool()].max().item() if mask.any() else 1.0}
    return masked_mean(loss, mask), stats


def value_loss(values: torch.Tensor, values_old: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip_range: float | None) -> tuple[torch.Tensor, dict]:
    """Value-head regression toward GAE returns, with optional PPO-style clipping around the sampling-time
    values, and its statistics.

    values (with grad), values_old, returns, mask: [B, T]. Per token 0.5 * (V - R)^2, or with clip eps
    0.5 * max((V - R)^2, (clip(V, V_old - eps, V_old + eps) - R)^2) (PPO2's value clipping, as in
    lm-human-preferences). Returns (masked mean loss, stats).
    """
    loss = (values - returns) ** 2
    if clip_range is not None and clip_range > 0:
        clipped = values_old + torch.clamp(values - values_old, -clip_range, clip_range)
        clipped_loss = (clipped - returns) ** 2
        # a hit only where the move leaves the range: inside it old + (new - old) may differ from new in the
        # last bit, and those ties are not clipping
        clip_hit = ((clipped_loss > loss) & ((values - values_old).abs() > clip_range)).float()
        loss = torch.maximum(loss, clipped_loss)
    else:
        clip_hit = torch.zeros_like(loss)
    with torch.no_grad():
        stats = {"value/loss": masked_mean(0.5 * loss, mask).item(),
                 "value/clipfrac": masked_mean(clip_hit, mask).item(),
                 "value/mean": masked_mean(values, mask).item()}
    return 0.5 * masked_mean(loss, mask), stats


class AdaptiveKLController:
    """beta adapted toward a target KL (Ziegler et al., 2019): beta *= 1 + clip(KL / target - 1, +-0.2) * n / horizon."""

    def __init__(self, init_beta: float, target: float, horizon: int):
        self.value, self.target, self.horizon = init_beta, target, horizon

    def update(self, current_kl: float, n_steps: int) -> float:
        error = max(-0.2, min(0.2, current_kl / self.target - 1))
        self.value *= 1 + error * n_steps / self.horizon
        return self.value

    def state_dict(self) -> dict:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict) -> None:
        self.value, self.target, self.horizon = state["value"], state["target"], state["horizon"]


class FixedKLController:
    """A constant beta, with AdaptiveKLController's interface (no target: nothing adapts)."""

    def __init__(self, beta: float):
        self.value = beta

    def update(self, current_kl: float, n_steps: int) -> float:
        return self.value

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = state["value"]


# ------------------------------------------------------------------------------------------ pomdp

_LOG_2PI = 1.8378770664093453  # log(2 pi)


def discounted_reward_to_go(rewards: torch.Tensor, mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """G_t = sum_{t' >= t} gamma^(t' - t) r_t' within each row: rewards, mask [B, T] (one episode per row,
    padding after its end where mask is 0) -> [B, T], zero on padding.

    No loop over time: one [B, T] x [T, T] product with the upper-triangular matrix gamma^(t' - t).
    """
    T = rewards.shape[1]
    idx = torch.arange(T, device=rewards.device)
    power = (idx.view(1, T) - idx.view(T, 1)).to(torch.float64)  # [T (t'), T (t)]: t' - t ... transposed below
    discount = torch.where(power <= 0, torch.tensor(gamma, dtype=torch.float64) ** (-power),
                           torch.zeros((), dtype=torch.float64))  # [t', t] = gamma^(t' - t) for t' >= t
    m = mask.to(rewards.dtype)
    return ((rewards * m).double() @ discount).to(rewards.dtype) * m


def lambda_advantages(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
                      lam: float) -> torch.Tensor:
    """GAE(lambda) advantages of whole episodes: rewards, values, mask [B, T] (one episode per row, padding after
    its end where mask is 0; the value after an episode's last step is 0) -> [B, T], zero on padding.

        delta_t = r_t + gamma V_{t+1} - V_t,    A_t = sum_{k >= 0} (gamma lam)^k delta_{t+k}

    lam = 1 gives the reward-to-go minus the baseline, G_t - V_t; lam = 0 the one-step delta_t. No loop over
    time: the sum is `discounted_reward_to_go` of the deltas with discount gamma * lam.
    """
    m = mask.to(values.dtype)
    v = values * m
    next_v = torch.cat([v[:, 1:], v.new_zeros(v.shape[0], 1)], dim=1)  # [B, T]: V_{t+1}, 0 after the end
    delta = (rewards + gamma * next_v - v) * m
    return discounted_reward_to_go(delta, mask, gamma * lam)


def n_step_td_targets(rewards: torch.Tensor, next_values: torch.Tensor, terminated: torch.Tensor,
                      mask: torch.Tensor, gamma: float, n: int = 1) -> torch.Tensor:
    """n-step TD targets along sequences, cut at episode ends and at the end of each row's valid steps.

    rewards, next_values, terminated, mask: [B, T]. next_values[:, t] is the bootstrap value of o_{t+1}
    (e.g. max_a Q_target); terminated[:, t] = 1 when step t ended the episode in a terminal state (no
    bootstrap; a time-limit truncation is not terminal). With m = the number of steps taken before an
    episode end, a row's last valid step or n, whichever comes first:

        y_t = sum_{k < m} gamma^k r_{t+k} + gamma^m (1 - terminated_{t+m-1}) next_values_{t+m-1}

    Returns [B, T], zero where mask is 0. n = 1 is the one-step target r_t + gamma (1 - d_t) V(o_{t+1}).
    The loop runs over k < n, not over time.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    B, T = rewards.shape
    m = mask.to(rewards.dtype)
    d = terminated.to(rewards.dtype)

    def ahead(x: torch.Tensor, k: int) -> torch.Tensor:  # x[:, t + k], zero past the end
        return torch.cat([x[:, k:], x.new_zeros(B, min(k, T))], dim=1)

    target = torch.zeros_like(rewards)
    going = m.clone()  # 1 while steps t..t+k-1 were valid and none ended the episode
    for k in range(n):
        m_k, d_k, m_next = ahead(m, k), ahead(d, k), ahead(m, k + 1)
        target = target + going * m_k * gamma**k * ahead(rewards, k)
        stop = going * m_k * (torch.ones_like(m_k) if k == n - 1 else torch.maximum(d_k, 1 - m_next))
        target = target + stop * gamma ** (k + 1) * (1 - d_k) * ahead(next_values, k)
        going = going * m_k * (1 - stop)
    return target * m


def diagonal_gaussian_kl(mu_q: torch.Tensor, logvar_q: torch.Tensor, mu_p: torch.Tensor,
                         logvar_p: torch.Tensor) -> torch.Tensor:
    """KL(N(mu_q, exp(logvar_q)) || N(mu_p, exp(logvar_p))) for diagonal Gaussians, summed over the last
    dimension: [..., Z] -> [...]."""
    return 0.5 * (logvar_p - logvar_q + (logvar_q.exp() + (mu_q - mu_p) ** 2) / logvar_p.exp() - 1).sum(-1)


def diagonal_gaussian_log_prob(x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(x; mu, exp(logvar)) for a diagonal Gaussian, summed over the last dimension: [..., D] -> [...]."""
    return -0.5 * (_LOG_2PI + logvar + (x - mu) ** 2 / logvar.exp()).sum(-1)


def sequence_elbo(log_likelihood: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor,
                  beta: float = 1.0) -> torch.Tensor:
    """Per-step evidence lower bound of a sequential latent-variable model, averaged over valid steps:
    mean over mask of (log p(x_t | z_t) - beta * KL(q(z_t | history) || p(z_t | z_{t-1}, a_{t-1}))).
    log_likelihood, kl, mask: [B, T] -> scalar (maximise it; beta = 1 is the ELBO proper)."""
    return masked_mean(log_likelihood - beta * kl, mask)


def double_q_values(q_online_next: torch.Tensor, q_target_next: torch.Tensor) -> torch.Tensor:
    """Double-DQN bootstrap values (van Hasselt et al., 2016): the online network picks the next action, the
    target network values it, V(o') = Q_target(o', argmax_a Q_online(o', a)).
    q_online_next, q_target_next: [..., A] -> [...]. Ties go to the lowest action index (torch.argmax)."""
    a_next = q_online_next.argmax(-1, keepdim=True)
    return q_target_next.gather(-1, a_next).squeeze(-1)


# ---- dt (Decision Transformer) ----


def returns_to_go(rewards: torch.Tensor) -> torch.Tensor:
    """Undiscounted return-to-go R_t = sum_{t' >= t} r_t' along the last dimension, as the Decision Transformer
    (Chen et al., 2021) conditions on it: R_0 is the episode's return, R_{T-1} its last reward.

    rewards: [..., T], every entry a real step of one episode (no padding) -> [..., T], same dtype. No
    bootstrapping: the sum stops at the end of the given rewards.
    """
    return rewards.flip(-1).cumsum(-1).flip(-1)


def dt_action_loss(preds: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, discrete: bool) -> torch.Tensor:
    """Action-prediction loss of a Decision Transformer (or behaviour cloning) over the real steps of a window.

    discrete: preds are logits [B, K, A], targets action ids [B, K] (long); loss = masked mean cross-entropy.
    continuous: preds and targets [B, K, A]; loss = masked mean over steps of the squared error averaged over
    the A action dimensions (the DT paper's MSE). mask: [B, K], 1 on real steps, 0 on padding. Returns a scalar.
    """
    if discrete:
        per_step = F.cross_entropy(preds.float().transpose(1, 2), targets.long(), reduction="none")  # [B, K]
    else:
        per_step = ((preds.float() - targets.float()) ** 2).mean(-1)  # [B, K]
    return masked_mean(per_step, mask)


# ---- dialogue (multi-step offline RL: rlhf/dialogue) ----


def expectile_loss(diff: torch.Tensor, tau: float) -> torch.Tensor:
    """Asymmetric squared loss |tau - 1(diff < 0)| * diff^2 with diff = target - prediction, elementwise
    [*] -> [*]. Minimised over a constant prediction it gives the tau-expectile of the targets: tau = 0.5 is
    the mean, tau -> 1 the maximum (IQL, Kostrikov et al., 2021; ILQL's V loss, Snell et al., 2022)."""
    weight = torch.where(diff < 0, 1.0 - tau, tau)
    return weight * diff**2


def cql_term(q_all: torch.Tensor, q_taken: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Conservative Q-learning penalty logsumexp_a Q(s, a) - Q(s, a_data) (CQL(H), Kumar et al., 2020).

    q_all: [N, A] over the action set (the vocabulary per token, or k sampled candidate utterances);
    q_taken: [N] at the logged action; valid: optional [N, A] bool, False on padded candidates.
    Returns [N] (>= 0 when the logged action is in the set): pushes down unseen actions, up the logged one.
    """
    if valid is not None:
        q_all = q_all.masked_fill(~valid.bool(), float("-inf"))
    return torch.logsumexp(q_all, dim=-1) - q_taken


def next_action_index(action_mask: torch.Tensor) -> torch.Tensor:
    """For each position t of action_mask [B, T] (1 where the token is an agent action), the index of the
    next action position after t, or T if there is none (the episode ends after t). [B, T] long."""
    B, T = action_mask.shape
    out = torch.full((B, T), T, dtype=torch.long, device=action_mask.device)
    nxt = torch.full((B,), T, dtype=torch.long, device=action_mask.device)
    for t in reversed(range(T)):
        out[:, t] = nxt
        nxt = torch.where(action_mask[:, t].bool(), torch.full_like(nxt, t), nxt)
    return out


def next_state_values(values: torch.Tensor, action_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """V(s') for every action position: values [B, T] of the state before each position's token -> the
    value at the next action position (0 after the episode's last action), and done [B, T] (1.0 where no
    action follows). Environment tokens in between belong to the transition, not to a state."""
    idx = next_action_index(action_mask)  # [B, T]
    T = values.shape[1]
    done = (idx == T).to(values.dtype)
    gathered = torch.gather(values, 1, idx.clamp(max=T - 1))
    return gathered * (1 - done), done


def bellman_targets(rewards: torch.Tensor, next_values: torch.Tensor, dones: torch.Tensor,
                    gamma: torch.Tensor | float) -> torch.Tensor:
    """One-step targets r + gamma * (1 - done) * V(s'); all [B, T] (gamma a scalar or [B, T])."""
    return rewards + gamma * (1 - dones) * next_values


def place_utterance_rewards(utt_rewards: torch.Tensor, utt_last: torch.Tensor, utt_mask: torch.Tensor,
                            n_tokens: int) -> torch.Tensor:
    """Per-token reward placement: each utterance's reward on its last token, 0 on every other token.
    utt_rewards, utt_last (token index of each utterance's last token), utt_mask: [B, U] -> [B, T_tokens]."""
    out = torch.zeros(utt_rewards.shape[0], n_tokens, dtype=utt_rewards.dtype, device=utt_rewards.device)
    return out.scatter_add(1, utt_last * utt_mask.long(), utt_rewards * utt_mask.to(utt_rewards.dtype))


def token_discounts(utt_last: torch.Tensor, utt_mask: torch.Tensor, n_tokens: int, gamma: float) -> torch.Tensor:
    """Per-token discounts [B, T_tokens]: gamma on each utterance's last token (the step to the next
    utterance), 1 inside an utterance, so that chaining the token targets of one utterance gives the
    utterance-level target r_u + gamma V(next utterance state). utt_last, utt_mask: [B, U]."""
    out = torch.ones(utt_last.shape[0], n_tokens, device=utt_last.device)
    src = torch.full(utt_last.shape, float(gamma), device=utt_last.device)
    keep = utt_mask.bool()
    rows = torch.arange(utt_last.shape[0], device=utt_last.device)[:, None].expand_as(utt_last)
    out[rows[keep], utt_last[keep]] = src[keep]
    return out


def discounted_returns(rewards: torch.Tensor, mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """Monte-Carlo return-to-go sum_k gamma^k r_{t+k} over each row's steps: rewards, mask [B, U] -> [B, U]
    (GAE with lambda = 1 and zero values)."""
    returns, _ = gae(rewards, torch.zeros_like(rewards), mask, gamma, 1.0)
    return returns


def perturbed_logits(bc_logits: torch.Tensor, q: torch.Tensor, v: torch.Tensor, beta: float) -> torch.Tensor:
    """ILQL's acting distribution: log pi_bc(a|s) + beta * (Q(s, a) - V(s)) (Snell et al., 2022), as
    unnormalised logits. bc_logits, q: [B, V]; v: [B] or [B, 1]. beta = 0 gives the BC policy back."""
    if v.dim() == bc_logits.dim() - 1:
        v = v.unsqueeze(-1)
    return torch.log_softmax(bc_logits.float(), dim=-1) + beta * (q - v)


def top_p_support(logp: torch.Tensor, top_p: float) -> torch.Tensor:
    """The nucleus of a distribution (`rlhf.sampling.nucleus`): log-probs [B, V] -> bool [B, V], True on the
    smallest set of most likely tokens whose probabilities sum to at least `top_p` (the most likely token
    always kept; ties broken by index). top_p >= 1 keeps every token."""
    if top_p >= 1.0:
        return torch.ones_like(logp, dtype=torch.bool)
    return nucleus(torch.softmax(logp.float(), dim=-1), top_p, rank_by=logp)  # ranked by the log-probs


def ilql_acting_logits(bc_logits: torch.Tensor, q: torch.Tensor, v: torch.Tensor, beta: float,
                       top_p: float = 1.0, adv_clip: float | None = None) -> torch.Tensor:
    """ILQL's acting distribution held to the behaviour policy's support: log pi_bc(a|s) + beta * A(s, a)
    with A = Q - V clamped to [-adv_clip, adv_clip] when given, and -inf outside the top-p nucleus of
    pi_bc (so the perturbation reweights tokens the behaviour policy would say, never revives one it would
    not). bc_logits, q: [B, V]; v: [B] or [B, 1] -> [B, V]. top_p = 1 and no clip: `perturbed_logits`."""
    if v.dim() == bc_logits.dim() - 1:
        v = v.unsqueeze(-1)
    logp = torch.log_softmax(bc_logits.float(), dim=-1)
    adv = q - v
    if adv_clip is not None:
        adv = adv.clamp(-adv_clip, adv_clip)
    return (logp + beta * adv).masked_fill(~top_p_support(logp, top_p), float("-inf"))


def action_run_end(action_mask: torch.Tensor) -> torch.Tensor:
    """For each position t of action_mask [B, T] (1 where the token is an agent action), the index of the last
    position of the run of consecutive actions that holds t (an utterance's last token: its end-of-line); t
    itself where action_mask is 0. [B, T] long. Used to bootstrap every token of an utterance from the state
    after the environment's reply (`next_action_index` at the run's end) rather than from the next token."""
    B, T = action_mask.shape
    out = torch.arange(T, device=action_mask.device).repeat(B, 1)
    on = action_mask.bool()
    for t in reversed(range(T - 1)):
        out[:, t] = torch.where(on[:, t] & on[:, t + 1], out[:, t + 1], out[:, t])
    return out
