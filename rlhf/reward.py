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
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from rlhf.losses import last_token_index
from rlhf.models import cache_keyword, shared_prompt_cache

REWARD_CONFIG = "reward_config.json"


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
                 mean: float = 0.0, std: float = 1.0, backbone_name: str = ""):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.tokenizer = tokenizer
        self.head_kind = head_kind
        self.max_length = max_length
        self.mean, self.std = mean, std
        self.backbone_name = backbone_name

    # --------------------------------------------------------------------------------- building

    @classmethod
    def from_backbone(cls, name: str, *, head: str = "linear", mlp_hidden: int = 256, max_length: int = 512,
                      seed: int = 0, dtype: torch.dtype = torch.float32) -> "RewardModel":
        """A fresh head on the base model (no LM head) of any causal LM the loader accepts."""
        from rlhf.models import load_model, load_tokenizer

        lm = load_model(name, dtype=dtype)
        if hasattr(lm, "peft_config"):
            lm = lm.merge_and_unload()  # an SFT adapter: its merged weights are the backbone
        backbone = getattr(lm, lm.base_model_prefix)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            head_module = make_head(head, backbone.config.hidden_size, mlp_hidden)
        return cls(backbone, head_module, load_tokenizer(name), head_kind=head, max_length=max_length,
                   backbone_name=name)

    def freeze_backbone(self, unfreeze_top_layers: int = 0) -> None:
        """Freeze the backbone, except its top `unfreeze_top_layers` blocks (and final norm if any)."""
        self.backbone.requires_grad_(False)
        if unfreeze_top_layers > 0:
            for block in layer_stack(self.backbone)[-unfreeze_top_layers:]:
                block.requires_grad_(True)
            for name in ("norm", "ln_f", "final_layernorm"):
                if isinstance(getattr(self.backbone, name, None), nn.Module):
                    getattr(self.backbone, name).requires_grad_(True)

    # --------------------------------------------------------------------------------- scoring

    def encode(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Right-padded token ids and attention mask [B, T]; texts longer than max_length are cut on the left
        (the end of the response, where the head reads, is kept)."""
        ids = [self.tokenizer(t, add_special_tokens=False)["input_ids"][-self.max_length:] for t in texts]
        width = max(map(len, ids))
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((len(ids), width), pad, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for i, x in enumerate(ids):
            input_ids[i, : len(x)] = torch.tensor(x)
            mask[i, : len(x)] = 1
        return {"input_ids": input_ids, "attention_mask": mask}

    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Final hidden state at each row's last real token: [B, T] -> [B, H]."""
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # [B, T, H]
        last = last_token_index(attention_mask)  # [B]
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]

    @torch.no_grad()
    def features_shared_prefix(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                               min_prefix: int = 8) -> tuple[torch.Tensor, int]:
        """`features` of right-padded rows, with the rows' common token prefix run once: [B, T] -> ([B, H], P).

        Rendered conversations share their opening (the chat template's system turn, often the question's
        start too), which is 40% of the tokens of the built-in task's texts. The prefix goes through the
        backbone once with batch 1, its key/value cache is repeated over the rows, and only the B suffixes
        are run, attending to it. Same features as `features` up to float rounding (tested); P is the prefix
        length used (0: a plain forward, when the rows share fewer than `min_prefix` tokens or one row is all
        prefix). For frozen-feature extraction only: no gradient flows.
        """
        lengths = attention_mask.sum(1)
        if input_ids.shape[0] < 2 or bool((attention_mask[:, 0] == 0).any()):  # left padding: no shared start
            return self.features(input_ids, attention_mask), 0
        same = (input_ids == input_ids[:1]).all(0).long()  # [T]: column equal in every row
        prefix = int(same.cumprod(0).sum())
        prefix = min(prefix, int(lengths.min()) - 1)  # every row keeps >= 1 token to read its feature from
        if prefix < min_prefix:
            return self.features(input_ids, attention_mask), 0
        positions = torch.arange(prefix, device=input_ids.device).expand(input_ids.shape[0], prefix)
        _, cache = shared_prompt_cache(self.backbone, input_ids[:, :prefix], attention_mask[:, :prefix], positions,
                                       group=input_ids.shape[0])  # the prefix once, its cache for every row
        hidden = self.backbone(input_ids=input_ids[:, prefix:], attention_mask=attention_mask, use_cache=True,
                               **{cache_keyword(self.backbone): cache}).last_hidden_state  # [B, T - P, H]
        last = last_token_index(attention_mask) - prefix  # [B]
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last], prefix

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Rewards [B]."""
        return self.head(self.features(input_ids, attention_mask).to(self.head_dtype)).squeeze(-1)

    @property
    def head_dtype(self) -> torch.dtype:
        return next(self.head.parameters()).dtype

    @torch.no_grad()
    def score(self, prompts: list, responses: list, batch_size: int = 16, normalize: bool = False) -> list[float]:
        """Rewards of (prompt, response) pairs; with `normalize`, (r - mean) / std of the training responses."""
        self.eval()
        device = next(self.parameters()).device
        texts = render_texts(self.tokenizer, prompts, responses)
        out = []
        for i in range(0, len(texts), batch_size):
            batch = {k: v.to(device) for k, v in self.encode(texts[i:i + batch_size]).items()}
            out += self(**batch).float().tolist()
        if normalize:
            out = [(r - self.mean) / self.std for r in out]
        return out

    # --------------------------------------------------------------------------------- saving

    def save(self, directory: str | Path) -> None:
        """An AutoModelForSequenceClassification directory (num_labels=1) + tokenizer + reward_config.json."""
        from transformers import AutoModelForSequenceClassification

        directory = Path(directory)
        config = self.backbone.config.__class__.from_dict(self.backbone.config.to_dict())
        config.num_labels = 1
        config.pad_token_id = self.tokenizer.pad_token_id
        config.architectures = None
        skeleton = AutoModelForSequenceClassification.from_config(config, dtype=self.backbone.dtype)
        state = {f"{skeleton.base_model_prefix}.{k}": v for k, v in self.backbone.state_dict().items()}
        if self.head_kind == "linear":
            state["score.weight"] = self.head.weight.detach()
        else:  # an MLP does not fit transformers' linear `score`; only RewardModel.load reads it
            state["score.weight"] = torch.zeros(1, config.hidden_size)
            from safetensors.torch import save_file

            directory.mkdir(parents=True, exist_ok=True)
            save_file({k: v.contiguous() for k, v in self.head.state_dict().items()}, directory / "head.safetensors")
        skeleton.load_state_dict({k: v.to(self.backbone.dtype) for k, v in state.items()}, strict=True)
        skeleton.save_pretrained(directory, safe_serialization=True)
        self.tokenizer.save_pretrained(directory)
        (directory / REWARD_CONFIG).write_text(json.dumps({
            "head": self.head_kind, "mlp_hidden": self.head[0].out_features if self.head_kind == "mlp" else None,
            "max_length": self.max_length, "mean": self.mean, "std": self.std, "backbone": self.backbone_name,
        }, indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | Path, dtype: torch.dtype = torch.float32) -> "RewardModel":
        from safetensors.torch import load_file
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        directory = Path(directory)
        if not (directory / REWARD_CONFIG).is_file():
            raise FileNotFoundError(f"{directory} is not a reward model directory (no {REWARD_CONFIG})")
        meta = json.loads((directory / REWARD_CONFIG).read_text())
        seq = AutoModelForSequenceClassification.from_pretrained(directory, dtype=dtype)
        backbone = getattr(seq, seq.base_model_prefix)
        if meta["head"] == "linear":
            head = nn.Linear(backbone.config.hidden_size, 1, bias=False)
            head.weight.data.copy_(seq.score.weight.data.float())
        else:
            head = make_head("mlp", backbone.config.hidden_size, meta["mlp_hidden"])
            head.load_state_dict(load_file(directory / "head.safetensors"))
        tokenizer = AutoTokenizer.from_pretrained(directory)
        return cls(backbone, head.to(dtype), tokenizer, head_kind=meta["head"], max_length=meta["max_length"],
                   mean=meta["mean"], std=meta["std"], backbone_name=meta.get("backbone", ""))
