"""SFT stage on the tiny model: learning, LoRA, resume, and one vs two processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlhf.config import load_config
from rlhf.stages.sft import SFTConfig, train

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny" / "sft.yaml"


def tiny_config(tmp_path: Path, **overrides) -> SFTConfig:
    values = {"output_dir": str(tmp_path / "run"), "dataset": str(ROOT / "reward_data/sft_train.jsonl"),
              "eval_dataset": str(ROOT / "reward_data/sft_test.jsonl"), **overrides}
    return load_config(SFTConfig, TINY, {k: str(v) if not isinstance(v, str) else v for k, v in values.items()})


def read_log(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines() if line.strip()]


def train_losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["train/loss"] for r in read_log(run_dir) if "train/loss" in r}


def test_sft_lowers_training_loss_and_writes_the_output_contract(tmp_path):
    cfg = tiny_config(tmp_path, max_steps=20)
    metrics = train(cfg)
    run = Path(cfg.output_dir)
    losses = train_losses(run)
    assert sorted(losses) == list(range(1, 21))
    first, last = sum(losses[s] for s in (1, 2, 3)) / 3, sum(losses[s] for s in (18, 19, 20)) / 3
    # A random byte-level model starts near ln(vocab) = ln(258) = 5.55; 20 steps must cut that clearly.
    assert first > 5.0 and last < first - 1.5, (first, last)
    # the output contract
    assert load_config(SFTConfig, run / "config.yaml") == cfg
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["num_processes"] == 1 and saved["train/steps"] == 20
    assert saved["eval/loss"] == pytest.approx(metrics["eval/loss"])
    assert saved["eval/perplexity"] == pytest.approx(torch.tensor(saved["eval/loss"]).exp().item(), rel=1e-6)
    assert (run / "model" / "model.safetensors").is_file() and (run / "model" / "tokenizer.json").is_file()
    assert [p.name for p in sorted((run / "checkpoints").iterdir())] == ["step-000010", "step-000020"]
    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == cfg.sample_count == 4
    questions = {json.loads(line)["prompt"][-1]["content"]
                 for line in (ROOT / "reward_data/sft_test.jsonl").read_text().splitlines()}
    assert all(s["prompt"] in questions and s["reference"] for s in samples)
    # eval at step 0 is the baseline, logged before any training step
    assert read_log(run)[0]["step"] == 0 and saved["eval/loss_at_start"] > saved["eval/loss"]
    # the artefact loads with plain transformers
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(run / "model")
    assert model.config.num_hidden_layers == 2


def test_existing_run_is_not_overwritten_by_accident(tmp_path):
    from rlhf.runs import RunExistsError

    train(tiny_config(tmp_path, max_steps=2, save_every=0))
    with pytest.raises(RunExistsError, match="already holds a run"):
        train(tiny_config(tmp_path, max_steps=2, save_every=0))
    train(tiny_config(tmp_path, max_steps=2, save_every=0, overwrite=True))


def test_lora_keeps_base_weights_bit_identical_and_the_adapter_reloads(tmp_path):
    from rlhf.models import load_model, quiet_peft, resolve_model_path

    base_before = load_file(Path(resolve_model_path("tiny-llama")) / "model.safetensors")
    cfg = load_config(SFTConfig, ROOT / "configs/tiny/sft_lora.yaml",
                      {"output_dir": str(tmp_path / "lora"), "max_steps": "10"})
    train(cfg)
    adapter_dir = Path(cfg.output_dir) / "model"
    assert (adapter_dir / "adapter_config.json").is_file()
    assert json.loads((adapter_dir / "adapter_config.json").read_text())["base_model_name_or_path"] == "tiny-llama"

    model = load_model(str(adapter_dir))  # base resolved from adapter_config.json
    merged_names = set()
    for name, param in model.named_parameters():
        if "lora_" in name:
            continue
        key = name.replace("base_model.model.", "").replace(".base_layer", "")
        assert torch.equal(param, base_before[key]), f"base weight {key} changed"
        merged_names.add(key)
    assert merged_names == set(base_before)
    lora_b = {n: p for n, p in model.named_parameters() if "lora_B" in n}
    assert lora_b and any(p.abs().max() > 0 for p in lora_b.values()), "LoRA B starts at zero and must move"

    # reloaded adapter == the trained model, in logits
    ids = torch.tensor([[10, 20, 30, 40, 50, 60]])
    trained = load_model("tiny-llama")
    from peft import PeftModel

    with quiet_peft():  # peft reads a property transformers 5 deprecated (rlhf.models.quiet_peft)
        trained = PeftModel.from_pretrained(trained, adapter_dir)
    with torch.no_grad():
        a = model(input_ids=ids).logits
        b = trained(input_ids=ids).logits
        base = load_model("tiny-llama")(input_ids=ids).logits
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    assert (a - base).abs().max() > 1e-3, "the adapter must change the output"


def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    # LoRA dropout on, so that restoring the RNG matters too.
    overrides = {"max_steps": 12, "save_every": 0, "use_peft": True, "lora_dropout": 0.1, "lora_r": 4,
                 "learning_rate": 5e-3}
    full = tiny_config(tmp_path / "full", **overrides)
    train(full)
    part = tiny_config(tmp_path / "part", **overrides, stop_after_step=5)
    assert train(part) == {"stopped_at_step": 5}
    assert sorted(train_losses(Path(part.output_dir))) == [1, 2, 3, 4, 5]
    resumed = tiny_config(tmp_path / "part", **overrides, resume=True)
    train(resumed)
    a, b = train_losses(Path(full.output_dir)), train_losses(Path(part.output_dir))
    assert sorted(b) == list(range(1, 13))
    for step in range(6, 13):
        assert abs(a[step] - b[step]) < 1e-5, (step, a[step], b[step])
    wa = load_file(Path(full.output_dir) / "model" / "adapter_model.safetensors")
    wb = load_file(Path(part.output_dir) / "model" / "adapter_model.safetensors")
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-5, rtol=0)


def test_resume_refuses_a_changed_config(tmp_path):
    from rlhf.config import ConfigError

    train(tiny_config(tmp_path, max_steps=6, save_every=0, stop_after_step=3))
    with pytest.raises(ConfigError, match="learning_rate"):
        train(tiny_config(tmp_path, max_steps=6, save_every=0, resume=True, learning_rate=0.5))


def test_uneven_batch_split_fails_at_start(tmp_path):
    from rlhf.config import ConfigError

    with pytest.raises(ConfigError, match="per_device_batch_size 3"):
        train(tiny_config(tmp_path, per_device_batch_size=3))


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
    """Same global batch (8): 1 process x 2 accumulation x 4, vs 2 processes x 1 x 4 (gloo, on the CPU).

    Tolerance 1e-5 on every logged loss and on the final weights: the two runs differ only in the order of
    float sums (all-reduce vs accumulation), which moves values by ~1e-7 here; a wrong normalisation (mean
    per rank instead of per global batch) or a duplicated/dropped shard moves them by > 1e-3.
    """
    args = ["--config", str(TINY), "--max_steps", "8", "--save_every", "0",
            "--dataset", str(ROOT / "reward_data/sft_train.jsonl"),
            "--eval_dataset", str(ROOT / "reward_data/sft_test.jsonl")]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    one = tmp_path / "one"
    two = tmp_path / "two"
    subprocess.run([sys.executable, str(ROOT / "scripts/sft.py"), *args, "--output_dir", str(one)],
                   check=True, env=env, cwd=ROOT, capture_output=True)
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                "--main_process_port", "29533"]
    proc = subprocess.run([*launcher, str(ROOT / "scripts/sft.py"), *args, "--output_dir", str(two)],
                          env=env, cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m1 = json.loads((one / "metrics.json").read_text())
    m2 = json.loads((two / "metrics.json").read_text())
    assert (m1["num_processes"], m2["num_processes"]) == (1, 2)
    assert (m1["train/grad_accum"], m2["train/grad_accum"]) == (2, 1)
    l1, l2 = train_losses(one), train_losses(two)
    assert sorted(l1) == sorted(l2) == list(range(1, 9))
    for step in l1:
        assert abs(l1[step] - l2[step]) < 1e-5, (step, l1[step], l2[step])
    assert abs(m1["eval/loss"] - m2["eval/loss"]) < 1e-5
    w1 = load_file(one / "model" / "model.safetensors")
    w2 = load_file(two / "model" / "model.safetensors")
    for k in w1:
        torch.testing.assert_close(w1[k], w2[k], atol=1e-5, rtol=0)


def test_tensorboard_tracking_writes_event_files(tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is in the dev extras; install with .[dev]")
    cfg = tiny_config(tmp_path, max_steps=3, save_every=0, report_to="tensorboard")
    train(cfg)
    events = list(Path(cfg.output_dir).rglob("events.out.tfevents.*"))
    assert events, "no TensorBoard event file written"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    losses = [e.value for e in acc.Scalars("train/loss")]
    logged = [r["train/loss"] for r in read_log(Path(cfg.output_dir)) if "train/loss" in r]
    assert losses == pytest.approx(logged, rel=1e-6)


def test_missing_tracker_package_is_a_config_error(monkeypatch):
    import importlib.util

    from rlhf.config import ConfigError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match="report_to 'wandb' needs the wandb package"):
        load_config(SFTConfig, None, {"report_to": "wandb"})


def test_full_fine_tuning_can_start_from_a_lora_adapter(tmp_path):
    """An adapter directory as model_name_or_path with use_peft false trains the merged model."""
    lora = load_config(SFTConfig, ROOT / "configs/tiny/sft_lora.yaml",
                       {"output_dir": str(tmp_path / "lora"), "max_steps": "3"})
    train(lora)
    full = tiny_config(tmp_path / "full", model_name_or_path=str(Path(lora.output_dir) / "model"),
                       max_steps=2, save_every=0, use_peft=False)
    metrics = train(full)
    assert metrics["train/trainable_parameters"] == 90_560  # every weight of the tiny model trains
    assert (Path(full.output_dir) / "model" / "model.safetensors").is_file()
    assert not (Path(full.output_dir) / "model" / "adapter_config.json").exists()
