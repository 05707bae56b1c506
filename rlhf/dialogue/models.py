"""Models for dialogue RL: a small causal LM (behaviour cloning), value models with Q/V heads on a small
transformer trunk, KV-cached utterance sampling (optionally ILQL-perturbed) and utterance scoring.

All models are built from a config (`rlhf.models.build_tiny_model`: a Llama of `layers` x `hidden`) with the
toolkit's byte-level tokenizer; nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from rlhf.losses import ilql_acting_logits, last_token_index, top_p_support
from rlhf.models import build_tiny_tokenizer


def build_lm(tokenizer, hidden: int, layers: int, seed: int):
    """A causal Llama of `layers` x `hidden` (4 heads, MLP 2 x hidden, tied embeddings) built from a config,
    initialised from `seed` without touching the global RNG (the toolkit's tiny-llama at hidden 64)."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


class ValueHeads(nn.Module):
    """Value heads on the hidden states of a language model (the behaviour-cloned LM, frozen).

    kind "token" (ILQL): q [hidden -> vocab] gives Q(s, a) for every next token a, v [hidden -> 1] gives V(s);
    the state of a token is the hidden state at the position before it. kind "utterance" (CHAI-style, MC):
    q [hidden -> 1] on `utterance_features` (the end-of-line hidden state of history + utterance and the
    utterance's log-likelihood under the LM, so `hidden` is the LM width + 2) gives Q(history, utterance).
    Each head is a two-layer MLP.

    Without a trunk the heads read the frozen LM's own hidden states (computed once per data set, so training
    costs little). With one (`with_trunk`, token kind only) they read the hidden states of their own copy of
    the LM's trunk, whose top `trunk_layers` layers train with the heads (ILQL as in Snell et al., 2022, where
    the transformer learns with its value heads) while the LM that proposes tokens stays as it was.
    """

    def __init__(self, kind: str, hidden: int = 64, vocab: int = 258, width: int = 256, seed: int = 0,
                 trunk_config: dict | None = None, trunk_layers: int = 0):
        super().__init__()
        if kind not in ("token", "utterance"):
            raise ValueError(f"unknown value head kind '{kind}'")
        if trunk_config is not None and kind != "token":
            raise ValueError("only token-level (ILQL) heads take a trunk of their own")
        self.spec = {"kind": kind, "hidden": hidden, "vocab": vocab, "width": width, "seed": seed}
        if trunk_config is not None:
            self.spec.update(trunk_config=trunk_config, trunk_layers=trunk_layers)

        def mlp(out: int) -> nn.Sequential:
            return nn.Sequential(nn.Linear(hidden, width), nn.GELU(), nn.Linear(width, out))

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.q = mlp(vocab if kind == "token" else 1)
            self.v = mlp(1) if kind == "token" else None
        self.trunk = None
        if trunk_config is not None:
            from transformers import LlamaConfig, LlamaModel

            self.trunk = LlamaModel(LlamaConfig(**trunk_config))
            self._freeze_below(trunk_layers)

    @classmethod
    def with_trunk(cls, lm, trunk_layers: int, width: int = 256, seed: int = 0) -> "ValueHeads":
        """Token heads on a copy of `lm`'s trunk (weights included) whose top `trunk_layers` layers (and final
        norm) are trainable; the embeddings and the layers below stay frozen."""
        n = lm.config.num_hidden_layers
        if not 1 <= trunk_layers <= n:
            raise ValueError(f"trunk_layers must be in 1..{n} (the LM's layers), got {trunk_layers}")
        heads = cls("token", lm.config.hidden_size, lm.config.vocab_size, width, seed,
                    trunk_config=lm.config.to_dict(), trunk_layers=trunk_layers)
        heads.trunk.load_state_dict(lm.model.state_dict())
        heads._freeze_below(trunk_layers)
        return heads

    def _freeze_below(self, trunk_layers: int) -> None:
        self.trunk.requires_grad_(False)
        for layer in self.trunk.layers[len(self.trunk.layers) - trunk_layers:]:
            layer.requires_grad_(True)
        self.trunk.norm.requires_grad_(True)

    def features(self, ids: torch.Tensor, mask: torch.Tensor, batch_size: int = 128) -> torch.Tensor:
        """The heads' own trunk's last hidden states: ids, mask [N, T] (right-padded) -> [N, T, d]."""
        out = []
        for i in range(0, len(ids), batch_size):
            m = mask[i:i + batch_size]
            pos = (m.cumsum(1) - 1).clamp(min=0)
            out.append(self.trunk(input_ids=ids[i:i + batch_size], attention_mask=m,
                                  position_ids=pos).last_hidden_state)
        return torch.cat(out)

    def q_values(self, h: torch.Tensor) -> torch.Tensor:
        """[..., hidden] -> [..., vocab] (token) or [...] (utterance)."""
        q = self.q(h)
        return q if self.spec["kind"] == "token" else q.squeeze(-1)

    def v_values(self, h: torch.Tensor) -> torch.Tensor:
        return self.v(h).squeeze(-1)

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        torch.save(self.state_dict(), directory / "value_heads.pt")
        (directory / "value_heads.json").write_text(json.dumps(self.spec) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> "ValueHeads":
        directory = Path(directory)
        if not (directory / "value_heads.json").is_file():
            raise FileNotFoundError(f"{directory} holds no value heads (value_heads.json)")
        model = cls(**json.loads((directory / "value_heads.json").read_text()))
        model.load_state_dict(torch.load(directory / "value_heads.pt", weights_only=True))
        return model.eval()


@torch.no_grad()
def lm_features(lm, ids: torch.Tensor, mask: torch.Tensor, batch_size: int = 128) -> torch.Tensor:
    """Last hidden states (after the final norm) of a causal LM: ids, mask [N, T] (right-padded) -> [N, T, d]."""
    out = []
    for i in range(0, len(ids), batch_size):
        m = mask[i:i + batch_size]
        pos = (m.cumsum(1) - 1).clamp(min=0)
        out.append(lm.model(input_ids=ids[i:i + batch_size], attention_mask=m, position_ids=pos).last_hidden_state)
    return torch.cat(out)


@torch.no_grad()
def polyak_update(target: nn.Module, online: nn.Module, rate: float) -> None:
    """target <- (1 - rate) * target + rate * online, parameter by parameter (soft target update)."""
    for t, o in zip(target.parameters(), online.parameters()):
        t.lerp_(o, rate)


def _left_pad(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    L = max(len(r) for r in rows)
    ids = torch.full((len(rows), L), pad, dtype=torch.long)
    mask = torch.zeros(len(rows), L, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, L - len(r):] = torch.tensor(r)
        mask[i, L - len(r):] = 1
    return ids, mask


def right_pad(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    L = max(len(r) for r in rows)
    ids = torch.full((len(rows), L), pad, dtype=torch.long)
    mask = torch.zeros(len(rows), L, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r)
        mask[i, :len(r)] = 1
    return ids, mask


@torch.no_grad()
def sample_utterances(lm, encoder, histories: list[list[int]], *, temperature: float = 1.0, max_tokens: int = 24,
                      heads: ValueHeads | None = None, beta: float = 0.0, top_p: float = 1.0,
                      adv_clip: float | None = None, generator: torch.Generator | None = None) -> list[str]:
    """One utterance per history (token ids, BOS first), sampled token by token until end-of-line.

    With `heads` (kind "token") each token is drawn from log pi_bc + beta * (Q - V) (ILQL acting), Q and V
    read from the LM's own hidden state (or from the heads' own trunk, run alongside with a KV cache of its
    own), Q - V clamped to +-`adv_clip` when given; `top_p` < 1 keeps only the BC policy's top-p nucleus (with
    or without heads). Temperature 0 takes the arg-max. The LM keeps a KV cache.
    """
    ids, mask = _left_pad(histories, encoder.pad)  # [N, L]
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    out = lm.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
    h, cache = out.last_hidden_state[:, -1], out.cache  # [N, d]
    trunk = heads.trunk if heads is not None else None
    if trunk is not None:
        v_out = trunk(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
        hv, v_cache = v_out.last_hidden_state[:, -1], v_out.cache
    else:
        hv = h
    N = len(histories)
    generated = torch.zeros(N, 0, dtype=torch.long)
    finished = torch.zeros(N, dtype=torch.bool)
    last_pos = pos[:, -1]
    for _ in range(max_tokens):
        logits = lm.lm_head(h)  # [N, V]
        if heads is not None:
            scores = ilql_acting_logits(logits, heads.q_values(hv), heads.v_values(hv), beta, top_p, adv_clip)
        else:
            scores = torch.log_softmax(logits.float(), dim=-1)
            scores = scores.masked_fill(~top_p_support(scores, top_p), float("-inf"))
        if temperature > 0:
            probs = torch.softmax(scores / temperature, dim=-1)
            tok = torch.multinomial(probs, 1, generator=generator).squeeze(1)  # [N]
        else:
            tok = scores.argmax(-1)
        tok = torch.where(finished, torch.full_like(tok, encoder.pad), tok)
        generated = torch.cat([generated, tok[:, None]], dim=1)
        finished |= tok == encoder.newline
        if finished.all():
            break
        mask = torch.cat([mask, torch.ones(N, 1, dtype=torch.long)], dim=1)
        last_pos = last_pos + 1
        out = lm.model(input_ids=tok[:, None], attention_mask=mask, position_ids=last_pos[:, None],
                       cache=cache, use_cache=True)
        h, cache = out.last_hidden_state[:, -1], out.cache
        if trunk is not None:
            v_out = trunk(input_ids=tok[:, None], attention_mask=mask, position_ids=last_pos[:, None],
                          cache=v_cache, use_cache=True)
            hv, v_cache = v_out.last_hidden_state[:, -1], v_out.cache
        else:
            hv = h
    texts = []
    for row in generated.tolist():
        cut = row.index(encoder.newline) if encoder.newline in row else len(row)
        texts.append(encoder.tokenizer.decode(row[:cut]))
    return texts


@torch.no_grad()
def utterance_features(lm, encoder, histories: list[list[int]], utterances: list[str],
                       batch_size: int = 256) -> torch.Tensor:
    """Features of (history, utterance) pairs for an utterance-level Q, paired lists -> [N, d + 2]: the LM's
    hidden state at the end-of-line token of history + utterance, then the utterance's log-likelihood under
    the LM (the sum over its tokens, end-of-line included, and its least likely token; each token's log-prob
    floored at -20).

    The log-likelihood is there because the hidden state alone hardly tells a consistent guess from an
    inconsistent one: predicting the environment's reply rewards that distinction on one token in a hundred,
    whereas the behaviour policies' choice of name (what the LM imitates) depends on it directly.
    """
    out = []
    for i in range(0, len(histories), batch_size):
        hs = histories[i:i + batch_size]
        us = [encoder.encode(u + "\n") for u in utterances[i:i + batch_size]]
        ids, mask = right_pad([h + u for h, u in zip(hs, us)], encoder.pad)
        hidden = lm_features(lm, ids, mask, batch_size=batch_size)  # [B, L, d]
        last = last_token_index(mask)
        logp = torch.log_softmax(lm.lm_head(hidden[:, :-1]).float(), dim=-1)
        logp = logp.gather(-1, ids[:, 1:, None]).squeeze(-1).clamp(min=-20.0)  # [B, L-1]: log p(token j+1)
        pos = torch.arange(ids.shape[1] - 1)[None]  # position j predicts token j + 1
        start = torch.tensor([len(h) - 1 for h in hs])[:, None]
        said = (pos >= start) & (pos < last[:, None])  # [B, L-1]: the utterance's tokens
        lp_sum = (logp * said).sum(-1)
        lp_min = logp.masked_fill(~said, 0.0).min(-1).values
        out.append(torch.cat([hidden[torch.arange(len(hs)), last], lp_sum[:, None], lp_min[:, None]], dim=-1))
    return torch.cat(out) if out else torch.zeros(0, lm.config.hidden_size + 2)
