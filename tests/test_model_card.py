"""Every saved model/ carries a README.md model card: the hub/TRL metadata header, the resolved training
config and the final metrics (rlhf/model_card.py, written by RunLogger.finish)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from rlhf.config import load_config
from rlhf.model_card import metadata, read_metadata
from rlhf.stages.sft import SFTConfig, train

ROOT = Path(__file__).resolve().parents[1]


def card_sections(model_dir: Path) -> tuple[dict, dict, str]:
    text = (model_dir / "README.md").read_text()
    config_yaml = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    return read_metadata(model_dir), yaml.safe_load(config_yaml), text


def test_sft_full_and_lora_models_carry_a_card_with_header_config_and_metrics(tmp_path):
    for name, extra in (("full", {}), ("lora", {"use_peft": "true", "lora_r": "4"})):
        cfg = load_config(SFTConfig, ROOT / "configs/tiny/sft.yaml", {
            "output_dir": str(tmp_path / name), "max_steps": "3", "save_every": "0", "sample_count": "0",
            "dataset": str(ROOT / "reward_data/sft_train.jsonl"),
            "eval_dataset": str(ROOT / "reward_data/sft_test.jsonl"), **extra})
        metrics = train(cfg)
        meta, config, text = card_sections(tmp_path / name / "model")
        assert meta["library_name"] == ("peft" if extra else "transformers")
        assert meta["tags"][:3] == ["rlhf", "sft", "trl"] and ("lora" in meta["tags"]) == bool(extra)
        assert meta["pipeline_tag"] == "text-generation" and meta["model_name"] == name
        assert "base_model" not in meta  # tiny-llama is a random test model with no hub base
        assert "datasets" not in meta  # local files are listed in the body only
        assert f"- `{ROOT / 'reward_data/sft_train.jsonl'}`" in text
        # the card's config is the resolved one but for how the run was started (resume, overwrite), and
        # loads back to it
        resolved = yaml.safe_load((tmp_path / name / "config.yaml").read_text())
        assert config == {k: v for k, v in resolved.items() if k not in ("resume", "overwrite")}
        assert load_config(SFTConfig, None, {k: json.dumps(v) if isinstance(v, list) else str(v)
                                             for k, v in config.items()}) == cfg
        saved = json.loads((tmp_path / name / "metrics.json").read_text())
        assert saved == metrics
        assert f"| eval/loss | {metrics['eval/loss']:.6g} |" in text
        assert "| train/steps | 3 |" in text


def test_header_names_hub_base_models_and_data_sets(tmp_path):
    (tmp_path / "adapter_config.json").write_text("{}")
    cfg = SFTConfig(model_name_or_path="smollm2-135m-instruct", dataset="trl-lib/Capybara",
                    eval_dataset="reward_data/sft_test.jsonl", output_dir=str(tmp_path / "my-run"))
    meta = metadata(tmp_path, cfg, "sft")
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert meta["datasets"] == ["trl-lib/Capybara"] and meta["library_name"] == "peft"
    assert meta["model_name"] == "my-run"


def test_the_card_leaves_out_what_the_invocation_measured(tmp_path):
    """Timings, memory and this invocation's feature-cache misses differ between a resumed and an
    uninterrupted run of the same model; the card leaves them out (metrics.json keeps them)."""
    from rlhf.model_card import render

    cfg = SFTConfig(output_dir=str(tmp_path / "run"))
    metrics = {"eval/loss": 1.25, "sft/seconds": 3.5, "memory/peak_rss_mb": 900.0, "time/update_seconds": 1.0,
               "reward/features_computed": 29, "reward/extract_seconds": 2.0, "train/steps": 3}
    text = render(tmp_path, cfg, "sft", metrics)
    assert "| eval/loss | 1.25 |" in text and "| train/steps | 3 |" in text
    for key in ("sft/seconds", "memory/peak_rss_mb", "time/update_seconds", "features_computed", "extract_seconds"):
        assert key not in text, key
