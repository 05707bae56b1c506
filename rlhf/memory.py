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

import ctypes
import ctypes.util
import os
import re
import resource
import sys

_SCOPE = "process"
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number (malloc.h)


def return_freed_memory(threshold: int = 128 << 10) -> bool:
    """Have glibc serve allocations of `threshold` bytes and more with their own mmap, so that a freed
    activation or logits tensor goes back to the operating system at once.

    By default glibc raises that threshold to the largest block freed so far (up to 32 MB), after which the
    per-layer tensors of a forward pass (a few MB each) come from its heap, and freed heap memory mostly stays
    with the process. Measured on the policy stage (SmolLM2-135M, configs/policy.yaml, one update, the gold
    judge as reward, one torch thread): resident memory climbed by ~0.5 GB with every minibatch although
    each one's tensors were freed, to a 3954 MB peak; with the threshold fixed it fell back after each backward
    pass (3307 MB at 1 MB), and with micro_batch_size 4 at 128 KB the peak was 1433 MB. SFT (configs/sft.yaml,
    3 steps): 3182-3219 MB peak with glibc's defaults, 2790 MB with this, about 10% slower (page faults of
    fresh mappings; 18.7 vs 16.8 s). Fixing the threshold also turns off glibc's adjustment, which is what
    keeps the effect. No-op (False) off glibc, or with RLHF_MALLOC_DEFAULTS=1 in the environment.
    """
    if os.environ.get("RLHF_MALLOC_DEFAULTS") == "1" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, int(threshold)))
    except (OSError, AttributeError):  # another C library (musl has no mallopt)
        return False


def _vm(field: str) -> int | None:
    """A VmXXX line of /proc/self/status, in bytes (None where there is no /proc)."""
    try:
        with open("/proc/self/status") as f:
            m = re.search(rf"^{field}:\s+(\d+)\s+kB", f.read(), re.M)
    except OSError:
        return None
    return int(m.group(1)) * 1024 if m else None


def reset_peak() -> None:
    """Start a new measuring span: reset the kernel's peak RSS (and torch's peak GPU memory). Called when a
    stage starts, which is also where freed memory starts going back to the system (`return_freed_memory`)."""
    global _SCOPE
    return_freed_memory()
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
