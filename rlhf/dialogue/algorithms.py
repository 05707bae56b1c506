"""Offline learners on logged dialogues. Each owns its loop and calls the pure math in rlhf/losses.py.

- `train_bc`: behaviour cloning, next-token likelihood of the agent's tokens (filtered BC: the same on the
  top fraction of trajectories by return, see `rlhf.dialogue.data.top_fraction`).
- `train_ilql`: per-token implicit language Q-learning (Snell et al., 2022): one time step per token; Q of a
  token regressed onto r + gamma V(s') (V detached), s' the next token's state, or onto its utterance's
  lambda-return with lambda < 1 (V read at the state after each reply); V regressed by expectile onto a
  Polyak-averaged target network's Q; a CQL term over the vocabulary.
- `train_mc_iql`: the same heads, loss and acting with no bootstrap: Q of a token regressed onto its
  utterance's Monte-Carlo return-to-go (expectile Q with Monte-Carlo returns, "MC-IQL"; the lambda-return
  at lambda 1).
- `train_utterance_q`: per-utterance Q over candidate utterances; mode "chai" (Bellman targets with the max
  over candidates sampled from a fixed LM, a CQL term over those candidates; Verma et al., 2022) or "mc"
  (regression onto Monte-Carlo returns-to-go).
"""

from __future__ import annotations

import copy
import random
import time
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from rlhf.dialogue.data import Encoder, TokenBatch, transitions
from rlhf.dialogue.models import (
    ValueHeads,
    build_lm,
    lm_features,
    polyak_update,
    sample_utterances,
    utterance_features,
)
from rlhf.losses import (
    IGNORE_INDEX,
    action_run_end,
    bellman_targets,
    cql_term,
    expectile_loss,
    gae,
    next_action_index,
    place_utterance_rewards,
    token_discounts,
    token_nll_sum,
)


@dataclass
class TrainStats:
    """Compute and the last logged losses of one training run."""

    steps: int = 0
    seconds: float = 0.0
    parameters: int = 0
    extra_seconds: float = 0.0  # work outside the optimiser steps (candidate sampling for CHAI)
    log: list = field(default_factory=list)


def _batches(n: int, batch_size: int, steps: int, seed: int):
    """Indices for `steps` batches: shuffled passes over range(n), reproducible from `seed`."""
    rng = random.Random(seed)
    order: list[int] = []
    for _ in range(steps):
        while len(order) < batch_size:
            perm = list(range(n))
            rng.shuffle(perm)
            order += perm
        yield order[:batch_size]
        order = order[batch_size:]


def _optimizer(model, lr: float):
    return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)


# ------------------------------------------------------------------------------------------------ BC


def train_bc(records: list[dict], tokenizer, *, hidden: int, layers: int, steps: int, batch_size: int,
             lr: float, seed: int, desc: str = "bc", log_every: int = 50, env_tokens: bool = True):
    """Next-token likelihood of the dialogue. The policy is the LM's distribution over the agent's tokens;
    with `env_tokens` the environment's replies are predicted too (a model of the dialogue, whose hidden
    state after an utterance anticipates the reply; the value heads read it), else they are context only."""
    enc = Encoder(tokenizer)
    model = build_lm(tokenizer, hidden, layers, seed)
    opt = _optimizer(model, lr)
    stats = TrainStats(parameters=sum(p.numel() for p in model.parameters()))
    start = time.time()
    for step, idx in enumerate(tqdm(_batches(len(records), batch_size, steps, seed), total=steps, desc=desc,
                                    leave=False), 1):
        b = enc.batch([records[i] for i in idx])
        keep = b.attention_mask if env_tokens else b.action_mask
        labels = b.tokens.masked_fill(keep == 0, IGNORE_INDEX)  # [B, T]
        logits = model(input_ids=b.tokens, attention_mask=b.attention_mask).logits
        nll, count = token_nll_sum(logits, labels)
        loss = nll / count
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % log_every == 0 or step == steps:
            stats.log.append({"step": step, "bc/nll": loss.item()})
    stats.steps, stats.seconds = steps, time.time() - start
    return model.eval(), stats


# ---------------------------------------------------------------------------------------------- ILQL


def _agent_tokens(b) -> tuple[torch.Tensor, torch.Tensor]:
    """(acts, starts) [B, T-1] of a TokenBatch: acts 1 where token t+1 is the agent's, starts True where it
    is an utterance's first token."""
    acts = b.action_mask[:, 1:] * b.attention_mask[:, 1:]
    return acts, acts.bool() & ~torch.nn.functional.pad(acts, (1, 0))[:, :-1].bool()


def token_transitions(b, gamma: float, bootstrap: str = "token") -> dict[str, torch.Tensor]:
    """Every agent token of a TokenBatch as one ILQL transition, flat [N_tokens] tensors:

    row, col: where its state's hidden state is (the position before the token); action: the token;
    reward: the utterance's reward on its last token, else 0; gamma: the discount to the next action (gamma
    between utterances, 1 inside one); next_col: the next agent token's state position; done: 1.0 after the
    episode's last token. Environment tokens are part of the transition, not states.

    bootstrap "utterance": every token of an utterance gets the transition of the utterance's last token
    (the utterance's reward, gamma, the state after the environment's reply, done): the Q of a token is the
    value of finishing the utterance as logged, so that values propagate through one bootstrap per turn
    instead of one per token.
    """
    if bootstrap not in ("token", "utterance"):
        raise ValueError(f"unknown bootstrap '{bootstrap}' (token or utterance)")
    T = b.tokens.shape[1]
    acts, starts = _agent_tokens(b)
    rewards = place_utterance_rewards(b.utt_rewards, b.utt_last, b.utt_mask, T)[:, 1:]  # [B, T-1]
    gammas = token_discounts(b.utt_last, b.utt_mask, T, gamma)[:, 1:]  # [B, T-1]
    nxt = next_action_index(acts)  # [B, T-1]; T-1 where none follows
    row, col = acts.nonzero(as_tuple=True)
    end = action_run_end(acts)[row, col] if bootstrap == "utterance" else col
    return {"row": row, "col": col, "action": b.tokens[row, col + 1], "reward": rewards[row, end],
            "gamma": gammas[row, end], "next_col": nxt[row, end].clamp(max=T - 2),
            "done": (nxt[row, end] == T - 1).float(), "utt": (starts.cumsum(1) - 1)[row, col]}


def utterance_start_cols(b) -> torch.Tensor:
    """[B, U] long: for each utterance of a TokenBatch, the position of its state (the one before its first
    token: the intro's or the previous reply's end-of-line); 0 where utt_mask is 0."""
    _, starts = _agent_tokens(b)
    out = torch.zeros(b.utt_mask.shape, dtype=torch.long)
    row, col = starts.nonzero(as_tuple=True)
    out[row, (starts.cumsum(1) - 1)[row, col]] = col
    return out


def utterance_lambda_targets(b, v_start: torch.Tensor, gamma: float, lam: float) -> torch.Tensor:
    """lambda-returns per utterance, [B, U]: G_u = r_u + gamma ((1 - lam) V(s_{u+1}) + lam G_{u+1}), 0 after
    the episode's last utterance (GAE's returns with the values V(s_u) at the utterances' states, v_start
    [B, U]). lam 0: r_u + gamma V(s_{u+1}); lam 1: the Monte-Carlo return-to-go."""
    return gae(b.utt_rewards, v_start, b.utt_mask, gamma, lam)[1]


@torch.no_grad()
def token_q_targets(b, tr: dict, v_at, gamma: float, lam: float,
                    start_cols: torch.Tensor | None = None) -> torch.Tensor:
    """Q targets [N] of the token transitions `tr` (`token_transitions` of the TokenBatch b), with
    v_at(rows, cols) the V heads' values at b's hidden states [rows, cols] (never differentiated) and
    `start_cols` b's `utterance_start_cols` [B, U] where already computed:

    - lam 0: ILQL's one-step target r + gamma_t V(s') (Snell et al., 2022), 0 bootstrap after the episode's
      last token; s' is the next token's state (bootstrap "token") or the state after the reply to the
      token's utterance (bootstrap "utterance");
    - 0 < lam < 1: the utterance's lambda-return G_u = r_u + gamma ((1 - lam) V(s_{u+1}) + lam G_{u+1});
    - lam 1: the utterance's Monte-Carlo return-to-go (MC-IQL's target), which reads no V at all.
    """
    if lam == 0:
        return bellman_targets(tr["reward"], v_at(tr["row"], tr["next_col"]), tr["done"], tr["gamma"])
    rows, inv = tr["row"].unique(return_inverse=True)
    cols = (utterance_start_cols(b) if start_cols is None else start_cols)[rows]  # [R, U]
    # lam 1 weighs V by 0: read none (GAE's returns with V = 0 are the returns-to-go exactly, no rounding of V)
    v_start = torch.zeros(cols.shape) if lam == 1 else v_at(rows[:, None], cols)  # [R, U]
    return utterance_lambda_targets(b.select(rows), v_start, gamma, lam)[inv, tr["utt"]]


def ilql_losses(heads: ValueHeads, target: ValueHeads, h: torch.Tensor, h_next: torch.Tensor, tr: dict, *,
                tau: float, cql_weight: float, h_target: torch.Tensor | None = None,
                y: torch.Tensor | None = None):
    """ILQL losses (Snell et al., 2022) on a batch of token transitions: states h [B, d], next states
    h_next [B, d] (hidden states), and the flat fields of `token_transitions` [B]; `h_target` [B, d]: the
    states as the target network sees them (its own trunk's; default h); `y` [B]: Q targets given (lambda-
    returns) instead of step 2's:

        1. Q(s, a) from the q head for the logged token, V(s) from the v head;
        2. Q target r + gamma_t V(s') (V detached; 0 after the episode's last token), gamma_t = gamma at an
           utterance's last token and 1 inside an utterance;
        3. V regressed to the target heads' Q(s, a) with the expectile loss (tau);
        4. CQL over the vocabulary: logsumexp_a Q(s, a) - Q(s, a_logged).
    """
    q_all = heads.q_values(h)  # [B, V]
    q = q_all.gather(-1, tr["action"][:, None]).squeeze(-1)  # [B]
    v = heads.v_values(h)  # [B]
    with torch.no_grad():
        h_t = h if h_target is None else h_target
        q_target = target.q_values(h_t).gather(-1, tr["action"][:, None]).squeeze(-1)
        if y is None:
            y = bellman_targets(tr["reward"], heads.v_values(h_next), tr["done"], tr["gamma"])
    q_loss = ((q - y) ** 2).mean()
    v_loss = expectile_loss(q_target - v, tau).mean()
    cql = cql_term(q_all, q).mean()
    loss = q_loss + v_loss + cql_weight * cql
    stats = {"ilql/q_loss": q_loss.item(), "ilql/v_loss": v_loss.item(), "ilql/cql": cql.item(),
             "ilql/q_mean": q.mean().item(), "ilql/v_mean": v.mean().item()}
    return loss, stats


def train_ilql(records: list[dict], tokenizer, lm, *, steps: int, batch_size: int, lr: float, seed: int,
               gamma: float, tau: float, cql_weight: float, polyak: float, width: int = 256,
               trunk_layers: int = 0, trunk_batch_size: int = 16, bootstrap: str = "token",
               lam: float = 0.0, log_every: int = 100):
    """ILQL heads for the frozen LM `lm` (the behaviour-cloned policy whose logits the agent perturbs).

    trunk_layers 0: the heads read `lm`'s hidden states, computed once; a batch is `batch_size` agent tokens
    drawn from the whole data set. trunk_layers n > 0: the heads read a copy of `lm`'s trunk whose top n
    layers train with them (`ValueHeads.with_trunk`; the target network is a soft copy of trunk and heads);
    a batch is `trunk_batch_size` whole trajectories, every agent token of them a transition. `bootstrap`:
    see `token_transitions`; with "utterance", 0 < `lam` < 1 regresses Q onto the utterance-level
    lambda-returns (`token_q_targets`). ILQL bootstraps through V(s'): lam 1 (Monte-Carlo returns, no
    bootstrap) is `train_mc_iql`."""
    if bootstrap == "token" and lam:
        raise ValueError("lam applies to bootstrap 'utterance' only")
    if not 0 <= lam < 1:
        raise ValueError(f"ILQL bootstraps through V(s'): lam must be in [0, 1), got {lam} (lam 1, Monte-Carlo "
                         "returns with no bootstrap, is train_mc_iql)")
    return _train_token_heads(records, tokenizer, lm, "ilql", steps=steps, batch_size=batch_size, lr=lr,
                              seed=seed, gamma=gamma, tau=tau, cql_weight=cql_weight, polyak=polyak, width=width,
                              trunk_layers=trunk_layers, trunk_batch_size=trunk_batch_size, bootstrap=bootstrap,
                              lam=lam, log_every=log_every)


def train_mc_iql(records: list[dict], tokenizer, lm, *, steps: int, batch_size: int, lr: float, seed: int,
                 gamma: float, tau: float, cql_weight: float, polyak: float, width: int = 256,
                 trunk_layers: int = 0, trunk_batch_size: int = 16, log_every: int = 100):
    """MC-IQL heads for the frozen LM `lm`: ILQL's heads, V loss (expectile onto the Polyak target's Q), CQL
    term and acting, but Q of every token regressed onto its utterance's Monte-Carlo return-to-go, with no
    bootstrap through V (`token_q_targets` at lam 1). Arguments as `train_ilql`'s."""
    return _train_token_heads(records, tokenizer, lm, "mc_iql", steps=steps, batch_size=batch_size, lr=lr,
                              seed=seed, gamma=gamma, tau=tau, cql_weight=cql_weight, polyak=polyak, width=width,
                              trunk_layers=trunk_layers, trunk_batch_size=trunk_batch_size, bootstrap="utterance",
                              lam=1.0, log_every=log_every)


def _train_token_heads(records: list[dict], tokenizer, lm, name: str, *, steps: int, batch_size: int, lr: float,
                       seed: int, gamma: float, tau: float, cql_weight: float, polyak: float, width: int,
                       trunk_layers: int, trunk_batch_size: int, bootstrap: str, lam: float, log_every: int):
    """The loop of `train_ilql` and `train_mc_iql`, which differ only in the Q targets (`token_q_targets`)."""
    enc = Encoder(tokenizer)
    stats = TrainStats()
    t0 = time.time()
    data = enc.batch(records)  # [N, T] for the whole data set
    if trunk_layers:
        heads = ValueHeads.with_trunk(lm, trunk_layers, width, seed)
        hidden = None
    else:
        hidden = lm_features(lm, data.tokens, data.attention_mask)  # [N, T, d], once
        tr_all = token_transitions(data, gamma, bootstrap)
        start_cols = utterance_start_cols(data)  # [N, U]
        heads = ValueHeads("token", hidden.shape[-1], len(tokenizer), width, seed)
    stats.extra_seconds = time.time() - t0
    target = copy.deepcopy(heads).requires_grad_(False)
    params = [p for p in heads.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    stats.parameters = sum(p.numel() for p in params)
    start = time.time()
    if trunk_layers:
        n, size = len(records), trunk_batch_size
    else:
        n, size = len(tr_all["row"]), batch_size
    for step, idx in enumerate(tqdm(_batches(n, size, steps, seed), total=steps, desc=name, leave=False), 1):
        idx = torch.tensor(idx)
        if trunk_layers:
            b = data.select(idx)
            T = int(b.attention_mask.sum(1).max())  # drop the columns that are padding in every row
            b = TokenBatch(b.tokens[:, :T], b.attention_mask[:, :T], b.action_mask[:, :T], b.utt_rewards,
                           b.utt_mask, b.utt_last)
            sub = token_transitions(b, gamma, bootstrap)
            hid = heads.features(b.tokens, b.attention_mask)  # [B, T, d], with gradients into the top layers
            with torch.no_grad():
                hid_t = target.features(b.tokens, b.attention_mask)
            h, h_next = hid[sub["row"], sub["col"]], hid[sub["row"], sub["next_col"]].detach()
            h_target = hid_t[sub["row"], sub["col"]]
            y = token_q_targets(b, sub, lambda r, c: heads.v_values(hid.detach()[r, c]), gamma, lam)
        else:
            sub = {k: v[idx] for k, v in tr_all.items()}
            h, h_next = hidden[sub["row"], sub["col"]], hidden[sub["row"], sub["next_col"]]
            h_target = None
            y = token_q_targets(data, sub, lambda r, c: heads.v_values(hidden[r, c]), gamma, lam, start_cols)
        loss, s = ilql_losses(heads, target, h, h_next, sub, tau=tau, cql_weight=cql_weight, h_target=h_target,
                              y=y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if trunk_layers:
            torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        polyak_update(target, heads, polyak)
        if step % log_every == 0 or step == steps:  # namespaced by the method: ilql/q_loss, mc_iql/q_loss, ...
            stats.log.append({"step": step, **{f"{name}/{k.split('/', 1)[1]}": v for k, v in s.items()}})
    stats.steps, stats.seconds = steps, time.time() - start
    return heads.eval(), stats


# ------------------------------------------------------------------------------- utterance-level Q


def candidate_sets(lm, enc: Encoder, states: list[tuple], k: int, seed: int,
                   batch_size: int = 256) -> dict[tuple, list[str]]:
    """k utterances sampled from the fixed LM at each distinct state (intro, turns), deduplicated."""
    gen = torch.Generator().manual_seed(seed)
    distinct = sorted(set(states), key=repr)
    out: dict[tuple, list[str]] = {}
    for i in tqdm(range(0, len(distinct), batch_size), desc="candidates", leave=False):
        chunk = distinct[i:i + batch_size]
        hists = [enc.history(intro, list(turns)) for intro, turns in chunk for _ in range(k)]
        texts = sample_utterances(lm, enc, hists, generator=gen)
        for j, state in enumerate(chunk):
            out[state] = sorted(set(texts[j * k:(j + 1) * k]))
    return out


def train_utterance_q(records: list[dict], tokenizer, lm, *, mode: str, steps: int, batch_size: int, lr: float,
                      seed: int, gamma: float, cql_weight: float = 0.0, polyak: float = 0.005,
                      num_candidates: int = 4, width: int = 256, log_every: int = 100):
    """Q(history, utterance) heads on the frozen LM's features. mode "mc": regression onto returns-to-go;
    mode "chai": onto r + gamma max_{c ~ LM(s')} Q_target(s', c) (0 when done), plus a CQL term over the
    candidates sampled at s and the logged utterance."""
    if mode not in ("mc", "chai"):
        raise ValueError(f"unknown utterance-level mode '{mode}'")
    enc = Encoder(tokenizer)
    data = transitions(records, gamma)
    stats = TrainStats()
    t0 = time.time()
    x_data = utterance_features(lm, enc, [enc.history(t.intro, list(t.turns)) for t in data],
                                [t.utterance for t in data])  # [M, d]
    rewards = torch.tensor([t.reward for t in data])
    done = torch.tensor([float(t.done) for t in data])
    rtg = torch.tensor([t.return_to_go for t in data])
    if mode == "chai":
        # 1. candidates from the fixed LM at every state and next state, and their features, once
        states = sorted({(t.intro, t.turns) for t in data} | {(t.intro, t.next_turns) for t in data if not t.done},
                        key=repr)
        sid = {s: i for i, s in enumerate(states)}
        cands = candidate_sets(lm, enc, states, num_candidates, seed)
        width_k = max(len(c) for c in cands.values())
        flat_h, flat_u, cand_idx = [], [], torch.zeros(len(states), width_k, dtype=torch.long)
        valid = torch.zeros(len(states), width_k, dtype=torch.bool)
        for i, s in enumerate(states):
            h = enc.history(s[0], list(s[1]))
            for j, c in enumerate(cands[s]):
                cand_idx[i, j] = len(flat_u)
                valid[i, j] = True
                flat_h.append(h)
                flat_u.append(c)
            cand_idx[i, len(cands[s]):] = cand_idx[i, 0]
        x_cand = utterance_features(lm, enc, flat_h, flat_u)  # [P, d]
        cur = torch.tensor([sid[(t.intro, t.turns)] for t in data])
        nxt = torch.tensor([sid[(t.intro, t.next_turns)] if not t.done else 0 for t in data])
    stats.extra_seconds = time.time() - t0
    heads = ValueHeads("utterance", x_data.shape[-1], len(tokenizer), width, seed)
    target = copy.deepcopy(heads).requires_grad_(False)
    opt = _optimizer(heads, lr)
    stats.parameters = sum(p.numel() for p in heads.parameters())
    start = time.time()
    for step, idx in enumerate(tqdm(_batches(len(data), batch_size, steps, seed), total=steps, desc=mode,
                                    leave=False), 1):
        idx = torch.tensor(idx)
        q = heads.q_values(x_data[idx])  # [B]
        if mode == "mc":
            loss = ((q - rtg[idx]) ** 2).mean()
            s = {"mc/loss": loss.item(), "mc/q_mean": q.mean().item()}
        else:
            # 2. conservative term over the candidates at s and the logged utterance
            c = cand_idx[cur[idx]]  # [B, k]
            q_all = torch.cat([heads.q_values(x_cand[c]), q[:, None]], dim=1)  # [B, k + 1]
            ok = torch.cat([valid[cur[idx]], torch.ones(len(idx), 1, dtype=torch.bool)], dim=1)
            cql = cql_term(q_all, q, ok).mean()
            # 3. target r + gamma max over the candidates at s' from the target heads (0 when done)
            with torch.no_grad():
                n = cand_idx[nxt[idx]]
                q_n = target.q_values(x_cand[n]).masked_fill(~valid[nxt[idx]], float("-inf"))
                v_next = q_n.max(dim=1).values.masked_fill(done[idx].bool(), 0.0)
                y = bellman_targets(rewards[idx], v_next, done[idx], gamma)
            td = ((q - y) ** 2).mean()
            loss = td + cql_weight * cql
            s = {"chai/td": td.item(), "chai/cql": cql.item(), "chai/q_mean": q.mean().item()}
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if mode == "chai":
            polyak_update(target, heads, polyak)
        if step % log_every == 0 or step == steps:
            stats.log.append({"step": step, **s})
    stats.steps, stats.seconds = steps, time.time() - start
    return heads.eval(), stats
