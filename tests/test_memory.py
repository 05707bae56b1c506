"""Each stage's own peak memory (rlhf.memory): a span's peak sees what the span allocated, and a new span does
not inherit an earlier span's larger peak (as ru_maxrss would in `rlhf run`, one process for every stage)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from rlhf.memory import peak, reset_peak

# One child process per check: the test runner's own peak must not leak into the figures.
CHILD = """
import json, sys
from rlhf.memory import peak, reset_peak
reset_peak()
big = bytearray(400 * 2**20); big[::4096] = b"x" * len(big[::4096])  # touch every page: 400 MB resident
first = peak()
del big
reset_peak()
small = bytearray(50 * 2**20); small[::4096] = b"x" * len(small[::4096])
second = peak()
print(json.dumps([first, second]))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the per-span reset needs Linux's clear_refs")
def test_each_span_reports_its_own_peak():
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, check=True)
    first, second = json.loads(out.stdout)
    assert first["memory/rss_scope"] == second["memory/rss_scope"] == "stage"
    base = second["memory/peak_rss_mb"] - 50
    # the first span holds the 400 MB; the second, after the reset, only its 50 MB over the same base
    assert first["memory/peak_rss_mb"] - base == pytest.approx(400, abs=30)
    assert second["memory/peak_rss_mb"] < first["memory/peak_rss_mb"] - 300


def test_peak_reports_megabytes_and_scope():
    reset_peak()
    p = peak()
    assert p["memory/rss_scope"] in ("stage", "process") and p["memory/peak_rss_mb"] > 10
