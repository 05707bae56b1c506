"""The reward model: a pretrained LM backbone with a scalar head on the hidden state of the last real token.

    rm = RewardModel.load("runs/reward/model")
    rm.score(["What is 2 + 3?"], ["2 + 3 = 5."])                # -> [1.73]
    rm.score([[{"role": "user", "content": "..."}]], ["..."], normalize=True)   # (r - mean) / std

A scored text is the conversation (prompt + response) rendered with the tokenizer's chat template. The head
reads the last real token, found from the attention mask (`last_token_index`), so it is right with left or
right padding and when the pad token equals EOS.

Saved as a directory that plain transformers loads with `AutoModelForSequenceClassification` (num_labels=1)
for a linear head: its pooling takes the rightmost token that is not the pad token, which is the same token
because a rendered conversation ends in a non-pad token ("\\n" after the end-of-turn token with ChatML
templates). `reward_config.json` beside it holds the head type and the reward mean and standard deviation
over the training responses (for normalisation in policy optimisation).

Richer frozen features (`FeatureSpec`): the states of several layers (not only the final one), pooled at the
last token, as a mean over the response's tokens, or both, and the response's mean and minimum token
log-probability under the backbone, all from one forward pass. A head fitted on such features (or an MLP,
or several ensemble members) is beyond what `AutoModelForSequenceClassification` computes, so such a model
is saved without a top-level `config.json` (the backbone in `backbone.safetensors` + `backbone_config.json`,
the head in `head.safetensors`): plain transformers refuses to load it instead of scoring it wrongly, and
`reward_config.json` says why under "transformers". `RewardModel.load` reads both layouts.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from rlhf.losses import ensemble_score, last_token_index, logprob_stats, masked_mean_pool
from rlhf.rollout import cache_keyword, shared_prompt_cache

REWARD_CONFIG = "reward_config.json"
POOLINGS = ("last", "mean", "both")


class FeatureSpec:
    """Which frozen features a reward model reads, in this order in the feature vector: for each of `layers`
    (1..num_layers, ascending; num_layers is the final, normed state), the last real token's state and/or the
    mean of the response tokens' states (`pooling`: last, mean or both; H values each), then with `logprobs`
    the mean and the minimum of the response tokens' log-probabilities under the backbone (2 values)."""

    def __init__(self, layers, pooling: str = "last", logprobs: bool = False, num_layers: int = 0):
        self.layers = tuple(sorted({int(x) for x in layers}))
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r} ({', '.join(POOLINGS)})")
        if not self.layers and not logprobs:
            raise ValueError("a feature set needs at least one layer or the log-prob statistics")
        if num_layers and not all(1 <= x <= num_layers for x in self.layers):
            raise ValueError(f"layers {list(self.layers)} out of range 1..{num_layers}")
        self.pooling, self.logprobs, self.num_layers = pooling, bool(logprobs), int(num_layers)

    @classmethod
    def parse(cls, layers: str, pooling: str, logprobs: bool, num_layers: int) -> "FeatureSpec":
        """layers: "final", "all", "every:N" (the final layer and every N-th below it) or a comma list of
        layer numbers (1..num_layers; negative counts from the top: -1 is the final layer)."""
        text = str(layers).strip()
        if text == "final":
            chosen = [num_layers]
        elif text == "all":
            chosen = list(range(1, num_layers + 1))
        elif text.startswith("every:"):
            step = int(text.removeprefix("every:"))
            if step < 1:
                raise ValueError(f"layers {text!r}: the step must be >= 1")
            chosen = list(range(num_layers, 0, -step))
        else:
            chosen = [int(x) for x in text.split(",") if x.strip()]
            chosen = [x + num_layers + 1 if x < 0 else x for x in chosen]
        return cls(chosen, pooling, logprobs, num_layers)

    @classmethod
    def legacy(cls, num_layers: int) -> "FeatureSpec":
        """The final layer's state at the last token: what transformers' sequence classification reads."""
        return cls([num_layers], "last", False, num_layers)

    @property
    def blocks(self) -> list[tuple]:
        """The feature vector's parts in order: ("last", layer), ("mean", layer) ..., ("logprobs",)."""
        pools = {"last": ["last"], "mean": ["mean"], "both": ["last", "mean"]}[self.pooling]
        return [(p, layer) for layer in self.layers for p in pools] + ([("logprobs",)] if self.logprobs else [])

    def dim(self, hidden: int) -> int:
        return sum(2 if b[0] == "logprobs" else hidden for b in self.blocks)

    def columns(self, sub: "FeatureSpec", hidden: int) -> list[int]:
        """Indices of `sub`'s features within this spec's feature vector (sub's blocks must all be here)."""
        start, where = 0, {}
        for b in self.blocks:
            width = 2 if b[0] == "logprobs" else hidden
            where[b] = range(start, start + width)
            start += width
        missing = [b for b in sub.blocks if b not in where]
        if missing:
            raise ValueError(f"features {missing} are not in {self}")
        return [i for b in sub.blocks for i in where[b]]

    @property
    def transformers_expressible(self) -> bool:
        """Whether AutoModelForSequenceClassification computes these features (the final state, last token)."""
        return self.layers == (self.num_layers,) and self.pooling == "last" and not self.logprobs

    @property
    def needs_response_mask(self) -> bool:
        return self.logprobs or self.pooling != "last"

    def tag(self) -> str:
        return (f"l{'.'.join(map(str, self.layers)) or 'none'}-{self.pooling}" + ("-lp" if self.logprobs else ""))

    def to_dict(self) -> dict:
        return {"layers": list(self.layers), "pooling": self.pooling, "logprobs": self.logprobs,
                "num_layers": self.num_layers}

    @classmethod
    def from_dict(cls, d: dict) -> "FeatureSpec":
        return cls(d["layers"], d["pooling"], d["logprobs"], d["num_layers"])

    def __eq__(self, other) -> bool:
        return isinstance(other, FeatureSpec) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"FeatureSpec({self.to_dict()})"


def render_texts(tokenizer, prompts: list, responses: list) -> list[str]:
    """Prompt + response as the model sees them. Prompts: strings or message lists; responses: strings or
    assistant message lists."""
    texts = []
    for prompt, response in zip(prompts, responses, strict=True):
        p = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        r = [{"role": "assistant", "content": response}] if isinstance(response, str) else list(response)
        if tokenizer.chat_template:
            texts.append(tokenizer.apply_chat_template(p + r, tokenize=False))
        else:
            texts.append("\n".join(m["content"] for m in p + r) + (tokenizer.eos_token or ""))
    return texts


def prompt_lengths(tokenizer, prompts: list, texts: list[str]) -> list[int]:
    """Characters of each rendered text that belong to the prompt (up to and including the assistant turn's
    opening): the response is text[n:]. The prompt is rendered alone with the generation prompt; where that
    is not a prefix of the text (an unusual template), the longest common prefix is used."""
    out = []
    for prompt, text in zip(prompts, texts, strict=True):
        p = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        if tokenizer.chat_template:
            head = tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
        else:
            head = "\n".join(m["content"] for m in p) + "\n"
        n = 0
        while n < min(len(head), len(text)) and head[n] == text[n]:
            n += 1
        out.append(n)
    return out


def make_head(kind: str, hidden: int, mlp_hidden: int = 256) -> nn.Module:
    """A linear scalar head (no bias, as transformers' sequence-classification `score`) or a small MLP."""
    if kind == "linear":
        head = nn.Linear(hidden, 1, bias=False)
        nn.init.normal_(head.weight, std=1.0 / (hidden + 1) ** 0.5)
        return head
    if kind == "mlp":
        return nn.Sequential(nn.Linear(hidden, mlp_hidden), nn.GELU(), nn.Linear(mlp_hidden, 1))
    raise ValueError(f"unknown head {kind!r} (linear or mlp)")


def layer_stack(backbone) -> nn.ModuleList:
    """The backbone's list of transformer blocks (Llama-style `layers`, GPT-2-style `h`)."""
    for name in ("layers", "h", "blocks"):
        if isinstance(getattr(backbone, name, None), nn.ModuleList):
            return getattr(backbone, name)
    raise ValueError(f"cannot find the transformer layers of {type(backbone).__name__} to unfreeze")


class RewardModel(nn.Module):
    def __init__(self, backbone, head: nn.Module, tokenizer, *, head_kind: str = "linear", max_length: int = 512,
                 mean: float = 0.0, std: float = 1.0, backbone_name: str = "", spec: FeatureSpec | None = None,
                 lm_head: nn.Module | None = None, fit: dict | None = None):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.tokenizer = tokenizer
        self.head_kind = head_kind
        self.max_length = max_length
        self.mean, self.std = mean, std
        self.backbone_name = backbone_name
        self.spec = spec or FeatureSpec.legacy(backbone.config.num_hidden_layers)
        self.lm_head = lm_head  # the backbone's output embedding, for the log-prob features only
        self.fit = fit or {}  # how the head was chosen (stored in reward_config.json)
        if self.spec.logprobs and lm_head is None:
            raise ValueError("log-prob features need the backbone's LM head")

    # --------------------------------------------------------------------------------- building

    @classmethod
    def from_backbone(cls, name: str, *, head: str = "linear", mlp_hidden: int = 256, max_length: int = 512,
                      seed: int = 0, dtype: torch.dtype = torch.float32, layers: str = "final",
                      pooling: str = "last", logprobs: bool = False) -> "RewardModel":
        """A fresh head on the base model (no LM head) of any causal LM the loader accepts, reading the
        features `layers`/`pooling`/`logprobs` (see `FeatureSpec.parse`; the defaults: final state, last token)."""
        from rlhf.models import load_model, load_tokenizer

        lm = load_model(name, dtype=dtype)
        if hasattr(lm, "peft_config"):
            lm = lm.merge_and_unload()  # an SFT adapter: its merged weights are the backbone
        backbone = getattr(lm, lm.base_model_prefix)
        spec = FeatureSpec.parse(layers, pooling, logprobs, backbone.config.num_hidden_layers)
        lm_head = lm.get_output_embeddings() if spec.logprobs else None
        if lm_head is not None:
            lm_head.requires_grad_(False)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            head_module = make_head(head, spec.dim(backbone.config.hidden_size), mlp_hidden)
        return cls(backbone, head_module, load_tokenizer(name), head_kind=head, max_length=max_length,
                   backbone_name=name, spec=spec, lm_head=lm_head)

    def freeze_backbone(self, unfreeze_top_layers: int = 0) -> None:
        """Freeze the backbone, except its top `unfreeze_top_layers` blocks (and final norm if any)."""
        self.backbone.requires_grad_(False)
        if unfreeze_top_layers > 0:
            for block in layer_stack(self.backbone)[-unfreeze_top_layers:]:
                block.requires_grad_(True)
            for name in ("norm", "ln_f", "final_layernorm"):
                if isinstance(getattr(self.backbone, name, None), nn.Module):
                    getattr(self.backbone, name).requires_grad_(True)

    def set_head(self, head: nn.Module, spec: FeatureSpec, fit: dict | None = None) -> None:
        """A head on the features `spec` (a subset of what the model read so far); drops the LM head when
        the new features need no log-probs."""
        self.head, self.spec = head, spec
        if fit is not None:
            self.fit = fit
        if not spec.logprobs:
            self.lm_head = None

    # --------------------------------------------------------------------------------- scoring

    def encode(self, texts: list[str], prompt_chars: list[int] | None = None) -> dict[str, torch.Tensor]:
        """Right-padded token ids, attention mask and response mask [B, T]; texts longer than max_length are
        cut on the left (the end of the response, where the head reads, is kept). `prompt_chars` (from
        `prompt_lengths`): tokens starting at or after that character are the response's; without it every
        token counts as response."""
        rows = []
        for j, t in enumerate(texts):
            if prompt_chars is None:
                ids = self.tokenizer(t, add_special_tokens=False)["input_ids"]
                resp = [1] * len(ids)
            elif self.tokenizer.is_fast:
                enc = self.tokenizer(t, add_special_tokens=False, return_offsets_mapping=True)
                ids = enc["input_ids"]
                resp = [int(start >= prompt_chars[j]) for start, _ in enc["offset_mapping"]]
            else:
                ids = self.tokenizer(t, add_special_tokens=False)["input_ids"]
                n_prompt = len(self.tokenizer(t[:prompt_chars[j]], add_special_tokens=False)["input_ids"])
                resp = [0] * min(n_prompt, len(ids)) + [1] * max(len(ids) - n_prompt, 0)
            rows.append((ids[-self.max_length:], resp[-self.max_length:]))
        width = max(len(x) for x, _ in rows)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        response = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (x, r) in enumerate(rows):
            input_ids[i, : len(x)] = torch.tensor(x)
            mask[i, : len(x)] = 1
            response[i, : len(r)] = torch.tensor(r)
        return {"input_ids": input_ids, "attention_mask": mask, "response_mask": response}

    def _pool(self, hidden_states, input_ids, attention_mask, response_mask) -> torch.Tensor:
        """The spec's features from per-layer states (hidden_states[l]: [B, T, H], l = 0..L, L normed) ->
        [B, D]."""
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)
        last = last_token_index(attention_mask)  # [B]
        resp = attention_mask if response_mask is None else response_mask * attention_mask
        parts = []
        for block in self.spec.blocks:
            if block[0] == "last":
                parts.append(hidden_states[block[1]][rows, last])
            elif block[0] == "mean":
                parts.append(masked_mean_pool(hidden_states[block[1]], resp))
            else:  # log p(token t | < t) for the response tokens, from the final state one position before
                final = hidden_states[-1][:, :-1]  # [B, T-1, H] predicts tokens 1..T-1
                target = resp[:, 1:].bool()  # [B, T-1]
                states, tokens = final[target], input_ids[:, 1:][target]  # [K, H], [K]
                picked = []
                for i in range(0, len(tokens), 1024):  # [1024, V] logits at a time, whatever the vocabulary
                    logits = self.lm_head(states[i:i + 1024].to(self.lm_head.weight.dtype)).float()
                    picked.append(torch.log_softmax(logits, -1).gather(1, tokens[i:i + 1024, None])[:, 0])
                logp = torch.zeros(target.shape, dtype=torch.float32, device=input_ids.device)
                if picked:
                    logp = logp.masked_scatter(target, torch.cat(picked))
                parts.append(logprob_stats(logp, target).to(hidden_states[-1].dtype))
        return torch.cat(parts, dim=-1)

    @property
    def _plain_last(self) -> bool:  # the final state only: no need to keep every layer's states
        return self.spec.transformers_expressible

    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 response_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The spec's features (by default the final hidden state at each row's last real token):
        [B, T] -> [B, D]. One backbone forward whatever the spec."""
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask,
                            output_hidden_states=not self._plain_last)
        hidden = [out.last_hidden_state] if self._plain_last else list(out.hidden_states)
        if self._plain_last:
            hidden = [None] * self.spec.num_layers + hidden  # index L is the final state
        return self._pool(hidden, input_ids, attention_mask, response_mask)

    @torch.no_grad()
    def features_shared_prefix(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                               response_mask: torch.Tensor | None = None,
                               min_prefix: int = 8) -> tuple[torch.Tensor, int]:
        """`features` of right-padded rows, with the rows' common token prefix run once: [B, T] -> ([B, D], P).

        Rendered conversations share their opening (the chat template's system turn, often the question's
        start too), which is 40% of the tokens of the built-in task's texts. The prefix goes through the
        backbone once with batch 1, its key/value cache is repeated over the rows, and only the B suffixes
        are run, attending to it; the prefix's states are repeated too, for mean pooling and log-probs that
        reach into it. Same features as `features` up to float rounding (tested); P is the prefix length used
        (0: a plain forward, when the rows share fewer than `min_prefix` tokens or one row is all prefix).
        For frozen-feature extraction only: no gradient flows.
        """
        lengths = attention_mask.sum(1)
        if input_ids.shape[0] < 2 or bool((attention_mask[:, 0] == 0).any()):  # left padding: no shared start
            return self.features(input_ids, attention_mask, response_mask), 0
        same = (input_ids == input_ids[:1]).all(0).long()  # [T]: column equal in every row
        prefix = int(same.cumprod(0).sum())
        prefix = min(prefix, int(lengths.min()) - 1)  # every row keeps >= 1 token to read its feature from
        if prefix < min_prefix:
            return self.features(input_ids, attention_mask, response_mask), 0
        n = input_ids.shape[0]
        positions = torch.arange(prefix, device=input_ids.device).expand(n, prefix)
        head_out, cache = shared_prompt_cache(self.backbone, input_ids[:, :prefix], attention_mask[:, :prefix],
                                              positions, group=n, output_hidden_states=not self._plain_last)
        out = self.backbone(input_ids=input_ids[:, prefix:], attention_mask=attention_mask, use_cache=True,
                            output_hidden_states=not self._plain_last,
                            **{cache_keyword(self.backbone): cache})  # [B, T - P, H] per layer
        if self._plain_last:
            last = last_token_index(attention_mask) - prefix  # [B], always in the suffix
            return out.last_hidden_state[torch.arange(n, device=input_ids.device), last], prefix
        hidden = [torch.cat([h0.expand(n, -1, -1), h1], dim=1)
                  for h0, h1 in zip(head_out.hidden_states, out.hidden_states, strict=True)]  # [B, T, H] each
        return self._pool(hidden, input_ids, attention_mask, response_mask), prefix

    def members(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                response_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Each ensemble member's reward [B, N] (N = 1 for a single head)."""
        return self.head(self.features(input_ids, attention_mask, response_mask).to(self.head_dtype))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                response_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Rewards [B] (an ensemble's mean)."""
        return self.members(input_ids, attention_mask, response_mask).mean(-1)

    @property
    def head_dtype(self) -> torch.dtype:
        return next(self.head.parameters()).dtype

    @property
    def n_members(self) -> int:
        return self.head.out_features if isinstance(self.head, nn.Linear) else 1

    @torch.no_grad()
    def score_members(self, prompts: list, responses: list, batch_size: int = 16) -> torch.Tensor:
        """Every member's reward of (prompt, response) pairs: [N_pairs, N_members]."""
        self.eval()
        device = next(self.parameters()).device
        texts = render_texts(self.tokenizer, prompts, responses)
        chars = prompt_lengths(self.tokenizer, prompts, texts) if self.spec.needs_response_mask else None
        out = []
        for i in range(0, len(texts), batch_size):
            batch = self.encode(texts[i:i + batch_size], None if chars is None else chars[i:i + batch_size])
            out.append(self.members(**{k: v.to(device) for k, v in batch.items()}).float().cpu())
        return torch.cat(out) if out else torch.zeros(0, self.n_members)

    @torch.no_grad()
    def score(self, prompts: list, responses: list, batch_size: int = 16, normalize: bool = False,
              aggregate: str = "mean", k: float = 1.0) -> list[float]:
        """Rewards of (prompt, response) pairs; with `normalize`, (r - mean) / std of the training responses.
        An ensemble's members are combined by `aggregate` (`rlhf.losses.ensemble_score`: mean, lcb = mean
        minus k times their spread, min = the worst member)."""
        if aggregate != "mean" and self.n_members < 2:
            raise ValueError(f"aggregate {aggregate!r} needs an ensemble reward model (ensemble_size >= 2); "
                             "this one has a single head")
        out = ensemble_score(self.score_members(prompts, responses, batch_size), aggregate, k).tolist()
        if normalize:
            out = [(r - self.mean) / self.std for r in out]
        return out

    # --------------------------------------------------------------------------------- saving

    @property
    def transformers_reason(self) -> str:
        """Why AutoModelForSequenceClassification cannot compute this model's score ('' : it can)."""
        if self.head_kind != "linear":
            return "an MLP head (transformers' score is one linear layer)"
        if not self.spec.transformers_expressible:
            return (f"features {self.spec.tag()} (transformers reads the final layer's last token only)")
        return ""

    def save(self, directory: str | Path) -> None:
        """An AutoModelForSequenceClassification directory (num_labels=1) + tokenizer + reward_config.json
        when transformers can compute the score (a linear head on the final state at the last token; an
        ensemble's mean is such a head, its members go to ensemble.safetensors); otherwise the toolkit's own
        layout, which plain transformers refuses to load (no config.json) rather than scoring it wrongly."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        reason = self.transformers_reason
        if not reason:
            from transformers import AutoModelForSequenceClassification

            config = self.backbone.config.__class__.from_dict(self.backbone.config.to_dict())
            config.num_labels = 1
            config.pad_token_id = self.tokenizer.pad_token_id
            config.architectures = None
            skeleton = AutoModelForSequenceClassification.from_config(config, dtype=self.backbone.dtype)
            state = {f"{skeleton.base_model_prefix}.{k}": v for k, v in self.backbone.state_dict().items()}
            weight = self.head.weight.detach()  # [N, H]: the members' mean is one linear head
            state["score.weight"] = weight.mean(0, keepdim=True)
            skeleton.load_state_dict({k: v.to(self.backbone.dtype) for k, v in state.items()}, strict=True)
            skeleton.save_pretrained(directory, safe_serialization=True)
            if weight.shape[0] > 1:
                save_file({"weight": weight.contiguous().cpu()}, directory / "ensemble.safetensors")
        else:
            print(f"[reward] saved in the toolkit's layout (load with rlhf.reward.RewardModel.load): plain "
                  f"transformers cannot compute {reason}")
            (directory / "backbone_config.json").write_text(self.backbone.config.to_json_string())
            save_file({k: v.detach().contiguous().cpu() for k, v in self.backbone.state_dict().items()},
                      directory / "backbone.safetensors")
            save_file({k: v.detach().contiguous().cpu() for k, v in self.head.state_dict().items()},
                      directory / "head.safetensors")
            if self.lm_head is not None and not self._lm_head_tied:
                save_file({"weight": self.lm_head.weight.detach().contiguous().cpu()},
                          directory / "lm_head.safetensors")
        self.tokenizer.save_pretrained(directory)
        (directory / REWARD_CONFIG).write_text(json.dumps({
            "head": self.head_kind, "mlp_hidden": self.head[0].out_features if self.head_kind == "mlp" else None,
            "max_length": self.max_length, "mean": self.mean, "std": self.std, "backbone": self.backbone_name,
            "features": self.spec.to_dict(), "ensemble_size": self.n_members,
            "head_inputs": self.head[0].in_features if self.head_kind == "mlp" else self.head.in_features,
            "transformers": "AutoModelForSequenceClassification" if not reason
            else f"not loadable by plain transformers: {reason}",
            "lm_head_tied": self._lm_head_tied if self.lm_head is not None else None, "fit": self.fit,
        }, indent=2) + "\n")

    @property
    def _lm_head_tied(self) -> bool:
        emb = self.backbone.get_input_embeddings()
        return self.lm_head is not None and self.lm_head.weight.data_ptr() == emb.weight.data_ptr()

    @classmethod
    def load(cls, directory: str | Path, dtype: torch.dtype = torch.float32) -> "RewardModel":
        from safetensors.torch import load_file
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        directory = Path(directory)
        if not (directory / REWARD_CONFIG).is_file():
            raise FileNotFoundError(f"{directory} is not a reward model directory (no {REWARD_CONFIG})")
        meta = json.loads((directory / REWARD_CONFIG).read_text())
        if (directory / "backbone.safetensors").is_file():  # the toolkit's layout
            from transformers import AutoConfig, AutoModel

            cfg_dict = json.loads((directory / "backbone_config.json").read_text())
            config = AutoConfig.for_model(cfg_dict.pop("model_type"), **cfg_dict)
            backbone = AutoModel.from_config(config, dtype=dtype)
            backbone.load_state_dict(load_file(directory / "backbone.safetensors"), strict=True)
            head_state = load_file(directory / "head.safetensors")
        else:
            seq = AutoModelForSequenceClassification.from_pretrained(directory, dtype=dtype)
            backbone = getattr(seq, seq.base_model_prefix)
            head_state = None
            if meta["head"] == "linear":
                head_state = {"weight": (load_file(directory / "ensemble.safetensors")["weight"]
                                         if (directory / "ensemble.safetensors").is_file()
                                         else seq.score.weight.data.float())}
            else:  # written by an older version next to an all-zero score.weight
                head_state = load_file(directory / "head.safetensors")
        spec = (FeatureSpec.from_dict(meta["features"]) if "features" in meta
                else FeatureSpec.legacy(backbone.config.num_hidden_layers))
        inputs = meta.get("head_inputs") or spec.dim(backbone.config.hidden_size)
        if meta["head"] == "linear":
            head = nn.Linear(inputs, head_state["weight"].shape[0], bias=False)
        else:
            head = make_head("mlp", inputs, meta["mlp_hidden"])
        head.load_state_dict(head_state)
        lm_head = None
        if spec.logprobs:
            emb = backbone.get_input_embeddings()
            lm_head = nn.Linear(emb.weight.shape[1], emb.weight.shape[0], bias=False)
            if meta.get("lm_head_tied", True):
                lm_head.weight = emb.weight
            else:
                lm_head.load_state_dict(load_file(directory / "lm_head.safetensors"))
            lm_head.requires_grad_(False)
        tokenizer = AutoTokenizer.from_pretrained(directory)
        return cls(backbone.to(dtype), head.to(dtype), tokenizer, head_kind=meta["head"],
                   max_length=meta["max_length"], mean=meta["mean"], std=meta["std"],
                   backbone_name=meta.get("backbone", ""), spec=spec, lm_head=lm_head, fit=meta.get("fit"))
