"""Trackers: report_to takes accelerate's tracker names; the policy stage's rollouts and the evaluation's
report and completions reach the tracker as tables (read back here from tensorboard's event files)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlhf.config import ConfigError, load_config
from rlhf.stages.sft import SFTConfig

ROOT = Path(__file__).resolve().parents[1]


def test_report_to_takes_accelerates_names_and_lists():
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    assert "trackio" in LOGGER_TYPE_TO_CLASS  # the names come from accelerate
    # a list: accepted where every tracker's package is installed, else refused naming the missing one (the dev
    # extras install tensorboard only; wandb comes with the tracking extra)
    import importlib.util

    if importlib.util.find_spec("wandb") is not None:
        assert load_config(SFTConfig, None, {"report_to": "tensorboard,wandb"}).report_to == "tensorboard,wandb"
    else:
        with pytest.raises(ConfigError, match="report_to 'tensorboard,wandb' needs the wandb package"):
            load_config(SFTConfig, None, {"report_to": "tensorboard,wandb"})
    with pytest.raises(ConfigError, match=r"'tensorbord' is not one of accelerate's trackers .*trackio"):
        load_config(SFTConfig, None, {"report_to": "tensorbord"})
    with pytest.raises(ConfigError, match="report_to 'swanlab' needs the swanlab package"):
        load_config(SFTConfig, None, {"report_to": "swanlab"})  # known to accelerate, not installed here


def test_trl_report_to_list_is_read(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("report_to: [tensorboard]\n")
    assert load_config(SFTConfig, path).report_to == "tensorboard"


def text_tables(run: Path) -> dict[str, list[tuple[int, str]]]:
    """tag -> [(step, markdown)] of every text summary under run/ (tensorboard's own reader)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tables: dict[str, list[tuple[int, str]]] = {}
    for events in sorted(run.rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"tensors": 0})
        acc.Reload()
        for tag in acc.Tags()["tensors"]:
            for e in acc.Tensors(tag):
                text = b"".join(e.tensor_proto.string_val).decode()
                tables.setdefault(tag.removesuffix("/text_summary"), []).append((e.step, text))
    return tables


def rows_of(markdown: str) -> list[list[str]]:
    lines = markdown.split("\n")[2:]  # header and rule
    return [[c.strip() for c in line.strip("|").split(" | ")] for line in lines]


def test_policy_rollout_table_reaches_tensorboard(tmp_path):
    from rlhf.stages.policy import PolicyConfig, train

    cfg = load_config(PolicyConfig, ROOT / "configs/tiny/policy.yaml", {
        "output_dir": str(tmp_path / "run"), "prompts": str(ROOT / "reward_data/prompts_train.jsonl"),
        "num_updates": "2", "max_new_tokens": "8", "sample_every": "1", "report_to": "tensorboard"})
    train(cfg)
    tables = text_tables(tmp_path / "run")
    assert [step for step, _ in tables["policy/rollouts"]] == [1, 2]
    logged = [json.loads(line) for line in (tmp_path / "run/log.jsonl").read_text().splitlines()]
    for (step, md), row in zip(tables["policy/rollouts"], logged):
        rows = rows_of(md)
        assert len(rows) == cfg.prompts_per_update * cfg.k  # one process: every rollout of the update
        scores = [float(r[-2]) for r in rows]
        # the table's scores are the ones the update logged
        assert sum(scores) / len(scores) == pytest.approx(row["objective/scores"], abs=1e-6)


def test_evaluation_report_and_completions_reach_tensorboard(tmp_path):
    from rlhf.stages.evaluate import EvaluateConfig, run

    cfg = load_config(EvaluateConfig, ROOT / "configs/tiny/evaluate.yaml", {
        "checkpoints": ["tiny-llama"], "names": ["base"], "output_dir": str(tmp_path / "eval"),
        "prompts": str(ROOT / "reward_data/prompts_test.jsonl"), "max_prompts": "4", "report_to": "tensorboard"})
    run(cfg)
    tables = text_tables(tmp_path / "eval")
    completions = [json.loads(line) for line in (tmp_path / "eval/completions.jsonl").read_text().splitlines()]
    logged = rows_of(tables["evaluate/completions"][0][1])
    assert [r[0] for r in logged] == [c["prompt_id"] for c in completions]
    assert [r[3] for r in logged] == [" ".join(c["base"]["greedy"].replace("|", "\\|").split()) for c in completions]
    report = json.loads((tmp_path / "eval/report.json").read_text())
    header = tables["evaluate/report"][0][1].splitlines()[0]
    (row,) = rows_of(tables["evaluate/report"][0][1])
    assert row[0] == "base" and report["names"] == ["base"]
    from rlhf.stages.evaluate import flat_summary

    summary = flat_summary(report["checkpoints"]["base"])
    assert header == "| " + " | ".join(["checkpoint", *summary]) + " |"
    assert len(row) == 1 + len(summary)


def test_tables_go_to_each_tracker_in_its_form(capsys):
    """log_table's dispatch: a tracker with log_table (wandb, clearml) gets the rows; tensorboard a markdown
    table; a tracker without tables a one-time notice."""
    from types import SimpleNamespace

    from rlhf.trackers import log_table

    got = {}

    class WithTable:
        name = "wandb"

        def log_table(self, table_name, columns, data, step):
            got["wandb"] = (table_name, columns, data, step)

    class Writer:
        def add_text(self, tag, text, global_step):
            got["tensorboard"] = (tag, text, global_step)

        def flush(self):
            pass

    tensorboard = SimpleNamespace(name="tensorboard", writer=Writer())
    other = SimpleNamespace(name="aim")
    acc = SimpleNamespace(is_main_process=True, trackers=[WithTable(), tensorboard, other])
    log_table(acc, "t", ["a", "b"], [[1, "x|y\nz"]], step=3)
    assert got["tensorboard"][1].endswith("| 1 | x\\|y z |")  # one line per row, pipes escaped
    log_table(acc, "t", ["a", "b"], [[2, "w"]], step=4)
    assert got["wandb"] == ("t", ["a", "b"], [[2, "w"]], 4)
    assert got["tensorboard"] == ("t", "| a | b |\n|---|---|\n| 2 | w |", 4)
    assert capsys.readouterr().err.count("the aim tracker takes no tables") == 1
    log_table(SimpleNamespace(is_main_process=False, trackers=[WithTable()]), "u", ["a"], [[0]], step=1)
    assert got["wandb"][0] == "t"  # other processes send nothing


TRACKIO_RUN = """
import json, sys
from rlhf.config import load_config
from rlhf.stages.policy import PolicyConfig, train
from trackio.sqlite_storage import SQLiteStorage

cfg = load_config(PolicyConfig, sys.argv[1], {
    "output_dir": sys.argv[2], "prompts": sys.argv[3], "num_updates": "2", "max_new_tokens": "8",
    "sample_every": "1", "report_to": "trackio"})
train(cfg)
(run,) = SQLiteStorage.get_runs("rlhf-policy")
print("LOGS " + json.dumps(SQLiteStorage.get_logs("rlhf-policy", run)))
"""


def test_policy_rollout_table_reaches_trackio(tmp_path):
    """trackio, offline (its local SQLite store under TRACKIO_DIR, read at its import: hence a process of its
    own): the rollout table of each update is read back with trackio's own storage reader."""
    import os
    import subprocess
    import sys

    pytest.importorskip("trackio")
    env = {**os.environ, "TRACKIO_DIR": str(tmp_path / "trackio"), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", TRACKIO_RUN, str(ROOT / "configs/tiny/policy.yaml"),
                          str(tmp_path / "run"), str(ROOT / "reward_data/prompts_train.jsonl")],
                         env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    (logs,) = [json.loads(line[5:]) for line in out.stdout.splitlines() if line.startswith("LOGS ")]
    assert "Reserved keys renamed" not in out.stderr  # the metrics' names are trackio's to take
    from rlhf.stages.policy import PolicyConfig

    cfg = load_config(PolicyConfig, ROOT / "configs/tiny/policy.yaml")
    tables = [(row["step"], row["policy/rollouts"]) for row in logs if "policy/rollouts" in row]
    assert [step for step, _ in tables] == [1, 2]
    logged = [json.loads(line) for line in (tmp_path / "run/log.jsonl").read_text().splitlines()]
    for (step, table), row in zip(tables, logged):
        assert table["_type"] == "trackio.table"
        rows = table["_value"]
        assert [list(r) for r in rows[:1]] == [["prompt", "response", "score", "kl"]]
        assert len(rows) == cfg.prompts_per_update * cfg.k  # one process: every rollout of the update
        # the table's scores are the ones the update logged
        assert sum(r["score"] for r in rows) / len(rows) == pytest.approx(row["objective/scores"], abs=1e-6)
    # the scalars went to the same run
    assert any("objective/scores" in row for row in logs)
