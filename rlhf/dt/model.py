"""The Decision Transformer policy: transformers' `DecisionTransformerModel` plus what it leaves to the caller.

Why extend rather than rewrite: `DecisionTransformerModel` already embeds (return-to-go, state, action) tokens
with a learned timestep embedding, interleaves them as (R_1, s_1, a_1, R_2, ...) and runs a causal GPT-2 with
the action read off the state token (Chen et al., 2021). What it does not do is handled here:

- discrete actions: fed as one-hot vectors (its linear action embedding on a one-hot is a categorical
  embedding) and predicted as logits (its action head without the tanh), trained with cross-entropy;
- continuous actions: scaled to [-1, 1] from the action space's bounds (its tanh head), trained with MSE;
- normalisation stored with the model: state mean / std and the return-to-go scale (R / rtg_scale), so the
  saved model acts in the environment's own units;
- behaviour cloning in the same network family: `condition_on_return = False` feeds a zero return token, so
  BC and filtered BC differ from the DT only in what they condition on (same size, context and timesteps).

Saved as `save_pretrained` files (config.json, model.safetensors: loadable with
`DecisionTransformerModel.from_pretrained`) plus `dt_spec.json`.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

SPEC_FILE = "dt_spec.json"


@dataclasses.dataclass
class DTSpec:
    """Everything besides the weights that a saved policy needs to act."""

    env: str
    obs_dim: int
    act_dim: int  # number of actions (discrete) or action dimensions (continuous)
    discrete: bool
    context_len: int
    max_ep_len: int
    rtg_scale: float  # the model sees R / rtg_scale
    state_mean: list[float]
    state_std: list[float]
    condition_on_return: bool = True  # False: behaviour cloning (return token fixed at 0)
    action_start: int = 0
    action_low: list[float] | None = None
    action_high: list[float] | None = None
    hidden_size: int = 64
    n_layer: int = 2
    n_head: int = 1
    dropout: float = 0.1
    data_returns: dict[str, float] = dataclasses.field(default_factory=dict)  # min / mean / max / quantiles
    method: str = "dt"


class DecisionTransformer(nn.Module):
    """A (return-to-go, observation, action) sequence model over windows of `spec.context_len` steps."""

    def __init__(self, spec: DTSpec, core=None):
        super().__init__()
        from transformers import DecisionTransformerConfig, DecisionTransformerModel

        self.spec = spec
        if core is None:
            config = DecisionTransformerConfig(
                state_dim=spec.obs_dim, act_dim=spec.act_dim, hidden_size=spec.hidden_size,
                max_ep_len=spec.max_ep_len, action_tanh=not spec.discrete, n_layer=spec.n_layer,
                n_head=spec.n_head, n_inner=4 * spec.hidden_size, n_positions=3 * spec.context_len,
                resid_pdrop=spec.dropout, embd_pdrop=spec.dropout, attn_pdrop=spec.dropout,
                bos_token_id=None, eos_token_id=None)
            core = DecisionTransformerModel(config)
        self.core = core
        self.register_buffer("state_mean", torch.tensor(spec.state_mean, dtype=torch.float32), persistent=False)
        self.register_buffer("state_std", torch.tensor(spec.state_std, dtype=torch.float32), persistent=False)
        if not spec.discrete:
            self.register_buffer("action_low", torch.tensor(spec.action_low, dtype=torch.float32), persistent=False)
            self.register_buffer("action_high", torch.tensor(spec.action_high, dtype=torch.float32),
                                 persistent=False)

    # ---------------------------------------------------------------------------------- units

    def normalize_actions(self, actions: torch.Tensor) -> torch.Tensor:
        """Continuous actions in environment units [..., A] -> [-1, 1] (what the tanh head predicts)."""
        return 2 * (actions - self.action_low) / (self.action_high - self.action_low) - 1

    def denormalize_actions(self, actions: torch.Tensor) -> torch.Tensor:
        return self.action_low + (actions.clamp(-1, 1) + 1) * 0.5 * (self.action_high - self.action_low)

    # -------------------------------------------------------------------------------- forward

    def forward(self, states: torch.Tensor, actions: torch.Tensor, rtg: torch.Tensor, timesteps: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
        """Action predictions for every position of a window.

        states [B, K, obs_dim] (raw); actions [B, K] 0-based ids (discrete) or [B, K, A] in environment units;
        rtg [B, K] raw returns-to-go; timesteps [B, K] long; mask [B, K] (1 real, 0 pad).
        Returns [B, K, A]: logits (discrete) or actions in [-1, 1] (continuous). Position k sees the return
        and state of step k and everything before it, not action k.
        """
        s = (states - self.state_mean) / self.state_std  # [B, K, obs_dim]
        if self.spec.discrete:
            a = F.one_hot(actions.long().clamp(min=0), self.spec.act_dim).float() * mask.unsqueeze(-1)
        else:
            a = self.normalize_actions(actions.float()) * mask.unsqueeze(-1)  # [B, K, A]
        r = (rtg.float() / self.spec.rtg_scale).unsqueeze(-1)  # [B, K, 1]
        if not self.spec.condition_on_return:
            r = torch.zeros_like(r)
        t = timesteps.long().clamp(0, self.spec.max_ep_len - 1)
        out = self.core(states=s, actions=a, returns_to_go=r, timesteps=t, attention_mask=mask.long(),
                        return_dict=True)
        return out.action_preds  # [B, K, A]

    @torch.no_grad()
    def act(self, states, actions, rtg, timesteps, mask, *, sample: bool, generator=None) -> np.ndarray:
        """Environment actions for the last position of each window: [B] ids + action_start, or [B, A]."""
        preds = self.forward(states, actions, rtg, timesteps, mask)[:, -1]  # [B, A]
        if self.spec.discrete:
            if sample:
                ids = torch.multinomial(F.softmax(preds.float(), -1), 1, generator=generator).squeeze(-1)
            else:
                ids = preds.argmax(-1)
            return ids.numpy() + self.spec.action_start
        return self.denormalize_actions(preds).numpy()

    # ----------------------------------------------------------------------------------- files

    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.core.save_pretrained(directory)
        (directory / SPEC_FILE).write_text(json.dumps(dataclasses.asdict(self.spec), indent=2) + "\n")
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> "DecisionTransformer":
        from transformers import DecisionTransformerModel

        directory = Path(directory)
        if not (directory / SPEC_FILE).is_file():
            raise FileNotFoundError(f"no {SPEC_FILE} in {directory} (train one with `rlhf dt train`)")
        spec = DTSpec(**json.loads((directory / SPEC_FILE).read_text()))
        core = DecisionTransformerModel.from_pretrained(directory)
        return cls(spec, core=core).eval()


def spec_from_dataset(data, *, context_len: int, hidden_size: int, n_layer: int, n_head: int, dropout: float,
                      rtg_scale: float | None, condition_on_return: bool, method: str) -> DTSpec:
    """Model spec for a data set: sizes from its metadata, normalisation from its statistics."""
    meta = data.meta
    rets = data.returns
    std = data.observations.std(0)
    return DTSpec(
        env=meta["env"], obs_dim=int(meta["obs_dim"]), act_dim=int(meta["act_dim"]), discrete=bool(meta["discrete"]),
        context_len=context_len, max_ep_len=int(meta["max_episode_steps"]),
        rtg_scale=float(rtg_scale if rtg_scale else max(np.abs(rets).max(), 1e-6)),
        state_mean=data.observations.mean(0).astype(float).tolist(),
        state_std=np.where(std < 1e-6, 1.0, std).astype(float).tolist(),
        condition_on_return=condition_on_return, action_start=int(meta.get("action_start", 0)),
        action_low=meta.get("action_low"), action_high=meta.get("action_high"), hidden_size=hidden_size,
        n_layer=n_layer, n_head=n_head, dropout=dropout, method=method, data_returns=return_stats(rets))


def return_stats(returns: np.ndarray) -> dict[str, float]:
    """Episode returns [E] -> min, mean, max and quartiles (evaluate's default targets)."""
    return {"min": float(returns.min()), "mean": float(returns.mean()), "max": float(returns.max()),
            **{f"q{int(q * 100)}": float(np.quantile(returns, q)) for q in (0.25, 0.5, 0.75, 0.9)}}
