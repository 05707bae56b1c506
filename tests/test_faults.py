"""The fault suite: SIGKILL every stage of `rlhf run` at seeded random points, writes of checkpoints and artefacts
included, resume, and compare with an uninterrupted run; two writers on one directory; a full disk half-way
through a write.

Kills come from the rlhf.fsio test hook (RLHF_FAULT="<n>:kill:<pattern>": the process SIGKILLs itself half-way
through its n-th write whose path contains <pattern>, leaving a torn temporary file or a torn appended line)
and from outside, at seeded random times. The pipeline is the tiny quickstart, made smaller and checkpointing
often. After the kills the last invocation runs to the end, and every artefact is compared with the
uninterrupted run's: weights within 1e-6, files equal apart from timing and provenance fields (times, seconds, peak memory,
rates, the session-only counters, the run directory's path) and the pipeline's per-invocation statuses.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SETS = ["sft.max_steps=8", "sft.save_every=2", "sft.sample_count=2", "policy.num_updates=4", "policy.save_every=1",
        "evaluate.max_prompts=8", "evaluate.bootstrap_samples=100", "reward.num_epochs=1"]
STAGES = ["sft", "collect", "label", "reward", "policy", "evaluate"]
# (peak memory too: a measurement of the process, rlhf.memory, as timings are; and the stage keys, content
# hashes of the upstream files, which hold timings of their own: those files are compared themselves; and the
# labeler's per-session counts of reused and new decisions, which a resumed session splits differently)
VOLATILE = re.compile(r"(seconds|per_second|^time$|^time/|finished|this_session|features_computed|^since$|"
                      r"^memory/|peak_rss_mb|peak_gpu_mb|^inputs$|^config_hash$|^label/(reused|stale|made)$)")
SEED = 19


def rlhf(out: Path, *args: str, env: dict | None = None, kill_after: float | None = None,
         command: str = "run") -> subprocess.CompletedProcess:
    base = [sys.executable, "-m", "rlhf.cli", command]
    if command == "run":
        base += ["configs/tiny/quickstart.yaml", "--output_dir", str(out)] + [x for s in SETS for x in ("--set", s)]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1", **(env or {})}
    if kill_after is None:
        return subprocess.run(base + list(args), cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    proc = subprocess.Popen(base + list(args), cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        proc.wait(kill_after)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
    stdout, stderr = proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def normalise(obj, root: str):
    """Drop timing and provenance fields; write the run directory as <root>."""
    if isinstance(obj, dict):
        return {k: normalise(v, root) for k, v in obj.items() if not VOLATILE.search(k)}
    if isinstance(obj, list):
        return [normalise(v, root) for v in obj]
    if isinstance(obj, str):
        return obj.replace(root, "<root>")
    return obj


def load_any(path: Path, root: str):
    if path.name == "pipeline.json":  # per-invocation statuses and seconds; the result is "improvement"
        return normalise(json.loads(path.read_text()).get("improvement"), root)
    if path.name == "DONE.json":  # its hash covers input paths, which name the run directory
        return sorted(json.loads(path.read_text()))
    if path.suffix == ".json":
        return normalise(json.loads(path.read_text()), root)
    if path.suffix == ".jsonl":
        return [normalise(json.loads(x), root) for x in path.read_text().splitlines()]
    if path.suffix == ".yaml":
        import yaml

        return normalise({k: v for k, v in yaml.safe_load(path.read_text()).items() if k not in ("resume", "overwrite")},
                         root)
    return path.read_bytes().replace(root.encode(), b"<root>")


def compare_runs(ref: Path, run: Path) -> dict:
    """Every artefact of `ref` against `run`: (files compared, weight tensors compared, largest weight
    difference). Asserts equality as described in the module docstring."""
    from safetensors.torch import load_file

    files, tensors, largest = 0, 0, 0.0
    for a in sorted(ref.rglob("*")):
        rel = a.relative_to(ref)
        if a.is_dir() or rel.parts[1:2] == ("checkpoints",) or a.name == ".rlhf.lock" or a.suffix == ".png":
            continue
        b = run / rel
        assert b.is_file(), f"{rel} missing after the faults"
        if a.suffix == ".safetensors":
            wa, wb = load_file(a), load_file(b)
            assert wa.keys() == wb.keys(), rel
            for k in wa:
                largest = max(largest, (wa[k].double() - wb[k].double()).abs().max().item())
                tensors += 1
        else:
            assert load_any(a, str(ref)) == load_any(b, str(run)), f"{rel} differs after the faults"
            files += 1
    extra = sorted(str(p.relative_to(run)) for p in run.rglob("*") if ".tmp-" in p.name or ".old-" in p.name)
    assert not extra, f"temporary files left: {extra}"
    assert largest <= 1e-6, f"weights differ by {largest}"
    return {"files": files, "tensors": tensors, "largest_weight_difference": largest}


def write_points(trace: Path, root: Path) -> dict:
    """Writes per stage (and the pipeline's own) in an uninterrupted run's trace: counts, and under
    "<stage>/writes" the (kind, path) of each in order."""
    counts = {s: 0 for s in STAGES + ["pipeline"]}
    for line in trace.read_text().splitlines():
        what, path = line.split(" ", 1)
        rel = Path(path).relative_to(root)
        stage = rel.parts[0] if rel.parts[0] in STAGES else "pipeline"
        counts[stage] += 1
        counts.setdefault(stage + "/writes", []).append((what, str(rel)))
    return counts


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run, with the trace of its writes."""
    base = tmp_path_factory.mktemp("ref")
    out, trace = base / "run", base / "trace.txt"
    started = time.time()
    proc = rlhf(out, env={"RLHF_FAULT_TRACE": str(trace)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    (base / "seconds.txt").write_text(f"{time.time() - started:.2f}\n")  # for kills timed from outside
    return out, write_points(trace, out), trace


# per stage, the kind of write its first kill targets: its checkpoint or its product
TARGET = {"sft": "checkpoint", "collect": "candidates", "label": "decision", "reward": "model", "policy": "checkpoint",
          "evaluate": "report"}


@pytest.mark.slow
def test_kill_every_stage_at_seeded_points_then_resume_equals_the_uninterrupted_run(reference, tmp_path):
    ref, counts, _ = reference
    out = tmp_path / "run"
    rng = random.Random(SEED)
    kills, finished = [], []
    # Per stage, each invocation running the stages up to it (--only): (a) a kill at a seeded occurrence of its
    # checkpoint or product write (the stage runs afresh, so it exists), (b) one among the first writes of its
    # resumed run (config, the log's repair, its first appends), (c) one at a seeded point among all the writes
    # of an uninterrupted run of the stage (the resumed run may finish first: then it is not counted).
    for stage in STAGES:
        writes = counts[stage + "/writes"]
        target = rng.choice([i for i, (w, _) in enumerate(writes, 1) if w == TARGET[stage]])
        for n, must in ((target, True), (rng.randint(1, 3), True), (rng.randint(1, len(writes)), False)):
            pattern = f"{out / stage}/"
            trace = tmp_path / "t"
            upto = ",".join(STAGES[: STAGES.index(stage) + 1])  # (an earlier stage killed last: it finishes first)
            proc = rlhf(out, "--only", upto, env={"RLHF_FAULT": f"{n}:kill:{pattern}", "RLHF_FAULT_TRACE": str(trace)})
            if proc.returncode == 0 and not must:
                finished.append(f"{stage} write {n}")
                continue
            assert proc.returncode == -signal.SIGKILL, (stage, n, proc.returncode, proc.stderr[-2000:])
            last = trace.read_text().splitlines()[-1]
            kills.append(f"{stage} write {n}: {last.replace(str(out), '<root>')}")
            trace.unlink()
    # the pipeline's own record, written last
    n = rng.randint(1, counts["pipeline"])
    proc = rlhf(out, env={"RLHF_FAULT": f"{n}:kill:{out / 'pipeline.json'}"})
    assert proc.returncode == -signal.SIGKILL
    kills.append(f"pipeline write {n}: <root>/pipeline.json")
    proc = rlhf(out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = compare_runs(ref, out)
    kinds = sorted({k.split(": ")[1].split(" ")[0] for k in kills})
    assert {"checkpoint", "model", "candidates", "decision", "report"} <= set(kinds), kinds
    print(f"\n[faults] {len(kills)} kills at write points:\n  " + "\n  ".join(kills)
          + f"\n[faults] finished before the drawn point: {finished}\n[faults] {result}")
    (tmp_path.parent / "faults-write-points.json").write_text(
        json.dumps({"kills": kills, "finished": finished, **result}, indent=1))


@pytest.mark.slow
def test_sigkill_from_outside_at_seeded_times_then_resume_equals_the_uninterrupted_run(reference, tmp_path):
    ref, _, _ = reference
    out = tmp_path / "run"
    rng = random.Random(SEED + 1)
    # Kill times are fractions of the uninterrupted run's wall time (so they land on a quiet machine and a busy
    # one alike): a kill at 30-50% of the whole lands in the first invocation, and in the second, which has at
    # least half the work left (plus its start-up); a third may run to the end, and the last one always does.
    whole = float((ref.parent / "seconds.txt").read_text())
    times = []
    for _ in range(3):
        t = round(rng.uniform(0.3, 0.5) * whole, 2)
        proc = rlhf(out, kill_after=t)
        times.append((t, proc.returncode))
        if proc.returncode == 0:
            break
    stages_seen = sorted({s for s in STAGES if (out / s / "config.yaml").exists()}, key=STAGES.index)
    proc = rlhf(out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = compare_runs(ref, out)
    killed = sum(rc == -signal.SIGKILL for _, rc in times)
    assert killed >= 2, times
    print(f"\n[faults] external SIGKILL after (s, exit status): {times}; stages reached: {stages_seen}; {result}")
    (tmp_path.parent / "faults-external.json").write_text(json.dumps({"times": times, **result}, indent=1))


def test_two_writers_on_one_directory(tmp_path):
    """A stage stalls in its first write (holding its directory); a second writer of that directory, of any
    kind, is refused in one line naming the holder; killed, the holder's lock is stale and taken over."""
    out = tmp_path / "sft"
    cmd = [sys.executable, "-m", "rlhf.cli", "sft", "--config", "configs/tiny/sft.yaml", "--output_dir", str(out),
           "--max_steps", "2", "--sample_count", "0"]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    holder = subprocess.Popen(cmd, cwd=ROOT, env={**env, "RLHF_FAULT": "1:stall:config"}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    try:
        lock = out / ".rlhf.lock"
        for _ in range(600):  # until it is stalled half-way through writing config.yaml
            if list(out.glob(".config.yaml.tmp-*")):
                break
            time.sleep(0.1)
        assert json.loads(lock.read_text())["pid"] == holder.pid
        second = [cmd, cmd + ["--resume", "true"], cmd + ["--overwrite", "true"],
                  [sys.executable, "-m", "rlhf.cli", "run", "configs/tiny/quickstart.yaml", "--output_dir",
                   str(tmp_path), "--only", "collect"]]
        for c in second:
            proc = subprocess.run(c, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
            assert proc.returncode == 2, (c, proc.stderr[-2000:])
            err = proc.stderr.strip().splitlines()[-1]
            assert f"pid {holder.pid}" in err and "being written by another process" in err, proc.stderr[-2000:]
            assert "Traceback" not in proc.stderr
        assert not (out / "config.yaml").exists()  # the holder is stalled before its config lands
    finally:
        holder.kill()
        holder.wait()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"took over the lock left by pid {holder.pid}" in proc.stderr
    assert (out / "model" / "model.safetensors").is_file() and not list(out.glob(".*.tmp-*"))


@pytest.mark.slow
def test_full_disk_half_way_through_an_artefact_is_one_line_and_leaves_the_old_file(reference, tmp_path):
    """ENOSPC half-way through report.json and through the policy's model/ on a finished run that is made to
    rerun its last stages: exit status 1 with one line, the old files byte-equal, no temporary left; then the
    same command finishes the run."""
    import shutil

    ref, _, _ = reference
    out = tmp_path / "run"
    shutil.copytree(ref, out)
    (out / ".rlhf.lock").unlink(missing_ok=True)
    for target in ("policy/model", "evaluate/report.json"):
        before = {p: p.read_bytes() for p in (out / target).parent.rglob("*") if p.is_file()}
        proc = rlhf(out, "--set", "policy.beta=0.03", env={"RLHF_FAULT": f"1:enospc:{out / target}"})
        assert proc.returncode == 1, proc.stderr[-3000:]
        line = proc.stderr.strip().splitlines()[-1]
        assert "No space left on device" in line and "Traceback" not in proc.stderr, proc.stderr[-3000:]
        after = {p: p.read_bytes() for p in (out / target).parent.rglob("*") if p.is_file()
                 and not p.name.startswith(".rlhf")}
        if target == "evaluate/report.json":
            assert after[out / target] == before[out / target]
        else:  # the old model/ is whole: every file as it was
            old = {p: b for p, b in before.items() if out / target in p.parents}
            assert old and all(after[p] == b for p, b in old.items())
        assert not [p for p in out.rglob("*") if ".tmp-" in p.name]
    proc = rlhf(out, "--set", "policy.beta=0.03")
    assert proc.returncode == 0, proc.stderr[-3000:]


# ------------------------------------------------------------------ damaged lines: repaired or named, never a crash


def test_torn_and_damaged_shard_lines_of_a_multi_process_collect_are_dropped_and_named(tmp_path, capsys):
    from rlhf.stages.collect import merge_shards, read_written

    row = lambda pid: {"prompt_id": pid, "prompt": [], "candidates": [{"text": pid, "num_tokens": 1,
                                                                       "ended_with_eos": True}]}
    path = tmp_path / "candidates.jsonl"
    path.write_text(json.dumps(row("p0")) + "\n")
    # rank 0 killed mid-append (torn last line); rank 1 with a damaged line before its last, and a second append
    # that started after a torn one (the toolkit's appends end a whole line first, so the torn one stays whole)
    (tmp_path / "candidates.rank0.jsonl").write_text(json.dumps(row("p2")) + "\n" + json.dumps(row("p4"))[:25])
    (tmp_path / "candidates.rank1.jsonl").write_text(json.dumps(row("p1")) + "\n{\"prompt_id\": \"p3\", \"cand\n"
                                                     + json.dumps(row("p5")) + "\n")
    merge_shards(tmp_path, path, ["p0", "p1", "p2", "p3", "p4", "p5"], 2)
    out = capsys.readouterr().out
    assert "candidates.rank0.jsonl:2: dropped a candidates line torn by an interruption" in out
    assert "candidates.rank1.jsonl:2: dropped a damaged candidates line" in out
    assert [r["prompt_id"] for r in read_written(path, repair=True)] == ["p0", "p1", "p2", "p5"]
    assert not list(tmp_path.glob("candidates.rank*"))  # folded in, then removed


def test_a_damaged_log_line_is_named_on_resume_not_a_crash(tmp_path, capsys):
    """SFT stopped at step 4 of 6; a line of its log.jsonl damaged (a disk error, an editor); --resume true
    names the line, drops it, and finishes with the same weights as an uninterrupted run."""
    from safetensors.torch import load_file

    from rlhf.config import load_config
    from rlhf.stages.sft import SFTConfig, train

    def cfg(out, **kw):
        values = {"output_dir": str(out), "max_steps": "6", "save_every": "2", "sample_count": "0",
                  "eval_at_start": "false", **{k: str(v) for k, v in kw.items()}}
        return load_config(SFTConfig, str(ROOT / "configs/tiny/sft.yaml"), values)

    train(cfg(tmp_path / "full"))
    assert train(cfg(tmp_path / "part", stop_after_step=4)) == {"stopped_at_step": 4}
    log = tmp_path / "part" / "log.jsonl"
    lines = log.read_text().splitlines()
    lines[1] = lines[1][:10] + "\x00\x00" + lines[1][20:]
    log.write_text("\n".join(lines) + "\n" + lines[2][:15])  # and a torn last line
    capsys.readouterr()
    train(cfg(tmp_path / "part", resume=True))
    out = capsys.readouterr().out
    assert "log.jsonl:2: dropped a damaged log line" in out and "log.jsonl:5: dropped a log line torn" in out
    rows = [json.loads(x) for x in log.read_text().splitlines()]
    assert [r["step"] for r in rows if "train/loss" in r] == [1, 3, 4, 5, 6]  # step 2's line was the damaged one
    wa = load_file(tmp_path / "full" / "model" / "model.safetensors")
    wb = load_file(tmp_path / "part" / "model" / "model.safetensors")
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) <= 1e-6


def test_decision_store_keeps_a_whole_last_line_without_newline_and_appends_without_reading(tmp_path, monkeypatch):
    from rlhf.labeling.store import DecisionStore

    path = tmp_path / "decisions.jsonl"
    path.write_text('{"seq": 0, "event": "undo", "undoes": 7}\n{"seq": 1, "event": "undo", "undoes": 8}')
    store = DecisionStore(path)
    assert [e["seq"] for e in store.events] == [0, 1]
    monkeypatch.setattr(Path, "read_bytes", lambda self: pytest.fail("append re-read the store"))
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: pytest.fail("append re-read the store"))
    store.undo("terminal")  # nothing live to undo: no event
    store._append({"event": "undo", "undoes": 9, "labeler": "t"})
    monkeypatch.undo()
    assert [json.loads(x)["seq"] for x in path.read_text().splitlines()] == [0, 1, 2]
    # a torn last line (never acknowledged) is cut once, before the next append
    with open(path, "ab") as f:
        f.write(b'{"seq": 3, "ev')
    store = DecisionStore(path)
    store._append({"event": "undo", "undoes": 10, "labeler": "t"})
    assert [json.loads(x)["seq"] for x in path.read_text().splitlines()] == [0, 1, 2, 3]


@pytest.mark.slow
def test_two_process_collect_killed_mid_shard_resumes_to_the_same_candidates(tmp_path):
    """Rank 1 of a 2-process collect SIGKILLs itself half-way through its second shard append (a torn shard
    line; the launcher then stops rank 0); the same launch with --resume true folds the shards in, drops the
    torn line (naming it), samples what is missing, and ends with one process's candidates."""
    collect = [str(ROOT / "scripts/collect.py"), "--config", "configs/tiny/collect.yaml",
               "--prompts", str(ROOT / "reward_data/prompts_train.jsonl"), "--batch_size", "4"]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
              "29547"]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, *collect, "--output_dir", str(tmp_path / "one")], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    two = tmp_path / "two"
    killed = subprocess.run([*launch, *collect, "--output_dir", str(two)], cwd=ROOT, timeout=300,
                            env={**env, "RLHF_FAULT": "2:kill:candidates.rank1"}, capture_output=True, text=True)
    assert killed.returncode != 0
    shard = (two / "candidates.rank1.jsonl").read_bytes()
    assert not shard.endswith(b"\n")  # the torn line is there
    resumed = subprocess.run([*launch, *collect, "--output_dir", str(two), "--resume", "true"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert re.search(r"candidates.rank1.jsonl:\d+: dropped a candidates line torn by an interruption", resumed.stdout)
    strip = lambda p: [{**r, "provenance": {k: v for k, v in r["provenance"].items() if k != "time"}}
                       for r in map(json.loads, p.read_text().splitlines())]
    assert strip(two / "candidates.jsonl") == strip(tmp_path / "one" / "candidates.jsonl")
    assert not list(two.glob("candidates.rank*"))


def test_a_second_labeler_on_one_output_directory_is_refused(tmp_path):
    """A person labels in the terminal; a second labeler (any kind) on the same output directory is refused
    naming the first and writes nothing; once the first quits, the next session continues its decisions."""
    cands = tmp_path / "candidates.jsonl"
    cands.write_text("".join(json.dumps({"prompt_id": f"p{i}", "prompt": "Say hi.", "candidates": ["hi", "hello"]})
                             + "\n" for i in range(3)))
    out = tmp_path / "label"
    base = [sys.executable, "-m", "rlhf.cli", "label", "--candidates", str(cands), "--output_dir", str(out)]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    first = subprocess.Popen(base + ["--labeler", "terminal"], cwd=ROOT, env=env, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first.stdin.write("1\n")
        first.stdin.flush()
        for _ in range(300):  # until its first decision is on disk
            if (out / "decisions.jsonl").is_file() and (out / "decisions.jsonl").read_text().endswith("\n"):
                break
            time.sleep(0.1)
        for labeler in ("simulated", "terminal"):
            proc = subprocess.run(base + ["--labeler", labeler, "--resume", "true"], cwd=ROOT, env=env,
                                  capture_output=True, text=True, timeout=120, input="2\n")
            assert proc.returncode == 2 and f"pid {first.pid}" in proc.stderr, proc.stderr[-2000:]
        first.stdin.write("q\n")
        first.stdin.flush()
        assert first.wait(60) == 0
    finally:
        first.kill()
        first.wait()
    proc = subprocess.run(base + ["--labeler", "terminal", "--resume", "true"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120, input="2\nt\n")
    assert proc.returncode == 0, proc.stderr[-2000:]
    events = [json.loads(x) for x in (out / "decisions.jsonl").read_text().splitlines()]
    assert [(e["seq"], e["item"], e["choice"]) for e in events] == [(0, "p0:0-1", "first"), (1, "p1:0-1", "second"),
                                                                   (2, "p2:0-1", "tie")]


def test_a_damaged_config_yaml_is_one_line_on_resume(tmp_path):
    out = tmp_path / "sft"
    out.mkdir()
    (out / "config.yaml").write_bytes(b"seed: [0\nlearning_rate: \xff\x00")
    proc = subprocess.run([sys.executable, "-m", "rlhf.cli", "sft", "--config", "configs/tiny/sft.yaml",
                           "--output_dir", str(out), "--resume", "true"], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "TOKENIZERS_PARALLELISM": "false"}, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert f"{out / 'config.yaml'} is damaged" in proc.stderr.strip().splitlines()[-1]
