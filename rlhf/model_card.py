"""Model cards: a README.md in every saved `model/`, with the metadata header that the hub and TRL write.

    ---
    base_model: HuggingFaceTB/SmolLM2-135M-Instruct
    library_name: transformers            # peft for a LoRA adapter directory
    model_name: sft
    pipeline_tag: text-generation         # text-classification for a reward model
    tags: [rlhf, sft, trl, ...]
    datasets: [...]                       # hub data sets only (local files are listed in the body)
    ---
    # <stage> model trained with rlhf
    ... the resolved training config (YAML) and the final metrics (a table).

`RunLogger.finish` writes it (`write_for_run`) once the run's final metrics are known, into
`<output_dir>/model/` when the stage saved one; a checkpoint's `model/` carries none.
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path
from typing import Any

import yaml

from rlhf.fsio import atomic_write_text

# Aliases of embedded / test models -> the hub id the weights come from (None: no hub base).
HUB_IDS = {"smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct", "tiny-llama": None}
# Config fields that name training or evaluation data, in any stage.
DATA_FIELDS = ("dataset", "eval_dataset", "train_pairs", "eval_pairs", "prompts", "candidates")
LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv", ".txt")


def _method_tags(stage: str, cfg: Any) -> list[str]:
    if stage == "policy":
        return {"loo": ["rloo"], "group": ["grpo"], "gae": ["ppo"], "mean": ["reinforce"]}.get(
            getattr(cfg, "baseline", ""), [])
    return {"reward": ["reward-model"], "sft": ["sft"], "dpo": ["dpo"]}.get(stage, [])


def _is_hub_name(name: str) -> bool:
    return (name.count("/") == 1 and not name.startswith((".", "/")) and not name.endswith(LOCAL_SUFFIXES)
            and not Path(name).exists())


def data_sources(cfg: Any) -> list[str]:
    """Every data source the config names (comma-separated lists split), in field order, once each."""
    out: list[str] = []
    for field in DATA_FIELDS:
        value = getattr(cfg, field, None)
        for part in (value.split(",") if isinstance(value, str) else []):
            if part.strip() and part.strip() not in out:
                out.append(part.strip())
    return out


def metadata(model_dir: Path, cfg: Any, stage: str) -> dict[str, Any]:
    """The card's YAML header."""
    base = getattr(cfg, "model_name_or_path", None)
    base = HUB_IDS.get(base, base)
    adapter = (model_dir / "adapter_config.json").is_file()
    reward_model = (model_dir / "reward_config.json").is_file()
    meta: dict[str, Any] = {}
    if base:
        meta["base_model"] = base
    meta["library_name"] = "peft" if adapter else "transformers"
    meta["model_name"] = Path(getattr(cfg, "output_dir", model_dir.parent)).name
    if reward_model or stage in ("sft", "policy", "dpo"):
        meta["pipeline_tag"] = "text-classification" if reward_model else "text-generation"
    meta["tags"] = ["rlhf", stage, "trl", *_method_tags(stage, cfg)] + (["lora"] if adapter else [])
    hub = [d for d in data_sources(cfg) if _is_hub_name(d)]
    if hub:
        meta["datasets"] = hub
    return meta


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}" if math.isfinite(v) else str(v)
    return str(v)


# What a run measured of the machine rather than of the model (timings, rates, memory, the feature-cache misses
# of this invocation): metrics.json keeps them;
# the card describes the model, and so reads the same for a resumed run as for an uninterrupted one.
_MEASURED = re.compile(r"(seconds|per_second|^time/|^memory/|features_computed)")


def render(model_dir: Path, cfg: Any, stage: str, metrics: dict[str, Any]) -> str:
    meta = metadata(model_dir, cfg, stage)
    # the training config, without how this invocation was started (a resumed run trained the same model)
    config = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("resume", "overwrite")}
    lines = ["---", yaml.safe_dump(meta, sort_keys=False).rstrip(), "---", "",
             f"# {meta['model_name']}: {stage} model trained with rlhf", ""]
    lines.append(f"Trained with `rlhf {stage}` from `{getattr(cfg, 'model_name_or_path', '?')}`"
                 + (" (LoRA adapter; load it with peft on the base model)." if meta["library_name"] == "peft"
                    else "."))
    sources = data_sources(cfg)
    if sources:
        lines += ["", "## Data", ""] + [f"- `{s}`" for s in sources]
    lines += ["", "## Final metrics", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in metrics.items() if isinstance(v, (int, float, str))
              and not isinstance(v, bool) and k != "model_dir" and not _MEASURED.search(k)]
    lines += ["", "## Training config", "",
              f"Resolved config (`rlhf {stage} --config config.yaml` reproduces the run):", "", "```yaml",
              yaml.safe_dump(config, sort_keys=False).rstrip(), "```", ""]
    return "\n".join(lines)


def write(model_dir: str | Path, cfg: Any, stage: str, metrics: dict[str, Any]) -> Path:
    """Write `model_dir/README.md` (replacing the template peft writes for an adapter)."""
    path = Path(model_dir) / "README.md"
    atomic_write_text(path, render(Path(model_dir), cfg, stage, metrics), what="model_card")
    return path


def write_for_run(cfg: Any, project: str, metrics: dict[str, Any]) -> Path | None:
    """The card of `<output_dir>/model/` if the run saved one (`project` is the logger's, 'rlhf-<stage>')."""
    model_dir = Path(cfg.output_dir) / "model"
    if not model_dir.is_dir():
        return None
    return write(model_dir, cfg, project.removeprefix("rlhf-"), metrics)


def read_metadata(model_dir: str | Path) -> dict[str, Any]:
    """The YAML header of a model card (for tests and tools)."""
    text = (Path(model_dir) / "README.md").read_text(encoding="utf-8")
    if not text.startswith("---\n"):
        raise ValueError(f"{model_dir}/README.md has no metadata header")
    return yaml.safe_load(text[4:text.index("\n---", 4)])

