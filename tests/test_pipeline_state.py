"""`rlhf run` state that cannot go stale: every setting that changes a stage's outputs is in its key, inputs are
keyed by content, `--only` records what a stage consumed, a re-run removes the old DONE marker and an
interrupted re-run resumes, and a person's partial labelling stops the run."""

from __future__ import annotations

import dataclasses
import importlib
import io
import json
import sys
from pathlib import Path

import pytest

from rlhf.pipeline import STAGES, run_pipeline
from rlhf.tasks.qa.examples import build_examples, demonstration, prompt_record

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def in_repo(monkeypatch):
    monkeypatch.chdir(ROOT)


def pipeline(tmp_path: Path, stages: dict) -> Path:
    import yaml

    path = tmp_path / "pipe.yaml"
    path.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "run"), "stages": stages}))
    return path


def statuses(record: dict) -> dict:
    return {k: v["status"] for k, v in record["stages"].items()}


def write_candidates(path: Path, n: int = 12, k: int = 2, swap: bool = False) -> Path:
    rows = []
    for ex in [e for e in build_examples(seed=0)[0] if e.kind == "arithmetic"][:n]:
        rec = prompt_record(ex)
        texts = [demonstration(ex), f"The answer is {int(ex.reference) + 1}.", "I do not know."][:k]
        rows.append({"prompt_id": ex.id, "prompt": rec["prompt"],
                     "candidates": [{"text": t} for t in (texts[::-1] if swap else texts)],
                     "task": {key: v for key, v in rec.items() if key != "prompt"}})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def label_stage(cands: Path, **kw) -> dict:
    return {"config": str(ROOT / "configs/tiny/label.yaml"), "candidates": str(cands), "sim_temperature": 0.0, **kw}


def reward_stage(**kw) -> dict:
    return {"config": str(ROOT / "configs/tiny/reward.yaml"), "eval_pairs": "", "global_batch_size": 4,
            "per_device_batch_size": 4, "num_epochs": 1, **kw}


# ------------------------------------------------------------------------------------------ keys


def test_every_field_of_every_stage_config_is_classified():
    from rlhf.fingerprint import OUTPUT, neutral_fields, unclassified

    for stage, (module, cls_name, _) in STAGES.items():
        cls = getattr(importlib.import_module(module), cls_name)
        names = {f.name for f in dataclasses.fields(cls)}
        assert unclassified(stage, cls) == [], f"classify {stage} fields in rlhf/fingerprint.py"
        assert not OUTPUT[stage] & neutral_fields(stage), stage
        assert OUTPUT[stage] | neutral_fields(stage) <= names, f"{stage}: names that are no field"


@pytest.mark.parametrize("key,value", [("pair_rule", "best_vs_worst"), ("keep_ties", True),
                                       ("sim_temperature", 0.5), ("sim_flip_rate", 0.5),
                                       ("human_pairs", "disjoint")])
def test_an_output_changing_label_setting_reruns_the_label_stage(tmp_path, key, value):
    cands = write_candidates(tmp_path / "c.jsonl")
    path = pipeline(tmp_path, {"label": label_stage(cands)})
    assert statuses(run_pipeline(str(path))) == {"label": "ran"}
    assert statuses(run_pipeline(str(path))) == {"label": "skipped"}
    assert statuses(run_pipeline(str(path), sets=[f"label.{key}={json.dumps(value)}"])) == {"label": "ran"}


def test_a_label_port_is_not_an_output(tmp_path):
    cands = write_candidates(tmp_path / "c.jsonl")
    path = pipeline(tmp_path, {"label": label_stage(cands)})
    run_pipeline(str(path))
    assert statuses(run_pipeline(str(path), sets=["label.port=9999"])) == {"label": "skipped"}


def test_an_input_edited_in_place_reruns_and_is_relabelled(tmp_path, capsys):
    cands = write_candidates(tmp_path / "c.jsonl")
    path = pipeline(tmp_path, {"label": label_stage(cands)})
    run_pipeline(str(path))
    write_candidates(cands, swap=True)  # same file, same size, right and wrong swapped in place
    capsys.readouterr()
    assert statuses(run_pipeline(str(path))) == {"label": "ran"}
    assert "0 reused, 12 dropped as stale (their prompt, texts or judge changed), 12 made anew" in \
        capsys.readouterr().out
    pairs = [json.loads(x) for x in (tmp_path / "run/label/pairs.jsonl").read_text().splitlines()]
    assert len(pairs) == 12
    assert all("=" in p["chosen"][0]["content"] for p in pairs)  # the right answer ("a + b = c.") every time
    done = json.loads((tmp_path / "run/label/DONE.json").read_text())
    from rlhf.fingerprint import file_digest

    assert done["inputs"]["candidates"] == file_digest(cands)


def test_reward_fn_module_and_model_directories_are_keyed_by_content(tmp_path, monkeypatch):
    from rlhf.config import load_config
    from rlhf.pipeline import key_of
    from rlhf.stages.policy import PolicyConfig

    (tmp_path / "my_reward.py").write_text("def score(p, c, r):\n    return [1.0] * len(c)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"\0" * 64)
    cfg = load_config(PolicyConfig, ROOT / "configs/tiny/policy.yaml",
                      {"reward_fn": "my_reward:score", "model_name_or_path": str(model),
                       "reward_model": str(model), "output_dir": str(tmp_path / "p")})
    first, inputs = key_of("policy", cfg)
    # reward_model names a directory that exists, but with reward_fn set it is never read: not an input
    assert set(inputs) == {"reward_fn", "model_name_or_path", "prompts"}
    (tmp_path / "my_reward.py").write_text("def score(p, c, r):\n    return [2.0] * len(c)\n")
    second, _ = key_of("policy", cfg)
    (model / "model.safetensors").write_bytes(b"\1" * 64)  # retrained: same size, new weights
    third, _ = key_of("policy", cfg)
    (model / "log.jsonl").write_text("{}\n")  # run bookkeeping is not part of the model
    assert len({first, second, third}) == 3 and key_of("policy", cfg)[0] == third
    # the probe's prompt file and gold-judge module count when the policy probes, and only then
    probe = tmp_path / "probe.jsonl"
    probe.write_text('{"prompt": "What is 1 + 1?", "reference": "2"}\n')
    probed = load_config(PolicyConfig, ROOT / "configs/tiny/policy.yaml",
                         {"reward_fn": "my_reward:score", "model_name_or_path": str(model),
                          "output_dir": str(tmp_path / "p"), "probe_every": "2", "probe_prompts": str(probe)})
    key, inputs = key_of("policy", probed)
    assert set(inputs) == {"reward_fn", "model_name_or_path", "prompts", "probe_prompts", "probe_gold_fn"}
    probe.write_text('{"prompt": "What is 1 + 2?", "reference": "3"}\n')
    assert key_of("policy", probed)[0] != key and key_of("policy", cfg)[0] == third


def test_only_records_what_the_stage_consumed(tmp_path):
    cands = write_candidates(tmp_path / "c.jsonl", k=3)
    path = pipeline(tmp_path, {"label": label_stage(cands), "reward": reward_stage()})
    assert statuses(run_pipeline(str(path))) == {"label": "ran", "reward": "ran"}
    # label's setting changed, but --only reward: the pairs on disk are those reward was trained on
    record = run_pipeline(str(path), only=["reward"], sets=["label.pair_rule=best_vs_worst"])
    assert record["stages"]["reward"]["status"] == "skipped"
    record = run_pipeline(str(path), only=["label"], sets=["label.pair_rule=best_vs_worst"])
    assert record["stages"]["label"]["status"] == "ran"
    # now the pairs changed on disk: reward runs, and its DONE.json holds the hash of the pairs it read
    record = run_pipeline(str(path), sets=["label.pair_rule=best_vs_worst"])
    assert statuses(record) == {"label": "skipped", "reward": "ran"}
    from rlhf.fingerprint import file_digest

    done = json.loads((tmp_path / "run/reward/DONE.json").read_text())
    assert done["inputs"]["train_pairs"] == file_digest(tmp_path / "run/label/pairs.jsonl")
    inputs = json.loads((tmp_path / "run/reward/inputs.json").read_text())  # written by the stage itself
    assert inputs["inputs"]["train_pairs"] == done["inputs"]["train_pairs"]


def test_a_rerun_drops_the_old_done_marker_and_an_interrupted_rerun_resumes(tmp_path, capsys):
    sft = {"config": str(ROOT / "configs/tiny/sft.yaml"), "max_steps": 4, "warmup_steps": 0, "save_every": 0}
    path = pipeline(tmp_path, {"sft": sft})
    out = tmp_path / "run" / "sft"
    assert statuses(run_pipeline(str(path))) == {"sft": "ran"}
    changed = ["sft.learning_rate=0.001"]
    record = run_pipeline(str(path), sets=changed + ["sft.stop_after_step=2"])
    assert statuses(record) == {"sft": "stopped"}
    assert not (out / "DONE.json").exists()  # the old marker must not describe the aborted run's files
    # reverting the setting: the files on disk are the aborted run's, so it runs again (not "done")
    assert statuses(run_pipeline(str(path))) == {"sft": "ran"}
    run_pipeline(str(path), sets=changed + ["sft.stop_after_step=2"])
    capsys.readouterr()
    record = run_pipeline(str(path), sets=changed)  # the changed run, interrupted: it resumes
    assert statuses(record) == {"sft": "ran"}
    assert "sft: resuming (interrupted)" in capsys.readouterr().out
    rows = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines() if x.strip()]
    assert [r["step"] for r in rows if "train/loss" in r] == [1, 2, 3, 4]
    assert statuses(run_pipeline(str(path), sets=changed)) == {"sft": "skipped"}


# ------------------------------------------------------------------------------------------ sittings


def test_a_person_who_quits_stops_the_run_until_labelling_is_finished(tmp_path, monkeypatch, capsys):
    cands = write_candidates(tmp_path / "c.jsonl")  # 12 comparisons
    path = pipeline(tmp_path, {"label": label_stage(cands, labeler="terminal"), "reward": reward_stage()})
    # sitting 1: four decisions, then quit
    monkeypatch.setattr(sys, "stdin", io.StringIO("1\n1\n1\n1\nq\n"))
    record = run_pipeline(str(path))
    assert statuses(record) == {"label": "incomplete"}
    out = capsys.readouterr().out
    assert "label is incomplete: 8 comparisons are still undecided" in out
    assert "Run the same command to continue" in out and "--partial_labels true" in out
    # nothing downstream ran (its directory may hold the run's lock file, rlhf.fsio, and nothing else)
    assert not (tmp_path / "run/label/DONE.json").exists()
    assert not [p.name for p in (tmp_path / "run/reward").glob("*") if not p.name.startswith(".")]
    # sitting 2, asked explicitly to train on the partial labels: quits at once, reward trains on 4 pairs
    monkeypatch.setattr(sys, "stdin", io.StringIO("q\n"))
    record = run_pipeline(str(path), partial_labels=True)
    assert statuses(record) == {"label": "ran", "reward": "ran"}
    assert json.loads((tmp_path / "run/label/DONE.json").read_text())["partial"] is True
    # sitting 3, without the flag: labelling goes on where it stopped (only the 8 undecided are shown)
    monkeypatch.setattr(sys, "stdin", io.StringIO("1\n" * 8))
    capsys.readouterr()
    record = run_pipeline(str(path))
    assert statuses(record) == {"label": "ran", "reward": "ran"}
    out = capsys.readouterr().out
    assert "[1/12]" not in out and "[5/12]" in out and "12 reused" not in out
    assert "4 reused, 0 dropped as stale (their prompt, texts or judge changed), 8 made anew" in out
    assert len((tmp_path / "run/label/pairs.jsonl").read_text().splitlines()) == 12
    assert json.loads((tmp_path / "run/label/DONE.json").read_text())["partial"] is False


def test_resampled_candidates_are_relabelled_not_paired_by_old_rankings(tmp_path, capsys):
    """The issue's first scenario: collect re-samples with another temperature; label must judge the new texts."""
    from rlhf.labeling.simulated import gold_scores
    from rlhf.labeling.store import read_candidates

    path = pipeline(tmp_path, {"collect": {"config": str(ROOT / "configs/tiny/collect.yaml"), "max_prompts": 8},
                               "label": {"config": str(ROOT / "configs/tiny/label.yaml"), "sim_temperature": 0.0}})
    assert statuses(run_pipeline(str(path))) == {"collect": "ran", "label": "ran"}
    def texts(c):
        return [" ".join(t.split()) for t in c.texts]

    before = {c.prompt_id: texts(c) for c in read_candidates(tmp_path / "run/collect/candidates.jsonl")}
    capsys.readouterr()
    record = run_pipeline(str(path), sets=["collect.temperature=0.7"])
    assert statuses(record) == {"collect": "ran", "label": "ran"}
    cands = {c.prompt_id: c for c in read_candidates(tmp_path / "run/collect/candidates.jsonl")}
    pairs = [json.loads(x) for x in (tmp_path / "run/label/pairs.jsonl").read_text().splitlines()]
    for p in pairs:  # every pair judged on the texts it pairs: the gold judge agrees at temperature 0
        c = cands[p["prompt_id"]]
        gold = gold_scores(c)
        assert p["chosen"][0]["content"] in c.texts and p["rejected"][0]["content"] in c.texts
        assert p["gold_chosen"] == gold[c.texts.index(p["chosen"][0]["content"])]
        assert p["gold_rejected"] == gold[c.texts.index(p["rejected"][0]["content"])]
    changed = sum(before[pid] != texts(c) for pid, c in cands.items())
    assert changed >= 4  # most prompts got other texts (a tiny model repeats itself on some)
    decisions = (tmp_path / "run/label/decisions.jsonl").read_text().splitlines()
    assert len(decisions) == 8 + changed  # 8 decisions, then one anew for each prompt whose texts changed
    assert (f"{8 - changed} reused, {changed} dropped as stale (their prompt, texts or judge changed), {changed} "
            "made anew") in capsys.readouterr().out


def test_a_stage_refused_in_a_run_keeps_the_stages_before_it_and_blocks_nothing(tmp_path, capsys):
    from rlhf.cli import main

    cands = write_candidates(tmp_path / "c.jsonl")  # 12 pairs
    # (head_fit sgd: the validated fit takes all pairs at once and has no batch to be short of)
    path = pipeline(tmp_path, {"label": label_stage(cands), "reward": reward_stage(global_batch_size=16,
                                                                                  per_device_batch_size=16,
                                                                                  head_fit="sgd")})
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()  # progress bars, then the error
    assert err[-1].startswith("rlhf run: error: train_pairs: 12 usable pairs, fewer than global_batch_size 16")
    assert not any("Traceback" in line for line in err)
    label = tmp_path / "run" / "label"
    assert (label / "DONE.json").is_file() and (label / "config.yaml").is_file() and (label / "metrics.json").is_file()
    assert not (tmp_path / "run" / "reward" / "config.yaml").exists()
    record = run_pipeline(str(path), sets=["reward.global_batch_size=4", "reward.per_device_batch_size=4"])
    assert statuses(record) == {"label": "skipped", "reward": "ran"}
