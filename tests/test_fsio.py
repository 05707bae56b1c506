"""rlhf.fsio: atomic writes that leave the old file whole on a kill or a full disk, directory publish, the
append-only JSONL reader and appender, and the one-writer lock on a run directory (refusal naming the
holder, stale locks taken over, re-entry by the same process)."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from rlhf import fsio
from rlhf.data import DataError
from rlhf.fsio import (RunLock, RunLockedError, append_jsonl, atomic_write_json, atomic_write_text, lock_run,
                       publish_dir, read_jsonl, unlock_run)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def fresh_counter(monkeypatch):
    monkeypatch.setattr(fsio, "_fault_count", 0)
    monkeypatch.delenv("RLHF_FAULT", raising=False)
    monkeypatch.delenv("RLHF_FAULT_TRACE", raising=False)


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


def test_atomic_write_replaces_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "metrics.json"
    atomic_write_json(path, {"a": 1})
    atomic_write_json(path, {"a": 2, "text": "\ud800 lone surrogate"})  # encodable: written as a \u escape
    assert json.loads(path.read_text()) == {"a": 2, "text": "\ud800 lone surrogate"}
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("writer", ["json", "text", "append", "publish"])
def test_enospc_half_way_leaves_the_old_file_whole(tmp_path, monkeypatch, writer):
    """A full disk half-way through a write (the hook writes half the bytes, then raises ENOSPC): the old
    content is exactly as it was, no temporary file is left, and the error reaches the caller."""
    path = tmp_path / ("model" if writer == "publish" else "f.json")
    if writer == "publish":
        with publish_dir(path) as d:
            (d / "weights").write_bytes(b"old weights")
    elif writer == "append":
        path.write_text('{"step": 1}\n')
    else:
        atomic_write_json(path, {"old": True})
    before = (path / "weights").read_bytes() if writer == "publish" else path.read_bytes()
    monkeypatch.setattr(fsio, "_fault_count", 0)
    monkeypatch.setenv("RLHF_FAULT", "1:enospc")
    with pytest.raises(OSError) as info:
        if writer == "json":
            atomic_write_json(path, {"new": list(range(1000))})
        elif writer == "text":
            atomic_write_text(path, "x" * 10_000)
        elif writer == "append":
            append_jsonl(path, [{"step": 2, "pad": "y" * 1000}])
        else:
            with publish_dir(path) as d:
                (d / "weights").write_bytes(b"new weights")
    assert info.value.errno == errno.ENOSPC
    monkeypatch.delenv("RLHF_FAULT")
    if writer == "publish":
        assert (path / "weights").read_bytes() == before and leftovers(tmp_path) == []
    elif writer == "append":  # half a line reached the file: the reader drops it, the next append repairs it
        rows, notes = read_jsonl(path, repair=True)
        assert rows == [{"step": 1}] and len(notes) == 1 and "torn" in notes[0]
        assert path.read_bytes() == before
    else:
        assert path.read_bytes() == before and leftovers(tmp_path) == []


def test_kill_half_way_through_an_atomic_write_leaves_the_old_file(tmp_path):
    """A real SIGKILL in the middle of atomic_write_json (the hook writes half, fsyncs, kills the process)."""
    path = tmp_path / "config.json"
    atomic_write_json(path, {"old": True})
    code = textwrap.dedent(f"""
        from rlhf.fsio import atomic_write_json
        atomic_write_json({str(path)!r}, {{"new": list(range(10000))}})
    """)
    proc = subprocess.run([sys.executable, "-c", code], env={**os.environ, "RLHF_FAULT": "1:kill"}, cwd=ROOT)
    assert proc.returncode == -signal.SIGKILL
    assert json.loads(path.read_text()) == {"old": True}
    # the killed writer's temporary file is hidden and never read; the next write succeeds
    atomic_write_json(path, {"new": 1})
    assert json.loads(path.read_text()) == {"new": 1}


def test_publish_dir_replaces_an_old_directory_and_recovers_an_interrupted_swap(tmp_path):
    path = tmp_path / "model"
    with publish_dir(path) as d:
        (d / "a").write_text("1")
    with publish_dir(path) as d:
        (d / "b").write_text("2")
    assert sorted(p.name for p in path.iterdir()) == ["b"] and leftovers(tmp_path) == []
    # killed between the two renames: model/ missing, the old one parked as .model.old-<pid>
    os.replace(path, tmp_path / ".model.old-12345")
    (tmp_path / ".model.tmp-12345").mkdir()
    with pytest.raises(RuntimeError):
        with publish_dir(path):  # the next publish first puts the old one back; this one fails
            raise RuntimeError("failed")
    assert sorted(p.name for p in path.iterdir()) == ["b"] and leftovers(tmp_path) == []


def test_append_keeps_a_complete_last_line_without_newline(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_bytes(b'{"seq": 0}\n{"seq": 1}')  # killed after the line, before its newline
    rows, notes = read_jsonl(path)
    assert rows == [{"seq": 0}, {"seq": 1}] and notes == []
    append_jsonl(path, [{"seq": 2}])
    assert path.read_bytes() == b'{"seq": 0}\n{"seq": 1}\n{"seq": 2}\n'


def test_reader_drops_a_torn_last_line_and_names_or_drops_damage_before_it(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_bytes(b'{"step": 1}\n{"step": 2, "lo')
    rows, notes = read_jsonl(path, repair=True)
    assert rows == [{"step": 1}] and "log.jsonl:2" in notes[0]
    assert path.read_bytes() == b'{"step": 1}\n'
    path.write_bytes(b'{"step": 1}\n\x00\x00garbage\n{"step": 3}\n')
    with pytest.raises(DataError, match=r"log.jsonl:2: corrupt line"):
        read_jsonl(path)
    rows, notes = read_jsonl(path, on_damaged="drop", repair=True)
    assert rows == [{"step": 1}, {"step": 3}] and "log.jsonl:2: dropped a damaged line" in notes[0]
    assert path.read_bytes() == b'{"step": 1}\n{"step": 3}\n'


def test_lock_refuses_a_second_process_naming_the_holder_then_frees_on_death(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", f"from rlhf.fsio import lock_run; import time; lock_run({str(tmp_path)!r}); "
                               "print('locked', flush=True); time.sleep(60)"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLockedError) as info:
            RunLock(tmp_path).acquire()
        msg = str(info.value)
        assert f"pid {holder.pid}" in msg and "being written by another process" in msg and "\n" not in msg
    finally:
        holder.kill()
        holder.wait()
    # the holder died by SIGKILL without releasing: its lock is stale and taken over, the old holder named
    lock = RunLock(tmp_path).acquire()
    assert lock.took_over["pid"] == holder.pid
    assert json.loads((tmp_path / fsio.LOCK_NAME).read_text())["pid"] == os.getpid()
    lock.release()


def test_lock_reentry_in_one_process_and_release(tmp_path):
    lock_run(tmp_path)
    lock_run(tmp_path)  # the pipeline holds it and a stage it runs re-enters
    unlock_run(tmp_path)
    code = f"from rlhf.fsio import RunLock; RunLock({str(tmp_path)!r}).acquire()"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True).returncode != 0
    unlock_run(tmp_path)
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True).returncode == 0


def test_lock_without_flock_uses_pid_and_boot_id(tmp_path, monkeypatch):
    """Where the file system has no flock, the lock file's holder decides: a live pid on this host is
    respected, a dead pid or another boot is stale."""
    import fcntl

    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    import socket

    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        for pid, boot, refused in ((live.pid, fsio._boot_id(), True), (live.pid, "another-boot", False)):
            (tmp_path / fsio.LOCK_NAME).write_text(json.dumps(
                {"pid": pid, "host": socket.gethostname(), "boot_id": boot, "command": "rlhf sft", "since": "t"}))
            if refused:
                with pytest.raises(RunLockedError, match=f"pid {pid} .*rlhf sft"):
                    RunLock(tmp_path).acquire()
            else:
                RunLock(tmp_path).acquire().release()
    finally:
        live.kill()
        live.wait()
    (tmp_path / fsio.LOCK_NAME).write_text(json.dumps(
        {"pid": live.pid, "host": socket.gethostname(), "boot_id": fsio._boot_id(), "command": "x", "since": "t"}))
    time.sleep(0.1)
    lock = RunLock(tmp_path).acquire()  # the pid is gone now
    assert lock.took_over["pid"] == live.pid
