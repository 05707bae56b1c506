"""`rlhf run`: the tiny pipeline end to end, a second invocation skips every stage, a changed stage reruns
with what depends on it, an interrupted stage resumes; pipeline files fail with the key named."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rlhf.config import ConfigError
from rlhf.pipeline import config_hash, load_pipeline, stage_state

ROOT = Path(__file__).resolve().parents[1]


def rlhf_run(out: Path, *args: str) -> tuple[dict, str]:
    proc = subprocess.run([sys.executable, "-m", "rlhf.cli", "run", "configs/tiny/quickstart.yaml",
                           "--output_dir", str(out), *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "TOKENIZERS_PARALLELISM": "false"}, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((out / "pipeline.json").read_text()), proc.stdout


def statuses(record: dict) -> dict:
    return {k: v["status"] for k, v in record["stages"].items()}


@pytest.mark.slow
def test_tiny_pipeline_end_to_end_then_skips_then_reruns_what_changed(tmp_path):
    out = tmp_path / "qs"
    # First invocation, interrupted on purpose inside the policy stage.
    record, _ = rlhf_run(out, "--set", "policy.stop_after_update=3")
    assert statuses(record) == {"sft": "ran", "collect": "ran", "label": "ran", "reward": "ran", "policy": "stopped"}
    assert not (out / "policy" / "DONE.json").exists()
    # Second: the finished stages are skipped, the policy resumes from its checkpoint, evaluate runs.
    record, stdout = rlhf_run(out)
    assert statuses(record) == {"sft": "skipped", "collect": "skipped", "label": "skipped", "reward": "skipped",
                                "policy": "ran", "evaluate": "ran"}
    assert "policy: resuming (interrupted)" in stdout
    # each stage that ran records its own peak memory (rlhf.memory), in pipeline.json and the summary table
    for name in ("policy", "evaluate"):
        assert record["stages"][name]["peak_rss_mb"] == \
            json.loads((out / name / "metrics.json").read_text())["memory/peak_rss_mb"] > 0
    assert "peak MB" in stdout
    rows = [json.loads(x) for x in (out / "policy" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 7))
    report = json.loads((out / "evaluate" / "report.json").read_text())
    assert set(report["checkpoints"]) == {"sft", "policy"}
    assert "kl_k1" in report["checkpoints"]["policy"]["sampled"]
    assert record["improvement"]["sampled/reward"]["policy"]["mean"] is not None
    # Third: nothing changed, every stage is skipped.
    record, stdout = rlhf_run(out)
    assert set(statuses(record).values()) == {"skipped"}, statuses(record)
    assert stdout.count("done with the same config, skipped") == 6
    # Fourth: a changed stage runs again, nothing upstream of it does (downstream propagation through the
    # upstream hashes is checked in test_stage_state_and_hash).
    record, _ = rlhf_run(out, "--set", "evaluate.max_prompts=8")
    assert statuses(record) == {"sft": "skipped", "collect": "skipped", "label": "skipped", "reward": "skipped",
                                "policy": "skipped", "evaluate": "ran"}
    assert json.loads((out / "evaluate" / "report.json").read_text())["num_prompts"] == 8


def test_stage_state_and_hash(tmp_path):
    assert stage_state(tmp_path / "none", "h") == "new"
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "config.yaml").write_text("seed: 0\n")
    assert stage_state(tmp_path / "s", "h") == "interrupted"
    (tmp_path / "s" / "DONE.json").write_text(json.dumps({"config_hash": "h"}))
    assert stage_state(tmp_path / "s", "h") == "done" and stage_state(tmp_path / "s", "g") == "changed"
    from rlhf.pipeline import DEPENDS, STAGES

    # every stage downstream of reward depends on it, directly or through another stage
    downstream = {s for s in STAGES if "reward" in DEPENDS[s] or any("reward" in DEPENDS[d] for d in DEPENDS[s])}
    assert downstream == {"policy", "evaluate"}
    a = config_hash({"lr": 1.0, "log_every": 1}, ["u"])
    assert a == config_hash({"lr": 1.0, "log_every": 5}, ["u"])  # logging cadence does not change a result
    assert a != config_hash({"lr": 2.0, "log_every": 1}, ["u"]) and a != config_hash({"lr": 1.0}, ["v"])


def test_pipeline_file_errors_name_the_key(tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_text("output_dir: x\nstages:\n  sft: {config: configs/tiny/sft.yaml}\n  polcy: {}\n")
    with pytest.raises(ConfigError, match="unknown stage 'polcy'"):
        load_pipeline(str(bad), [])
    bad.write_text("output_dir: x\nstage: {}\n")
    with pytest.raises(ConfigError, match="unknown key"):
        load_pipeline(str(bad), [])
    with pytest.raises(ConfigError, match="STAGE.KEY=VALUE"):
        load_pipeline(str(ROOT / "configs/tiny/quickstart.yaml"), ["policy_num_updates=3"])


@pytest.mark.slow
def test_tiny_pipeline_runs_dpo_beside_policy_and_evaluates_all_three(tmp_path):
    out = tmp_path / "qs"
    proc = subprocess.run([sys.executable, "-m", "rlhf.cli", "run", "configs/tiny/quickstart_dpo.yaml",
                           "--output_dir", str(out)], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "TOKENIZERS_PARALLELISM": "false"}, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    record = json.loads((out / "pipeline.json").read_text())
    assert statuses(record) == {s: "ran" for s in ("sft", "collect", "label", "reward", "policy", "dpo", "evaluate")}
    from rlhf.config import read_yaml

    dpo = read_yaml(out / "dpo" / "config.yaml")
    assert dpo["model_name_or_path"] == str(out / "sft" / "model")  # wired to the SFT policy
    report = json.loads((out / "evaluate" / "report.json").read_text())
    assert report["names"] == ["sft", "policy", "dpo"]
    assert report["paths"]["dpo"] == str(out / "dpo" / "model")
    # the same prompts for all three: one greedy completion per prompt each
    rows = [json.loads(x) for x in (out / "evaluate" / "completions.jsonl").read_text().splitlines()]
    assert rows and all(r["dpo"]["greedy"] is not None and r["policy"]["greedy"] is not None for r in rows)
