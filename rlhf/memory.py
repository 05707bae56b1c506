"""Each stage's own peak memory: resident set size of the process, and GPU memory where there is a GPU.

`rlhf run` runs every stage in one process, and the kernel's running peak (`ru_maxrss`, VmHWM) only rises, so
the peak read at the end of the fourth stage would be the largest of the first four. On Linux the kernel lets a
process reset that peak (`echo 5 > /proc/self/clear_refs`, since Linux 4.0): `reset_peak()` does so when a
stage starts (rlhf.runs.prepare_output_dir) and `peak()` reads VmHWM when it ends (RunLogger.finish), so each
stage gets the peak of its own span. Where the reset is not possible (another OS, a locked-down /proc), the
figure is the process's peak since it started and `memory/rss_scope` says so. GPU: torch's peak allocated
memory, reset the same way. In a launched multi-process run each process measures itself; metrics.json holds
the main process's figure.
"""

from __future__ import annotations

import re
import resource
import sys

_SCOPE = "process"


def _vm(field: str) -> int | None:
    """A VmXXX line of /proc/self/status, in bytes (None where there is no /proc)."""
    try:
        with open("/proc/self/status") as f:
            m = re.search(rf"^{field}:\s+(\d+)\s+kB", f.read(), re.M)
    except OSError:
        return None
    return int(m.group(1)) * 1024 if m else None


def reset_peak() -> None:
    """Start a new measuring span: reset the kernel's peak RSS (and torch's peak GPU memory)."""
    global _SCOPE
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        _SCOPE = "stage"
    except OSError:
        _SCOPE = "process"
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.reset_peak_memory_stats()


def peak() -> dict[str, float | str]:
    """Peak resident memory of this span in MB (`memory/peak_rss_mb`), its scope, and the peak GPU memory
    allocated by torch in MB where CUDA is in use (`memory/peak_gpu_mb`)."""
    hwm = _vm("VmHWM")
    if hwm is None:  # no /proc: the process's peak since it started (kilobytes on Linux, bytes on macOS)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        hwm = rss if sys.platform == "darwin" else rss * 1024
        scope = "process"
    else:
        scope = _SCOPE
    out: dict[str, float | str] = {"memory/peak_rss_mb": round(hwm / 2**20, 1), "memory/rss_scope": scope}
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        out["memory/peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out
