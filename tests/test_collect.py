"""Collection: reproducible sampling, candidate bookkeeping, resume, bad prompts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rlhf.config import load_config
from rlhf.data import DataError
from rlhf.rollout import completion_lengths
from rlhf.stages.collect import CollectConfig, run

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny" / "collect.yaml"


def collect(tmp_path: Path, name: str, **overrides) -> list[dict]:
    values = {"output_dir": str(tmp_path / name), "prompts": str(ROOT / "reward_data/prompts_train.jsonl"),
              **{k: str(v) for k, v in overrides.items()}}
    cfg = load_config(CollectConfig, TINY, values)
    run(cfg)
    return [json.loads(line) for line in (Path(cfg.output_dir) / "candidates.jsonl").read_text().splitlines()]


def texts(rows: list[dict]) -> list[list[str]]:
    return [[c["text"] for c in r["candidates"]] for r in rows]


def test_completion_lengths_use_the_first_eos_even_when_pad_is_eos():
    eos = 7
    generated = torch.tensor([
        [3, 4, eos, eos, eos],  # ended after 3 tokens; the rest is padding (pad == eos)
        [3, 4, 5, 6, 8],  # ran out of tokens
        [eos, eos, eos, eos, eos],  # EOS straight away
    ])
    lengths, ended = completion_lengths(generated, eos)
    assert lengths == [3, 5, 1] and ended == [True, False, True]


def test_same_seed_same_candidates_different_seed_different(tmp_path):
    a = collect(tmp_path, "a", seed=0)
    b = collect(tmp_path, "b", seed=0)
    c = collect(tmp_path, "c", seed=1)
    assert texts(a) == texts(b)
    assert texts(a) != texts(c)
    assert len(a) == 16 and all(len(r["candidates"]) == 2 for r in a)
    # the two completions of one prompt are distinct samples, not copies
    assert sum(x != y for x, y in texts(a)) >= 12


def test_candidates_carry_provenance_token_counts_and_eos_flags(tmp_path):
    rows = collect(tmp_path, "a", max_new_tokens=6)
    from rlhf.models import model_fingerprint

    first = rows[0]
    assert first["prompt_id"] == "arith-add-0000" and first["prompt"][0]["role"] == "user"
    assert first["task"]["reference"] == "148"
    prov = first["provenance"]
    assert prov["model"] == "tiny-llama" and prov["model_hash"] == model_fingerprint("tiny-llama")
    assert (prov["temperature"], prov["top_p"], prov["max_new_tokens"], prov["seed"]) == (1.0, 1.0, 6, 0)
    for r in rows:
        for c in r["candidates"]:
            assert 1 <= c["num_tokens"] <= 6
            assert c["ended_with_eos"] or c["num_tokens"] == 6


def test_interrupted_collection_resumes_to_the_same_file(tmp_path):
    full = collect(tmp_path, "full")
    part_dir = tmp_path / "part"
    collect(tmp_path, "part")
    path = part_dir / "candidates.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:8]) + "\n" + lines[8][:20])  # 8 whole lines and a torn one
    resumed = collect(tmp_path, "part", resume=True)
    assert texts(resumed) == texts(full)


def test_bad_prompts_name_their_file_and_line(tmp_path):
    bad = tmp_path / "prompts.jsonl"
    bad.write_text('{"id": "a", "prompt": "fine"}\n{"id": "b", "text": "no prompt"}\n')
    with pytest.raises(DataError, match=r"prompts.jsonl:2: missing key 'prompt'"):
        collect(tmp_path, "x", prompts=bad)
    bad.write_text('{"id": "a", "prompt": "fine"}\n{"id": "b", "prompt": "   "}\n')
    with pytest.raises(DataError, match=r"prompts.jsonl:2: empty prompt"):
        collect(tmp_path, "y", prompts=bad)
    bad.write_text('{"id": "a", "prompt": "fine"}\n{"id": "b", "prompt": "' + "x" * 400 + '"}\n')
    with pytest.raises(DataError, match=r"prompts.jsonl:2: prompt is \d+ tokens, longer than max_prompt_tokens=64"):
        collect(tmp_path, "z", prompts=bad, max_prompt_tokens=64)


def test_skip_invalid_leaves_out_bad_prompts_and_says_so(tmp_path, capsys):
    bad = tmp_path / "prompts.jsonl"
    bad.write_text('{"id": "a", "prompt": "What is 2 + 2?"}\n{"id": "b"}\n{"id": "c", "prompt": ""}\n'
                   '{"id": "a", "prompt": "dup"}\n{"id": "d", "prompt": "What is 3 + 3?"}\n')
    rows = collect(tmp_path, "x", prompts=bad, skip_invalid=True)
    assert [r["prompt_id"] for r in rows] == ["a", "d"]
    out = capsys.readouterr().out
    assert "skipped 3 of 5 prompt records" in out
    for line, problem in ((2, "missing key 'prompt'"), (3, "empty prompt"), (4, "duplicate prompt id 'a'")):
        assert f"prompts.jsonl:{line}: {problem}" in out


@pytest.mark.slow
def test_two_processes_sample_the_same_candidates(tmp_path):
    import os
    import subprocess
    import sys

    one = collect(tmp_path, "one")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29534",
           str(ROOT / "scripts/collect.py"), "--config", str(TINY), "--output_dir", str(tmp_path / "two"),
           "--prompts", str(ROOT / "reward_data/prompts_train.jsonl"), "--batch_size", "4"]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # batch_size 4 on 2 ranks: compare with one process at batch_size 4 (a batch's seed is its number)
    one = collect(tmp_path, "one4", batch_size=4)
    two = [json.loads(x) for x in (tmp_path / "two" / "candidates.jsonl").read_text().splitlines()]
    assert [r["prompt_id"] for r in two] == [r["prompt_id"] for r in one]
    assert texts(two) == texts(one)
    assert json.loads((tmp_path / "two" / "metrics.json").read_text())["num_processes"] == 2
