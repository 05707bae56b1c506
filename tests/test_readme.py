"""The commands of the README and of the guides it sends readers to run as shown, so docs and code cannot
drift apart.

Lines on the tiny model (`configs/tiny/`, `--tiny`, `--help`) run here in a scratch directory that links
the repository's configs/, reward_data/ and scripts/; the two commands that need the embedded model in full
(`bash scripts/quickstart.sh`, and `bash scripts/test.sh`, which is this suite) are what `.ci/run` runs.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
# the README, then the guides moved out of it, each run in its own order (a later line of a file may read what
# an earlier one wrote)
DOCS = ["README.md", "docs/stages.md", "docs/pipeline.md", "docs/launching.md", "docs/dialogue.md", "docs/pomdp.md",
        "docs/decision_transformer.md"]
BIN = Path(sys.executable).parent


def code_lines() -> list[str]:
    """Command lines of the bash blocks of DOCS, comments stripped."""
    lines = []
    text = "\n".join((ROOT / name).read_text() for name in DOCS)
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                lines.append(line)
    return lines


def test_the_two_commands_are_in_the_readme_and_ci_runs_them():
    block = re.search(r"## Two commands.*?```bash\n(.*?)```", README, flags=re.S).group(1)
    commands = [ln.split("#", 1)[0].strip() for ln in block.splitlines() if ln.strip()]
    assert commands == ["bash scripts/quickstart.sh", "bash scripts/test.sh"]
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert "bash scripts/test.sh" in ci and "bash scripts/quickstart.sh" in ci


def tiny_lines() -> list[str]:
    picked = [ln for ln in code_lines()
              if "configs/tiny/" in ln or "--tiny" in ln or ln.endswith("--help") or " runs/try" in ln]
    assert len(picked) >= 5, picked
    return picked


def scratch(tmp_path: Path) -> Path:
    for name in ("configs", "reward_data", "scripts"):
        (tmp_path / name).symlink_to(ROOT / name)
    return tmp_path


def run_line(line: str, cwd: Path) -> subprocess.CompletedProcess:
    argv = shlex.split(line)
    if argv[0] in ("rlhf", "accelerate", "torchrun"):
        argv[0] = str(BIN / argv[0])
    if argv[:3] == [str(BIN / "accelerate"), "launch", "--multi_gpu"]:
        argv[2:2] = ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    if argv[0] == "python":
        argv[0] = sys.executable
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_readme_lines_run_in_order(tmp_path):
    """Each tiny-model line of the README, in the README's order, in one scratch directory (a later line may
    use what an earlier one wrote, as a reader following along would)."""
    cwd = scratch(tmp_path)
    for line in [ln for ln in tiny_lines() if "launch" not in ln and "torchrun" not in ln]:
        proc = run_line(line, ROOT if line.startswith("bash scripts/") else cwd)
        assert proc.returncode == 0, f"{line}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        if line.endswith("--help"):
            assert "--learning_rate" in proc.stdout or "--temperature" in proc.stdout, line
            continue
        if "quickstart.sh --tiny" in line:  # the tiny pipeline: every stage ran (or was already done)
            root = ROOT / "runs/tiny/quickstart"
            record = json.loads((root / "pipeline.json").read_text())
            assert {k: v["status"] in ("ran", "skipped") for k, v in record["stages"].items()} == dict.fromkeys(
                ("sft", "collect", "label", "reward", "policy", "evaluate"), True), record["stages"]
            assert (root / "evaluate" / "report.md").is_file()
            continue
        out = re.search(r"--output_dir (\S+)", line)
        if out is None:  # a command that writes one named file (rlhf reward score --output FILE)
            assert (cwd / re.search(r"--output (\S+)", line).group(1)).is_file(), line
            continue
        run_dir = cwd / out.group(1)
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert metrics["num_processes"] == 1, line


@pytest.mark.slow
def test_readme_multiprocess_lines_run_two_processes(tmp_path):
    lines = [ln for ln in tiny_lines() if "launch" in ln or "torchrun" in ln]
    assert len(lines) == 2
    cwd = scratch(tmp_path)
    for line in lines:
        proc = run_line(line, cwd)
        assert proc.returncode == 0, f"{line}\n{proc.stderr[-3000:]}"
        run_dir = cwd / re.search(r"--output_dir (\S+)", line).group(1)
        assert json.loads((run_dir / "metrics.json").read_text())["num_processes"] == 2


def test_the_readme_is_a_front_door_and_its_links_resolve():
    """The README says what the toolkit is and where to read more, in a couple of hundred lines; every relative
    link of the README and of the guides points at a file that exists."""
    assert len(README.splitlines()) <= 220
    for heading in ("## Two commands", "## Stages and modules", "## What a run writes", "## Where to read more"):
        assert heading in README, heading
    for name in ("docs", "benchmarks"):
        for doc in [ROOT / "README.md", *sorted((ROOT / name).glob("*.md"))]:
            for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text()):
                if "://" not in target:
                    assert (doc.parent / target).exists(), f"{doc.relative_to(ROOT)} links to missing {target}"
