"""Rollouts: prompts in, completions out, and their log-probabilities under a policy.

The one implementation behind sampling in collect, policy and evaluate:

- prompts: `load_prompts` reads and checks prompt records, `render_prompt_ids` applies the chat template;
- padding and lengths: `left_pad` for generation, `eos_lengths` / `length_mask` for the responses (from the
  first EOS, never by matching the pad token, which may equal EOS);
- sampling: `sample` renders, pads, repeats each prompt k times and generates; with the k rows of a prompt
  adjacent, `generate_shared_prompts` runs each prompt's prefill once (`shared_prompt_cache`);
- log-probabilities: `response_logprobs_and_values` (with the value head of a `PolicyWithValue`), over
  prompt groups run once, and `in_pieces` to bound their memory.

Shapes: N rows (prompts x k, the k completions of a prompt adjacent), T_q query tokens (left-padded),
T_r response tokens (right-padded).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlhf.data import DataError, read_records
from rlhf.distributed import is_main_process
from rlhf.losses import token_logprobs

MAX_PROMPT_TOKENS = 512  # longest prompt (after the chat template) that load_prompts accepts by default


# ------------------------------------------------------------------------------------------ prompts


def render_prompt_ids(tokenizer, messages: list[dict]) -> list[int]:
    """The token ids of chat messages under the tokenizer's chat template, ending with the assistant's turn."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def check_prompt(rec, index: int, tokenizer, max_tokens: int) -> dict:
    """One prompt record as {"prompt_id", "prompt" (messages), "task"}; DataError naming file:line if bad."""
    d = rec.data
    if "prompt" not in d:
        raise DataError(f"{rec.source}: missing key 'prompt'")
    prompt = d["prompt"]
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    if (not isinstance(prompt, list) or not prompt
            or not all(isinstance(m, dict) and isinstance(m.get("content"), str) and "role" in m for m in prompt)):
        raise DataError(f"{rec.source}: 'prompt' must be a string or a list of {{role, content}} messages")
    if not "".join(m["content"] for m in prompt).strip():
        raise DataError(f"{rec.source}: empty prompt")
    n = len(render_prompt_ids(tokenizer, prompt))
    if n > max_tokens:
        raise DataError(f"{rec.source}: prompt is {n} tokens, longer than max_prompt_tokens={max_tokens}")
    pid = str(d.get("id", d.get("prompt_id", index)))
    return {"prompt_id": pid, "prompt": prompt, "task": {k: v for k, v in d.items() if k != "prompt"}}


def load_prompts(source: str, split: str, tokenizer, *, max_prompts: int = 0,
                 max_prompt_tokens: int = MAX_PROMPT_TOKENS, skip_invalid: bool = False,
                 who: str = "prompts") -> list[dict]:
    """The prompt records of `source` (a .jsonl/.json/.parquet file or a hub dataset's `split`), checked by
    `check_prompt`, the first `max_prompts` (0: all). A bad record stops the run with its file and line, or,
    with `skip_invalid`, is left out and counted in a summary printed as `[who]` (never dropped silently)."""
    out, seen, skipped = [], set(), []
    records = read_records(source, split)
    if max_prompts:
        records = records[:max_prompts]
    for i, rec in enumerate(records):
        try:
            row = check_prompt(rec, i, tokenizer, max_prompt_tokens)
            if row["prompt_id"] in seen:
                raise DataError(f"{rec.source}: duplicate prompt id '{row['prompt_id']}'")
        except DataError as e:
            if not skip_invalid:
                raise
            skipped.append(str(e))
            continue
        seen.add(row["prompt_id"])
        out.append(row)
    if skipped and is_main_process():  # every rank reads the prompts; one reports
        print(f"[{who}] skipped {len(skipped)} of {len(records)} prompt records (skip_invalid):")
        for line in skipped[:20]:
            print(f"  {line}")
        if len(skipped) > 20:
            print(f"  ... and {len(skipped) - 20} more")
    if not out:
        raise DataError(f"{source}: no usable prompts")
    return out


# ------------------------------------------------------------------------------ padding and lengths


def left_pad(ids: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts left-padded for generation: input_ids and attention_mask, both [B, T_prompt]."""
    width = max(map(len, ids))
    input_ids = torch.tensor([[pad_id] * (width - len(x)) + x for x in ids])
    attention = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids])
    return input_ids, attention


def eos_lengths(generated: torch.Tensor, eos_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token counts [N] and EOS flags [N] of generated continuations generated [N, T_new].

    Positions after an EOS are padding (pad may equal EOS, so only the first EOS counts). A row's count
    includes its EOS; a row without one ran out of tokens and counts T_new.
    """
    is_eos = generated == eos_id  # [N, T_new]
    ended = is_eos.any(dim=1)  # [N]
    first = torch.where(ended, is_eos.float().argmax(dim=1) + 1, torch.full_like(ended, generated.shape[1],
                                                                                  dtype=torch.long))
    return first, ended


def completion_lengths(generated: torch.Tensor, eos_id: int) -> tuple[list[int], list[bool]]:
    """`eos_lengths` as Python lists."""
    lengths, ended = eos_lengths(generated, eos_id)
    return lengths.tolist(), ended.tolist()


def length_mask(lengths: torch.Tensor, width: int) -> torch.Tensor:
    """The attention mask [N, width] (long) of right-padded rows of lengths [N]: 1 on each row's first tokens."""
    return (torch.arange(width, device=lengths.device)[None] < lengths[:, None]).long()


# ------------------------------------------------------------------------------- sampling


@dataclass
class Samples:
    """Completions of a batch of prompts, N = prompts x k rows, the k rows of a prompt adjacent."""

    sequences: torch.Tensor  # [N, T_q + T_r]: the left-padded query, then the generated tokens
    query_mask: torch.Tensor  # [N, T_q]
    lengths: torch.Tensor  # [N] response tokens up to and including the first EOS (T_r without one)
    ended: torch.Tensor  # [N] bool: the response has an EOS
    texts: list[str]  # [N] the responses decoded without special tokens, stripped

    @property
    def n_query(self) -> int:
        return self.query_mask.shape[1]

    @property
    def query(self) -> torch.Tensor:  # [N, T_q]
        return self.sequences[:, :self.n_query]

    @property
    def response(self) -> torch.Tensor:  # [N, T_r]; after a row's first EOS, whatever generate padded with
        return self.sequences[:, self.n_query:]

    @property
    def mask(self) -> torch.Tensor:  # [N, T_q + T_r]: the query's mask, then each response up to its length
        return torch.cat([self.query_mask, length_mask(self.lengths, self.response.shape[1])], dim=1)


def sample(model, tokenizer, messages: list[list[dict]], k: int, device, *, share_prompts: bool = True,
           **generate_kwargs) -> Samples:
    """k completions of each prompt (chat messages) from `model.generate(**generate_kwargs)` with a KV cache.

    The prompts are rendered, left-padded and each repeated for its k adjacent rows; with `share_prompts`
    each prompt's prefill runs once for its k rows (`generate_shared_prompts`). Seeding is the caller's
    (torch's global generator, or a row-seeded logits processor in generate_kwargs)."""
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    query, qmask = left_pad([render_prompt_ids(tokenizer, m) for m in messages], pad)
    query = query.repeat_interleave(k, 0).to(device)  # [N, T_q]
    qmask = qmask.repeat_interleave(k, 0).to(device)
    sequences = generate_shared_prompts(model, query, qmask, k if share_prompts else 1, pad_token_id=pad,
                                        eos_token_id=eos, use_cache=True, **generate_kwargs)  # [N, T_q + T_r]
    response = sequences[:, query.shape[1]:]
    lengths, ended = eos_lengths(response, eos)
    texts = [tokenizer.decode(r[:n], skip_special_tokens=True).strip() for r, n in zip(response, lengths)]
    return Samples(sequences, qmask, lengths, ended, texts)


# Sampling k completions per prompt puts each prompt in k rows. A decoder's keys and values over the prompt
# do not depend on what follows it, so the prompt can run once per prompt and its cache be repeated for the
# k rows: the prompt's share of a forward pass (and of its backward) is divided by k. transformers'
# `num_return_sequences` repeats the prompt before the prefill, and its log-prob passes have no such option,
# hence these helpers.


def cache_keyword(model) -> str:
    """The keyword by which `model`'s forward and generate take a KV cache: `cache` in recent transformers,
    `past_key_values` before (still accepted, with a deprecation warning, by the versions that renamed it)."""
    import inspect

    from rlhf.models import transformers_model

    return "cache" if "cache" in inspect.signature(transformers_model(model).forward).parameters \
        else "past_key_values"


def check_prompt_groups(input_ids: torch.Tensor, group: int) -> None:
    """Raise unless the rows of input_ids [N, T] come in runs of `group` identical rows (N a multiple)."""
    n, t = input_ids.shape
    if n % group:
        raise ValueError(f"{n} rows do not split into runs of {group} rows of one prompt")
    runs = input_ids.view(n // group, group, t)
    if not torch.equal(runs, runs[:, :1].expand_as(runs)):
        raise ValueError(f"the rows do not come in runs of {group} identical prompts")


def shared_prompt_cache(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                        group: int, **forward_kwargs):
    """Run the prompts input_ids [N, T] (rows in runs of `group` copies of one prompt; left-padded, with
    their mask and position ids) once per prompt, and return (the forward's output for the N / group prompts,
    a DynamicCache with their keys and values repeated `group` times: N rows). Gradients flow through the
    repeated cache to the prompt's forward. `forward_kwargs` go to the forward (e.g. logits_to_keep=1)."""
    from transformers import DynamicCache

    check_prompt_groups(input_ids, group)
    cache = DynamicCache()
    out = model(input_ids=input_ids[::group], attention_mask=attention_mask[::group],
                position_ids=position_ids[::group], use_cache=True, **{cache_keyword(model): cache},
                **forward_kwargs)
    cache.batch_repeat_interleave(group)
    return out, cache


def generate_shared_prompts(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, group: int, **kwargs):
    """`model.generate(input_ids, attention_mask, **kwargs)` for rows in runs of `group` copies of one prompt
    (k samples per prompt): all but each prompt's last token run once per prompt (`shared_prompt_cache`), and
    generation continues from that cache. The same distribution as the plain call; tokens can differ only where
    float rounding (the prefill's batch shape) moves a draw across a boundary. group 1: the plain call."""
    if group == 1 or input_ids.shape[1] < 2:
        return model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
    # position ids as generate computes them (pads at 1; they are masked either way)
    position_ids = (attention_mask.cumsum(-1) - 1).masked_fill(attention_mask == 0, 1)
    _, cache = shared_prompt_cache(model, input_ids[:, :-1], attention_mask[:, :-1], position_ids[:, :-1], group,
                                   logits_to_keep=1)
    return model.generate(input_ids=input_ids, attention_mask=attention_mask, **{cache_keyword(model): cache},
                          **kwargs)


# ------------------------------------------------------------------------- log-probs and values


def response_logprobs(model, sequences: torch.Tensor, attention_mask: torch.Tensor, n_query: int,
                      group: int = 1) -> torch.Tensor:
    """log pi(response tokens): sequences [N, T_q + T_r] (left-padded query, response after), mask alike ->
    [N, T_r]. Position ids follow the mask, as in generation. group > 1: the rows come in runs of `group`
    completions of one prompt, whose query then runs once (see `response_logprobs_and_values`)."""
    return response_logprobs_and_values(model, sequences, attention_mask, n_query, group)[0]


def response_logprobs_and_values(model, sequences, attention_mask, n_query: int, group: int = 1):
    """As `response_logprobs`, plus the value of each response token's state when `model` is a
    `PolicyWithValue` (one forward pass for both): ([N, T_r], [N, T_r] or None).

    group > 1 (rows in runs of `group` completions of one prompt, as sampled): the query runs once per prompt
    and its keys and values are repeated for the run's rows, then the responses run on that cache, so the
    query's share of the forward and backward work is divided by `group`. Same values up to float rounding."""
    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    n_response = sequences.shape[1] - n_query
    if group == 1:
        # The LM head only over the positions that predict response tokens (the last T_r + 1; the very last
        # predicts nothing): the prompt's logits are never needed.
        logits, values = _logits_values(model(input_ids=sequences, attention_mask=attention_mask,
                                              position_ids=position_ids, logits_to_keep=n_response + 1))
        logits, values = logits[:, :-1], None if values is None else values[:, n_query - 1:-1]
    else:
        # 1. The queries, once per prompt: the logits (and value) at the last query position predict the
        #    first response token; the cache holds the query's keys and values, repeated for the run's rows.
        out, cache = shared_prompt_cache(model, sequences[:, :n_query], attention_mask[:, :n_query],
                                         position_ids[:, :n_query], group, logits_to_keep=1)
        logits, values = _logits_values(out)
        logits = logits.repeat_interleave(group, 0)  # [N, 1, V]
        values = None if values is None else values[:, -1:].repeat_interleave(group, 0)  # [N, 1]
        # 2. Every row's response tokens but the last, on that cache: logits for response tokens 1..T_r-1.
        if n_response > 1:
            more, more_values = _logits_values(model(
                input_ids=sequences[:, n_query:-1], attention_mask=attention_mask[:, :-1],
                position_ids=position_ids[:, n_query:-1], use_cache=True, **{cache_keyword(model): cache}))
            logits = torch.cat([logits, more], dim=1)  # [N, T_r, V]
            values = None if values is None else torch.cat([values, more_values], dim=1)
    # V(s_t) for the state before response token t, read at the position that predicts it.
    return token_logprobs(logits, sequences[:, n_query:]), values


def _logits_values(out):
    """(logits, values or None) from the output of a model or of a `PolicyWithValue`."""
    return out if isinstance(out, tuple) else (out.logits, None)


class PolicyWithValue(torch.nn.Module):
    """The policy and a scalar value head on its last hidden state, one module so that one forward (and one
    DDP wrapper) serves both. The head shares the policy's trunk (and LoRA adapters), as in PPO for RLHF
    (Ziegler et al., 2019); it is zero-initialised, so training starts from V = 0."""

    def __init__(self, policy):
        super().__init__()
        self.policy = policy
        self.value_head = torch.nn.Linear(policy.config.hidden_size, 1)
        torch.nn.init.zeros_(self.value_head.weight)
        torch.nn.init.zeros_(self.value_head.bias)

    def forward(self, input_ids, attention_mask, position_ids, logits_to_keep: int = 0, **kwargs):
        out = self.policy(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          output_hidden_states=True, logits_to_keep=logits_to_keep, **kwargs)
        values = self.value_head(out.hidden_states[-1].float()).squeeze(-1)  # [N, T]
        return out.logits, values


def in_pieces(fn, n_rows: int, piece: int):
    """fn(rows) over consecutive row ranges of at most `piece` rows (one range when piece is 0), the results
    (a tensor, or a tuple of tensors or Nones) concatenated along rows: the same values as fn over all rows,
    up to float rounding, in a fraction of the memory."""
    if not piece or piece >= n_rows:
        return fn(slice(0, n_rows))
    parts = [fn(slice(i, min(i + piece, n_rows))) for i in range(0, n_rows, piece)]
    if not isinstance(parts[0], tuple):
        return torch.cat(parts)
    return tuple(None if column[0] is None else torch.cat(column) for column in zip(*parts))
