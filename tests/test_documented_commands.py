"""Every command the documentation shows is real: its subcommand exists, every repository path it names exists,
and its arguments parse into the command's config (without running it).

Commands are the lines that start with `rlhf `, `python scripts/...`, `python -m rlhf...`, `accelerate launch`,
`torchrun` or `bash scripts/...` (after an indent, a `$ ` prompt or a YAML comment's `# `) in README.md,
docs/*.md, the comments of configs/**/*.yaml and scripts/*.sh, and the docstrings of rlhf/ and scripts/. Paths
under runs/ are what an earlier command writes, so they are not required to exist, nor is a path that the
command or an earlier one of the same file writes (the value of --output_dir, --output, --out or --write); a
`<placeholder>`, `[option]` or `...` marks a usage pattern, whose subcommand and paths are checked. `--help`
commands run (in this process: they print and exit). All bad commands are reported together.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib
import io
import re
import runpy
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMMAND = re.compile(r"(rlhf |accelerate launch |torchrun |bash scripts/|(\S*/)?python3? +(scripts/|-m rlhf))")
OUTPUT = re.compile(r"rlhf [\w-]+: ")  # a message the command printed ("rlhf label: error: ..."), not a command
REPO_DIRS = ("configs", "scripts", "reward_data", "rlhf", "docs", "benchmarks", "tests")
OUTPUT_DIRS = ("runs/",)  # written by earlier commands
OUTPUT_FLAGS = ("--output_dir", "--output", "--out", "--write")


@dataclass(frozen=True)
class Documented:
    where: str  # file:line
    line: str  # the command as shown


# ------------------------------------------------------------------------------------------ finding


def _command_lines(lines: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """(line number, command) for the lines that start with a command prefix; `\\` continues a command."""
    found, pending = [], None
    for number, raw in lines:
        text = raw.strip()
        for lead in ("$ ", "# ", "#"):
            if text.startswith(lead) and pending is None:
                text = text[len(lead):].lstrip()
        if pending is not None:
            pending = (pending[0], pending[1] + " " + text.rstrip("\\").strip())
            if not text.endswith("\\"):
                found.append(pending)
                pending = None
            continue
        if COMMAND.match(text) and not OUTPUT.match(text):
            if text.endswith("\\"):
                pending = (number, text.rstrip("\\").strip())
            else:
                found.append((number, text))
    return found


def _docstrings(path: Path) -> list[tuple[int, str]]:
    """(line number, text line) of every docstring in a Python file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
                    and isinstance(first.value.value, str):
                start = first.lineno
                out += [(start + i, line) for i, line in enumerate(first.value.value.splitlines())]
    return out


def documented_commands() -> list[Documented]:
    sources: list[tuple[Path, list[tuple[int, str]]]] = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        sources.append((path, list(enumerate(path.read_text(encoding="utf-8").splitlines(), 1))))
    for path in sorted((ROOT / "configs").rglob("*.yaml")) + sorted((ROOT / "scripts").glob("*.sh")):
        lines = enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        sources.append((path, [(n, line) for n, line in lines if line.lstrip().startswith("#")]))
    for path in sorted((ROOT / "rlhf").rglob("*.py")) + sorted((ROOT / "scripts").glob("*.py")):
        sources.append((path, _docstrings(path)))
    return [Documented(f"{path.relative_to(ROOT)}:{number}", command)
            for path, lines in sources for number, command in _command_lines(lines)]


# ------------------------------------------------------------------------------------------ checking


def _words(line: str) -> tuple[list[str], bool]:
    """(the command's words, whether they are the whole command): a trailing `# comment` or `(remark)` is
    dropped, and the words stop at a shell operator or, incomplete, at a `<placeholder>`, `[option]` or `...`."""
    words = []
    for word in shlex.split(line, comments=True):
        if word.startswith("(") or word in ("|", "||", "&&", ";", ">", "2>&1"):
            break
        if word.startswith(("<", "[")) or word == "...":
            return words, False
        words.append(word)
    return words, True


def _outputs(words: list[str]) -> set[str]:
    """The paths a command writes (the values of its output flags)."""
    return {value for flag, value in zip(words, words[1:]) if flag in OUTPUT_FLAGS}


def _check_paths(words: list[str], written: set[str] = frozenset()) -> list[str]:
    problems = []
    for word in words:
        value = word.split("=", 1)[1] if word.startswith("--") and "=" in word else word
        for part in value.split(","):
            if part.startswith(OUTPUT_DIRS) or part in written or "{" in part or "*" in part:
                continue
            if part.split("/", 1)[0] in REPO_DIRS and "/" in part and not (ROOT / part).exists():
                problems.append(f"{part} does not exist")
    return problems


def _stage_config(stage: str, args: list[str]) -> tuple[type | None, list[str], str]:
    """(config class, its arguments, prog) of `rlhf <stage> <args>`; class None for commands without one."""
    from rlhf.pipeline import STAGES as PIPELINE

    if stage in PIPELINE:
        module, cls, _ = PIPELINE[stage]
        if stage == "reward" and args[:1] == ["score"]:
            module, cls, args = "rlhf.stages.reward", "ScoreConfig", args[1:]
        return getattr(importlib.import_module(module), cls), args, f"rlhf {stage}"
    if stage in ("dialogue", "pomdp", "dt"):
        commands = importlib.import_module(f"rlhf.{stage}.cli").COMMANDS
        if not args or args[0] in ("-h", "--help", "help"):
            return None, args, f"rlhf {stage}"
        if args[0] not in commands:
            raise ValueError(f"'{args[0]}' is not a command of rlhf {stage} ({', '.join(commands)})")
        return commands[args[0]].config_class(), args[1:], f"rlhf {stage} {args[0]}"
    return None, args, f"rlhf {stage}"


def _run_help(argv: list[str]) -> str:
    """Run `rlhf <argv>` ending in --help in this process; '' when it printed help and succeeded."""
    from rlhf.cli import main

    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
            code = main(argv)
    except SystemExit as e:
        code = e.code
    if code not in (0, None) or "usage" not in out.getvalue():
        return f"`rlhf {' '.join(argv)}` exited {code} without a usage text"
    return ""


def _check_rlhf(argv: list[str]) -> list[str]:
    """Problems of `rlhf <argv>` (argv without the leading `rlhf`)."""
    from rlhf.cli import STAGES
    from rlhf.config import ConfigError, parse_args

    if not argv or argv[0] in ("-h", "--help", "help"):
        return []
    stage, args = argv[0], argv[1:]
    if stage not in STAGES:
        return [f"'{stage}' is not an rlhf subcommand"]
    if args and args[-1] in ("-h", "--help"):
        return [p for p in [_run_help(argv)] if p]
    if stage == "run":
        return _check_pipeline(args)
    if stage == "launch":
        return _check_launch(args)
    try:
        cls, args, prog = _stage_config(stage, args)
    except ValueError as e:
        return [str(e)]
    if cls is None:
        return [p for p in [_run_help([stage, "--help"])] if p] if not args else [f"cannot check `rlhf {stage}`"]
    try:
        parse_args(cls, args, prog=prog)
    except ConfigError as e:
        if not _only_missing_outputs(str(e)):
            return [f"does not parse: {e}"]
    except SystemExit as e:  # argparse itself refused the flags
        return [f"argparse exited {e.code}"]
    return []


def _only_missing_outputs(message: str) -> bool:
    """A ConfigError about a file an earlier command writes (under runs/) is the documented order, not a fault."""
    return any(f" {d}" in message or f"'{d}" in message or f"/{d}" in message for d in OUTPUT_DIRS) and \
        ("not found" in message or "does not exist" in message or "no such" in message.lower())


def _check_pipeline(args: list[str]) -> list[str]:
    from rlhf.config import ConfigError
    from rlhf.pipeline import load_pipeline, resolve

    p = argparse.ArgumentParser(exit_on_error=False)
    p.add_argument("pipeline")
    p.add_argument("--output_dir", default="")
    p.add_argument("--only", default="")
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--partial_labels", default="false")
    try:
        ns = p.parse_args(args)
    except (argparse.ArgumentError, SystemExit) as e:
        return [f"rlhf run arguments do not parse: {e}"]
    if not (ROOT / ns.pipeline).is_file():
        return [f"pipeline file {ns.pipeline} does not exist"]
    try:
        root, stages = load_pipeline(str(ROOT / ns.pipeline), ns.set, ns.output_dir)
        for name, section in stages.items():
            resolve(name, section, root, set(stages))
    except ConfigError as e:
        return [f"pipeline does not resolve: {e}"]
    return []


def _check_launch(args: list[str]) -> list[str]:
    from rlhf.config import ConfigError
    from rlhf.launch import parser, resolve_preset

    try:
        ns = parser().parse_args(args)
    except SystemExit as e:
        return [f"rlhf launch arguments do not parse (exit {e.code})"]
    if ns.list or not ns.preset:
        return []
    try:
        resolve_preset(ns.preset)
    except ConfigError as e:
        return [str(e)]
    return _check_rlhf([ns.stage, *ns.stage_args]) if ns.stage else []


class _Parsed(Exception):
    pass


def _check_script(script: str, args: list[str]) -> list[str]:
    """`python scripts/X.py args`: the file exists; a stage script's args parse as `rlhf <stage> args`, another
    script's through its own argparse parser (stopped right after parsing)."""
    path = ROOT / script
    if not path.is_file():
        return [f"{script} does not exist"]
    if path.suffix != ".py":
        return []
    stage = re.search(r'entry\(\["([a-z]+)"', path.read_text(encoding="utf-8"))
    if stage:
        return _check_rlhf([stage.group(1), *args])
    original = argparse.ArgumentParser.parse_args

    def parse_and_stop(self, args=None, namespace=None):
        raise _Parsed(original(self, args, namespace))

    argv = sys.argv
    try:
        argparse.ArgumentParser.parse_args = parse_and_stop
        sys.argv = [str(path), *args]
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            runpy.run_path(str(path), run_name="__main__")
    except _Parsed:
        return []
    except SystemExit as e:
        return [] if e.code in (0, None) and "--help" in args else [f"{script} refused its arguments (exit {e.code})"]
    finally:
        argparse.ArgumentParser.parse_args = original
        sys.argv = argv
    return [f"{script} ran without parsing arguments with argparse; cannot check it"]


def _check_module(module: str, args: list[str]) -> list[str]:
    if module in ("rlhf", "rlhf.cli"):
        return _check_rlhf(args)
    return [f"`python -m {module}`: use `rlhf` or a script"] if importlib.util.find_spec(module) is None else []


def problems_of(line: str, written: set[str] = frozenset()) -> list[str]:
    """What is wrong with one documented command; `written`: paths earlier commands of its file write."""
    words, complete = _words(line)
    found = _check_paths(words, set(written) | _outputs(words))  # what it writes itself need not exist yet
    first = words[0] if words else ""
    if not complete:  # a usage pattern: its subcommand exists, its paths exist
        if first == "rlhf" and len(words) > 1 and not words[1].startswith("-"):
            from rlhf.cli import STAGES

            found += [] if words[1] in STAGES else [f"'{words[1]}' is not an rlhf subcommand"]
        return found
    if first == "rlhf":
        found += _check_rlhf(words[1:])
    elif first == "bash":
        found += [] if (ROOT / words[1]).is_file() else [f"{words[1]} does not exist"]
    elif re.search(r"(^|/)python3?$", first):
        if words[1:2] == ["-m"]:
            found += _check_module(words[2], words[3:])
        else:
            found += _check_script(words[1], words[2:])
    elif first in ("accelerate", "torchrun"):
        scripts = [i for i, w in enumerate(words) if w.endswith(".py")]
        if not scripts:
            found.append("no script in the launch command")
        else:
            found += _check_script(words[scripts[0]], words[scripts[0] + 1:])
    return found


# ------------------------------------------------------------------------------------------ tests


def test_commands_are_found_in_every_kind_of_source():
    found = documented_commands()
    where = {d.where.split(":")[0] for d in found}
    assert "README.md" in where and any(w.startswith("docs/") for w in where)
    assert any(w.startswith("configs/") for w in where) and any(w.startswith("rlhf/") for w in where)
    assert any(w.startswith("scripts/") for w in where)
    kinds = {d.line.split()[0] for d in found}
    assert {"rlhf", "python", "accelerate", "bash"} <= kinds, kinds


def test_the_checker_catches_bad_commands():
    assert problems_of("rlhf sft --config configs/tiny/sft.yaml --max_steps 5") == []
    assert problems_of("rlhf sft --config configs/tiny/nope.yaml")
    assert problems_of("rlhf sft --max_stepz 5")
    assert problems_of("rlhf dt trian --config configs/dt/train_cartpole.yaml")
    assert problems_of("rlhf dt train --config configs/dt/dt-train_cartpole.yaml")
    assert problems_of("rlhf frobnicate")
    assert problems_of("python scripts/nope.py")
    assert problems_of("python scripts/make_data.py --sede 0")
    assert problems_of("bash scripts/nope.sh")
    assert problems_of("accelerate launch --num_processes 2 scripts/sft.py --config configs/tiny/sft.yaml "
                       "--max_stepz 5")
    assert problems_of("rlhf run configs/tiny/nope.yaml")
    assert problems_of("rlhf launch nopreset sft")
    assert problems_of("python scripts/pin_behaviour.py --check tests/data/pin.json")
    assert not problems_of("python scripts/pin_behaviour.py --check tests/data/pin.json", {"tests/data/pin.json"})
    assert problems_of("rlhf run configs/quickstart.yaml --only dpo   after adding")
    assert not problems_of("rlhf label --candidates ... --labeler browser")  # a pattern: its known parts
    assert problems_of("rlhf lable --candidates ... --labeler browser")


def test_every_documented_command_is_real(monkeypatch):
    monkeypatch.chdir(ROOT)  # documented commands run from the repository root
    bad, written = [], {}
    for documented in documented_commands():
        source = documented.where.split(":")[0]
        try:
            problems = problems_of(documented.line, written.get(source, set()))
            written.setdefault(source, set()).update(_outputs(_words(documented.line)[0]))
        except Exception as e:  # a checker failure is a finding too, never a crash of the whole test
            problems = [f"{type(e).__name__}: {e}"]
        bad += [f"{documented.where}: {documented.line}\n    {p}" for p in problems]
    assert not bad, f"{len(bad)} documented command(s) are wrong:\n" + "\n".join(bad)
