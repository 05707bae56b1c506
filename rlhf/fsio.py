"""Crash-safe files for run directories: atomic writes, atomic directory publish, append-only JSONL, and one
writer per run directory.

A kill (SIGKILL, power loss) or a full disk at any moment leaves every file either as it was or as it was
meant to be, never half-written:

    atomic_write_text / _json / _bytes   temporary name in the same directory, write, flush, fsync, rename
                                         over the old file, fsync the directory
    atomic_file(path)                    the same, for code that writes through a file object or a path
                                         (parquet, matplotlib)
    publish_dir(path)                    a directory (a saved model) written under a temporary name, every file
                                         fsynced, then renamed into place
    append_jsonl(path, rows)             append whole lines; a file whose last line lacks its newline gets the
                                         newline first, so a complete line is never cut and a torn one never
                                         glues itself to the next
    read_jsonl(path, repair=...)         rows of an append-only file; a torn last line (a kill mid-append) is
                                         dropped and, with `repair`, cut from the file; a complete last line
                                         without newline is kept (and given its newline); damaged lines before
                                         the last are dropped and named with `on_damaged="drop"`, or raise a
                                         one-line DataError naming file and line

    RunLock(directory)                   one writer per run directory: the second process is refused with a
                                         message naming the holder (pid, host, command, since when); a lock left
                                         by a killed process is taken over

The standard library has no atomic-replace helper that fsyncs (tempfile + os.replace is the recipe, written out
here once so every stage uses the same one).

Test hook: with RLHF_FAULT="<n>:<action>[:<pattern>]" in the environment, the n-th write (1-based, counted over
the writes this module makes in the process whose "<what> <path>" contains <pattern>) does <action> half-way:
"kill" (SIGKILL itself: a torn temporary file, a torn appended line), "enospc" (raise OSError ENOSPC, as a full
disk does) or "stall" (wait to be killed from outside). RLHF_FAULT_TRACE=<file> appends one line per write
("<what> <path>") so a test can count the write points and choose among them.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import re
import shutil
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

from rlhf.jsonl import scan

LOCK_NAME = ".rlhf.lock"

# ------------------------------------------------------------------------------------------- fault hook

_fault_count = 0


def fault_point(what: str, path: str | os.PathLike, fileobj=None, data: bytes = b"") -> None:
    """Count one write; under RLHF_FAULT, fail the chosen one half-way (half of `data` written to `fileobj` first).
    Cheap when the variables are unset."""
    global _fault_count
    spec, trace = os.environ.get("RLHF_FAULT"), os.environ.get("RLHF_FAULT_TRACE")
    if not spec and not trace:
        return
    if trace:
        with open(trace, "a", encoding="utf-8") as f:
            f.write(f"{what} {path}\n")
    if not spec:
        return
    n, action, pattern = (spec.split(":", 2) + [""])[:3]
    if pattern not in f"{what} {path}":
        return
    _fault_count += 1
    if int(n) != _fault_count:
        return
    if fileobj is not None and data:  # half the bytes reach the disk first
        fileobj.write(data[: len(data) // 2])
        fileobj.flush()
        os.fsync(fileobj.fileno())
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if action == "enospc":
        raise OSError(errno.ENOSPC, f"No space left on device (simulated, write {n}: {what})", str(path))
    if action == "stall":  # hold here until killed from outside
        while True:
            time.sleep(1)
    raise ValueError(f"RLHF_FAULT={spec!r}: action must be kill, enospc or stall")


# ---------------------------------------------------------------------------------------- atomic files


def fsync_dir(directory: str | os.PathLike) -> None:
    """Make a rename or a new entry in `directory` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def atomic_write_bytes(path: str | os.PathLike, data: bytes, what: str = "file") -> None:
    """Replace `path` with `data` atomically and durably; on any failure the old file is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(path)
    try:
        with open(tmp, "wb") as f:
            fault_point(what, path, f, data)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str, what: str = "file") -> None:
    atomic_write_bytes(path, text.encode("utf-8"), what)


def json_bytes(obj: Any, indent: int | None = None) -> bytes:
    """UTF-8 JSON; a lone surrogate (which JSON strings may hold, UTF-8 may not) is written as its \\u escape,
    so any text read from JSON is written back exactly."""
    return json.dumps(obj, indent=indent, ensure_ascii=False).encode("utf-8", "backslashreplace")


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2, what: str = "json") -> None:
    atomic_write_bytes(path, json_bytes(obj, indent) + b"\n", what)


def atomic_write_jsonl(path: str | os.PathLike, rows: Iterable[Any], what: str = "jsonl") -> None:
    atomic_write_bytes(path, b"".join(json_bytes(r) + b"\n" for r in rows), what)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, what: str = "file") -> Iterator[Path]:
    """For writers that take a path (parquet, savefig): write to the yielded temporary path; on leaving the block
    it is fsynced and renamed over `path`. An exception leaves `path` as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(path)
    # matplotlib and pyarrow pick the format from the suffix: keep it
    tmp = tmp.with_name(tmp.name + path.suffix)
    try:
        yield tmp
        fault_point(what, path)
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: str | os.PathLike) -> None:
    """fsync every file and directory under `root` (before a rename publishes it)."""
    root = Path(root)
    for dirpath, _, files in os.walk(root):
        for name in files:
            _fsync_file(Path(dirpath, name))
        fsync_dir(dirpath)


@contextlib.contextmanager
def publish_dir(path: str | os.PathLike, what: str = "directory") -> Iterator[Path]:
    """Write a directory (a saved model) atomically: fill the yielded temporary directory; on leaving the block
    every file is fsynced and the directory renamed to `path`, replacing an older one. An exception, a kill or a
    full disk leaves `path` as it was (an old model stays whole) and at most a hidden `.<name>.tmp-<pid>`
    directory, removed by the next publish of the same path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.tmp-*"):  # left by a killed writer
        shutil.rmtree(stale, ignore_errors=True)
    for stale in path.parent.glob(f".{path.name}.old-*"):
        if path.exists():
            shutil.rmtree(stale, ignore_errors=True)
        else:  # killed between the two renames below: the old directory is the last complete one
            os.replace(stale, path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.mkdir()
    try:
        yield tmp
        fault_point(what, path)
        fsync_tree(tmp)
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            fsync_dir(path.parent)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(path.parent)


# ------------------------------------------------------------------------------------ append-only JSONL


def ensure_line_end(path: str | os.PathLike) -> None:
    """If `path` ends without a newline, end it: a complete last line is kept whole and the next append starts a
    line of its own. Reads one byte, never the whole file."""
    with contextlib.suppress(FileNotFoundError), open(path, "rb+") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() == 0:
            return
        f.seek(-1, os.SEEK_END)
        if f.read(1) != b"\n":
            f.write(b"\n")
            f.flush()
            os.fsync(f.fileno())


def append_jsonl(path: str | os.PathLike, rows: Iterable[Any], what: str = "append", durable: bool = True) -> None:
    """Append rows as JSON lines in one write (after `ensure_line_end`); fsynced unless `durable` is false."""
    data = b"".join(json_bytes(r) + b"\n" for r in rows)
    if not data:
        return
    ensure_line_end(path)
    with open(path, "ab") as f:
        fault_point(what, path, f, data)
        f.write(data)
        f.flush()
        if durable:
            os.fsync(f.fileno())


def read_jsonl(path: str | os.PathLike, *, repair: bool = False, on_damaged: str = "raise", what: str = "line",
               hint: str = "remove the line or start the run again") -> tuple[list[Any], list[str]]:
    """(rows, notes) of an append-only JSONL file that a kill may have torn.

    The last line, when it lacks its newline, was being written when the writer died: dropped if it does not
    parse (and, with `repair`, cut from the file), kept if it does (and, with `repair`, given its newline). A line
    that does not parse before the last is damage from elsewhere: `on_damaged="raise"` raises a DataError naming
    file and line; "drop" leaves it out (with `repair`, the file is rewritten atomically without it). `notes` says
    in one line each what was dropped or repaired."""
    from rlhf.data import DataError

    path = Path(path)
    rows, notes, keep, torn, damaged = [], [], [], None, False
    for line in scan(path, strict=False):  # the tolerant rules: any JSON value
        if line.reason is None:
            rows.append(line.value)
            keep.append(line.raw)
        elif not line.ended:  # no newline after it: the line being written when the writer died
            torn = line
            notes.append(f"{path}:{line.number}: dropped a {what} torn by an interruption ({len(line.raw)} bytes)")
        elif on_damaged != "drop":
            raise DataError(f"{path}:{line.number}: corrupt {what} (not JSON); {hint}")
        else:
            damaged = True
            notes.append(f"{path}:{line.number}: dropped a damaged {what} (not JSON)")
    if repair and damaged:
        atomic_write_bytes(path, b"".join(raw + b"\n" for raw in keep), what="repair")
    elif repair and torn is not None:
        with open(path, "rb+") as f:
            f.truncate(f.seek(0, os.SEEK_END) - len(torn.raw))
            f.flush()
            os.fsync(f.fileno())
    elif repair:
        ensure_line_end(path)  # a complete last line without its newline keeps its place and gets one
    return rows, notes


# ------------------------------------------------------------------------------------------- run lock


class RunLockedError(RuntimeError):
    """Another live process writes this run directory."""


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _describe(holder: dict) -> str:
    cmd = holder.get("command", "")
    cmd = cmd if len(cmd) <= 120 else cmd[:117] + "..."
    return (f"pid {holder.get('pid', '?')} on {holder.get('host', '?')} since {holder.get('since', '?')}"
            + (f" ({cmd})" if cmd else ""))


class RunLock:
    """An exclusive lock on a run directory, held until `release` or the end of the process.

    `<directory>/.rlhf.lock` holds who has it (pid, host, boot id, command, start time). The lock itself is an
    flock on that file, so the kernel drops it when the holder dies however it dies; where the file system has
    no flock, the file's existence is the lock and a holder that is gone (no such pid on this host, or a
    different boot) is recognised as stale and replaced.
    """

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        self.path = self.directory / LOCK_NAME
        self.fd: int | None = None
        self.took_over: dict | None = None  # the stale holder replaced, if any

    def holder(self) -> dict:
        try:
            return json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}

    def acquire(self) -> "RunLock":
        import fcntl

        self.directory.mkdir(parents=True, exist_ok=True)
        previous = self.holder()
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = self.holder()
            for _ in range(20):  # the holder may have locked but not yet written its name
                if holder:
                    break
                time.sleep(0.05)
                holder = self.holder()
            raise RunLockedError(f"{self.directory} is being written by another process ({_describe(holder)}); "
                                 "wait for it to finish or stop it, or use another output_dir") from None
        except OSError as e:  # no flock on this file system: the lock file's content decides
            os.close(fd)
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
            return self._acquire_by_content(previous)
        if previous and previous.get("pid") != os.getpid():
            self.took_over = previous
        self.fd = fd
        self._write_holder(fd)
        return self

    def _acquire_by_content(self, previous: dict) -> "RunLock":
        if previous and not self._stale(previous) and previous.get("pid") != os.getpid():
            raise RunLockedError(f"{self.directory} is being written by another process ({_describe(previous)}); "
                                 "wait for it to finish or stop it, or use another output_dir")
        self.took_over = previous or None
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        self._write_holder(fd)
        os.close(fd)
        self.fd = -1  # held by content
        return self

    @staticmethod
    def _stale(holder: dict) -> bool:
        if holder.get("host") != socket.gethostname():
            return False  # another machine's process: cannot be checked from here, so it is respected
        if holder.get("boot_id") and holder.get("boot_id") != _boot_id():
            return True
        return not _pid_alive(int(holder.get("pid", 0)))

    def _write_holder(self, fd: int) -> None:
        info = {"pid": os.getpid(), "host": socket.gethostname(), "boot_id": _boot_id(),
                "command": " ".join(sys.argv), "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        os.fsync(fd)

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self.fd, 0) if self.fd >= 0 else self.path.write_text("")
        if self.fd >= 0:
            os.close(self.fd)  # drops the flock
        self.fd = None


_held: dict[Path, list] = {}  # directory -> [RunLock, count]: a process re-entering its own run is not refused


_TEMPORARY = re.compile(r"^\.(.+)\.(tmp|old)-(\d+)(\.[^.]*)?$")


def remove_stale_temporaries(directory: str | os.PathLike) -> list[Path]:
    """Remove what killed writers left under `directory` (hidden `.<name>.tmp-<pid>` files and directories); a
    `.<name>.old-<pid>` directory whose `<name>` is missing (killed between the two renames of `publish_dir`) is
    put back. Called by the lock's holder, so no live writer owns them."""
    found = []
    for dirpath, dirnames, filenames in os.walk(directory):
        for name in dirnames + filenames:
            m = _TEMPORARY.match(name)
            if not m:
                continue
            p = Path(dirpath, name)
            target = Path(dirpath, m.group(1))
            if m.group(2) == "old" and not target.exists():
                os.replace(p, target)
            elif p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            found.append(p)
        dirnames[:] = [d for d in dirnames if not _TEMPORARY.match(d)]
    return found


def lock_run(directory: str | os.PathLike, say=None) -> RunLock:
    """Take (or re-enter) this process's lock on `directory`; RunLockedError if another live process holds it.
    Pair every call with `unlock_run`."""
    key = Path(directory).resolve()
    if key in _held:
        _held[key][1] += 1
        return _held[key][0]
    lock = RunLock(key).acquire()
    _held[key] = [lock, 1]
    remove_stale_temporaries(key)
    if lock.took_over and lock.took_over.get("pid") and say is not None:
        say(f"[lock] {key}: took over the lock left by {_describe(lock.took_over)}, which is no longer running")
    return lock


def unlock_run(directory: str | os.PathLike) -> None:
    key = Path(directory).resolve()
    if key in _held:
        _held[key][1] -= 1
        if _held[key][1] <= 0:
            _held.pop(key)[0].release()


def lock_run_collective(directory: str | os.PathLike, is_main: bool) -> None:
    """`lock_run` for a launch of several processes: the main process takes the lock and every rank learns the
    outcome, so that a refused launch stops on every rank with the same one-line message (no rank left waiting
    at a barrier). The other ranks of one launch share the main process's lock."""
    import torch.distributed as dist

    message = None
    if is_main:
        try:
            lock_run(directory, say=lambda m: print(m, file=sys.stderr, flush=True))
        except RunLockedError as e:
            message = str(e)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        box = [message]
        dist.broadcast_object_list(box, src=0)
        message = box[0]
    if message is not None:
        raise RunLockedError(message)


def releases_run_lock(fn):
    """For a stage's entry function `fn(cfg) -> metrics`: the lock on cfg.output_dir taken during the call (by
    rlhf.runs.prepare_output_dir) is released when the call returns or raises, early stops included. A lock this
    process held before the call (the pipeline's) stays held."""

    @functools.wraps(fn)
    def wrapper(cfg, *args, **kwargs):
        key = Path(cfg.output_dir).resolve()
        before = _held[key][1] if key in _held else 0
        try:
            return fn(cfg, *args, **kwargs)
        finally:
            while key in _held and _held[key][1] > before:
                unlock_run(key)

    return wrapper
