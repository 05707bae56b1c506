"""Reward functions for the policy stage: the toolkit's form and TRL's, several at once with weights.

    --reward_fn rlhf.tasks.rewards:gold_judge                         # one function
    --reward_fn my.rewards:fmt,my.rewards:accuracy --reward_weights 0.2,1.0

Two calling conventions are accepted, told apart by the function's signature:

- the toolkit's: `f(prompts, completions, records) -> list[float]` (a parameter named `records`), called with
  the prompts' messages, the completion texts and the whole prompt records;
- TRL's (`GRPOTrainer`'s `reward_funcs`): `f(prompts, completions, **kwargs) -> list[float | None]`, called
  with keyword arguments: `prompts` and `completions` in the data set's format (conversational prompts, a
  list of messages each, give completions as `[{"role": "assistant", "content": text}]`; plain-text prompts
  give texts), `completion_ids` (token ids of each completion), and every other column of the prompt records
  as a list over the batch (`reference`, `kind`, ... on the built-in task). A function without `**kwargs`
  is passed only the arguments it names.

The score is the weighted sum over the functions (`reward_weights`, default 1 each). As in TRL, a function
may return None for a completion it does not apply to: the sum skips it, and a completion that no function
scores gets 0 (counted in `rewards/unscored_fraction`). Each function's mean and standard deviation over the
batch are logged as `rewards/<name>/mean` and `rewards/<name>/std`.
"""

from __future__ import annotations

import importlib
import inspect
import math
from typing import Any, Callable

import torch


class RewardFunctionError(ValueError):
    """A reward function that cannot be loaded or returned something unusable."""


def load_function(spec: str) -> Callable:
    """'module:function' -> the function (the module imported from the environment's path)."""
    module, sep, name = spec.strip().partition(":")
    if not sep or not module or not name:
        raise RewardFunctionError(f"reward_fn '{spec}': expected 'module:function'")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise RewardFunctionError(f"reward_fn '{spec}': {e}") from None
    if not callable(fn):
        raise RewardFunctionError(f"reward_fn '{spec}' is not callable")
    return fn


def is_toolkit_form(fn: Callable) -> bool:
    """True for `f(prompts, completions, records)`, False for TRL's `f(prompts, completions, **kwargs)`."""
    try:
        return "records" in inspect.signature(fn).parameters
    except (TypeError, ValueError):  # builtins without a signature: take them as the toolkit's form
        return True


def _accepts(fn: Callable) -> tuple[set[str], bool]:
    params = inspect.signature(fn).parameters.values()
    return ({p.name for p in params}, any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params))


def trl_arguments(prompts: list, completions: list[str], records: list[dict],
                  completion_ids: list[list[int]] | None = None) -> dict[str, Any]:
    """The keyword arguments TRL passes to a reward function, built from the toolkit's batch."""
    conversational = bool(prompts) and isinstance(prompts[0], list)
    kwargs: dict[str, Any] = {
        "prompts": prompts,
        "completions": [[{"role": "assistant", "content": c}] for c in completions] if conversational
        else list(completions),
    }
    if completion_ids is not None:
        kwargs["completion_ids"] = completion_ids
    columns = [key for key in (records[0] if records else {}) if key not in ("prompt", "completion")]
    for key in columns:
        kwargs[key] = [r.get(key) for r in records]
    return kwargs


class RewardFunctions:
    """Several reward functions with weights, called as the policy stage's reward:
    (prompts, completions, records[, completion_ids]) -> scores [N]; `last` holds each function's scores."""

    def __init__(self, specs: list[str], weights: list[float] | None = None):
        if not specs:
            raise RewardFunctionError("no reward function given")
        weights = list(weights) if weights else [1.0] * len(specs)
        if len(weights) != len(specs):
            raise RewardFunctionError(f"reward_weights has {len(weights)} values for {len(specs)} reward functions")
        self.functions = [load_function(s) for s in specs]
        self.weights = weights
        self.names = []
        for spec, fn in zip(specs, self.functions):
            name = getattr(fn, "__name__", spec.partition(":")[2])
            self.names.append(name if name not in self.names else f"{name}_{len(self.names)}")
        self.last: dict[str, torch.Tensor] = {}

    @classmethod
    def from_spec(cls, spec: str, weights: list[float] | None = None) -> "RewardFunctions":
        return cls([s.strip() for s in spec.split(",") if s.strip()], weights)

    def _call(self, fn: Callable, prompts, completions, records, completion_ids) -> list:
        if is_toolkit_form(fn):
            return list(fn(prompts, completions, records))
        kwargs = trl_arguments(prompts, completions, records, completion_ids)
        names, var_kw = _accepts(fn)
        if not var_kw:
            kwargs = {k: v for k, v in kwargs.items() if k in names}
        return list(fn(**kwargs))

    def __call__(self, prompts: list, completions: list[str], records: list[dict],
                 completion_ids: list[list[int]] | None = None) -> torch.Tensor:
        columns = []
        for name, fn in zip(self.names, self.functions):
            values = self._call(fn, prompts, completions, records, completion_ids)
            if len(values) != len(completions):
                raise RewardFunctionError(f"reward function {name} returned {len(values)} scores for "
                                          f"{len(completions)} completions")
            try:
                columns.append(torch.tensor([math.nan if v is None else float(v) for v in values],
                                            dtype=torch.float32))
            except (TypeError, ValueError):
                raise RewardFunctionError(f"reward function {name} returned a non-number: {values[:4]}") from None
        per_function = torch.stack(columns, dim=1)  # [N, F]
        self.last = {name: per_function[:, i] for i, name in enumerate(self.names)}
        weights = torch.tensor(self.weights, dtype=torch.float32)
        return (per_function * weights).nansum(dim=1)  # [N]; a completion no function scores gets 0

    def stats(self, gather=lambda t: t) -> dict[str, float]:
        """`rewards/<name>/mean|std` of the last call (over what `gather` collects), and the unscored fraction."""
        out = {}
        unscored = None
        for name, values in self.last.items():
            values = gather(values)
            valid = values[~values.isnan()]
            out[f"rewards/{name}/mean"] = valid.mean().item() if len(valid) else math.nan
            out[f"rewards/{name}/std"] = valid.std().item() if len(valid) > 1 else 0.0
            unscored = values.isnan() if unscored is None else unscored & values.isnan()
        if unscored is not None:
            out["rewards/unscored_fraction"] = unscored.float().mean().item()
        return out
