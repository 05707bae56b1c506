"""Benchmarks that remake themselves: every script in benchmarks/ records its machine, statistics and results
through benchmarks/common.py, and every file in benchmarks/results/ names the one command that remakes it, a
command its script accepts (nothing runs here: the commands are parsed, not run)."""

from __future__ import annotations

import ast
import functools
import importlib.util
import json
import math
import shlex
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import common  # noqa: E402

SCRIPTS = sorted(p for p in (ROOT / "benchmarks").glob("*.py") if p.name != "common.py")
RESULTS = sorted(p for p in (ROOT / "benchmarks" / "results").iterdir() if p.is_file())
JSONS = [p for p in RESULTS if p.suffix == ".json"]
# helpers that belong to common.py alone: a script defining its own is a copy that can drift
SHARED = {"machine", "load_average", "command", "finish", "write_json", "mean_sd", "t_interval", "slope",
          "spearman", "proportion_ci95", "T95", "paired", "seed_record", "check_seed_record"}
# scripts whose figures are learning results over seeds: each records its seed split (benchmarks/README.md,
# "Protocol") through `seed_split(args)` = common.seed_record(...); a selection study has no report seeds
LEARNING = ("dialogue_results", "pomdp", "pomdp_results", "dt_results", "quickstart", "quickstart_sweep",
            "reward_accuracy", "dpo", "overoptimisation", "policy", "reward", "test_margins")
SELECTION_STUDIES = ("quickstart_sweep",)


@functools.cache
def script_module(path: Path):
    spec = importlib.util.spec_from_file_location(f"bench_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def recorded(path: Path) -> tuple[list[str], object]:
    """The results file's command split into words, and its arguments as the named script parses them."""
    data = json.loads(path.read_text())
    assert isinstance(data.get("command"), str), f"{path.name}: no 'command' recorded"
    argv = shlex.split(data["command"])
    assert argv[:1] == ["python"] and argv[1].startswith("benchmarks/"), f"{path.name}: {data['command']}"
    script = ROOT / argv[1]
    assert script.is_file() and script in SCRIPTS, f"{path.name}: {argv[1]} is not a benchmark script"
    try:
        args = script_module(script).parse_args(argv[2:])
    except SystemExit as e:
        raise AssertionError(f"{path.name}: {argv[1]} refuses the recorded arguments {argv[2:]}") from e
    return argv, args


def repo_path(value: str) -> Path:
    """A path argument as the script uses it when run from the repository root."""
    path = Path(value)
    return (path if path.is_absolute() else ROOT / path).resolve()


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_every_script_writes_through_the_shared_helper(script):
    tree = ast.parse(script.read_text())
    from_common = {a.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                   and node.module == "benchmarks.common" for a in node.names}
    assert "finish" in from_common, f"{script.name} does not import finish from benchmarks.common"
    calls = {node.func.id for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)}
    assert "finish" in calls, f"{script.name} never calls finish()"
    own = {node.name for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
    own |= {t.id for node in ast.walk(tree) if isinstance(node, ast.Assign) for t in node.targets
            if isinstance(t, ast.Name)}
    assert not own & SHARED, f"{script.name} defines its own {sorted(own & SHARED)}: use benchmarks.common's"
    imported = {a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names}
    assert "platform" not in imported, f"{script.name} records the machine itself: benchmarks.common.machine does"
    assert "parse_args" in own, f"{script.name} has no parse_args(argv) for its recorded commands to be checked"


@pytest.mark.parametrize("path", JSONS, ids=lambda p: p.name)
def test_every_results_file_records_the_command_that_remakes_it(path):
    argv, args = recorded(path)
    reused = [a for a in argv[2:] if a.split("=")[0] in common.REUSE_FLAGS]
    assert not reused, f"{path.name}: made from earlier outputs ({reused}), not remade by its command"
    assert repo_path(args.out) == path.resolve(), f"{path.name}: its command writes {args.out}"


def test_every_file_in_results_is_written_by_a_recorded_command():
    written = set()
    for path in JSONS:
        _, args = recorded(path)
        written |= {repo_path(getattr(args, name)) for name in ("out", "plot") if getattr(args, name, None)}
    assert not [p.name for p in RESULTS if p.resolve() not in written]


def test_finish_records_a_command_relative_to_the_repository(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", [str(ROOT / "benchmarks" / "policy.py")])
    out = tmp_path / "r.json"
    argv = ["--updates", "2", "--out", str(ROOT / "benchmarks/results/x.json"), f"--plot={ROOT}/a b.png",
            "--work", str(tmp_path)]
    result = common.finish({"figure": 1.5, "machine": {"threads": 1}}, out, argv)
    assert result["command"] == ("python benchmarks/policy.py --updates 2 --out benchmarks/results/x.json "
                                 f"'--plot=a b.png' --work {tmp_path}")
    assert json.loads(out.read_text()) == result == json.loads(capsys.readouterr().out.splitlines()[-1])
    assert result["machine"]["threads"] == 1 and result["machine"]["python"] and "cpu_count" in result["machine"]
    assert not list(tmp_path.glob("*.tmp"))


def test_statistics_against_values_worked_out_by_hand():
    assert common.mean_sd([1, 2, 3, 4]) == pytest.approx((2.5, math.sqrt(5 / 3)))
    assert common.mean_sd([1, 2, 3, 4], ddof=0) == pytest.approx((2.5, math.sqrt(1.25)))
    assert common.mean_sd([7.0]) == (7.0, 0.0)
    # 3 values: mean 2, sd 1, t(2) = 4.303 -> half-width 4.303 / sqrt(3)
    t = common.t_interval([1.0, 2.0, 3.0])
    assert t["ci95"] == pytest.approx(4.303 / math.sqrt(3)) and t["low"] == pytest.approx(2 - 4.303 / math.sqrt(3))
    assert common.t_interval([5.0])["ci95"] is None and math.isnan(common.t_interval([5.0])["low"])
    assert common.proportion_ci95(0.5, 100) == pytest.approx(1.96 * 0.05)
    # x = 0..3 (mean 1.5, Sxx 5), y mean 4: Sxy = 9, slope 1.8; residuals -0.3, 0.9, -0.9, 0.3 (RSS 1.8)
    b, se = common.slope([1.0, 4.0, 4.0, 7.0])
    assert b == pytest.approx(1.8) and se == pytest.approx(math.sqrt(1.8 / 2 / 5))
    assert math.isnan(common.slope([1.0, 2.0])[1])
    assert common.spearman([1, 2, 3, 4], [10, 30, 20, 40]) == pytest.approx(0.8)
    assert common.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)


def test_the_results_table_gives_each_file_with_its_command():
    """benchmarks/README.md's table names every results file beside the command the file records."""
    rows = [ln for ln in (ROOT / "benchmarks" / "README.md").read_text().splitlines() if ln.startswith("| ")]
    for path in JSONS:
        command = json.loads(path.read_text())["command"]
        assert any(f"`{command}`" in row and f"`{path.name}`" in row for row in rows), (
            f"benchmarks/README.md has no row with {path.name} and `{command}`")


def test_seed_record_and_paired_intervals_by_hand(tmp_path):
    r = common.seed_record([100, 101], note="n")
    assert r == {"selection": [0, 1, 2, 3, 4, 5], "report": [100, 101], "disjoint": True, "note": "n"}
    assert common.seed_record([0, 100])["disjoint"] is False  # a report on a selection seed is flagged
    assert common.seed_record([0], selection=[])["disjoint"] is True
    # differences 0.2, 0.05, 0.2: mean 0.15, sd sqrt(0.0075), half-width 4.303 sqrt(0.0075 / 3)
    d = common.paired([0.6, 0.5, 0.7], [0.4, 0.45, 0.5])
    assert d["differences"] == pytest.approx([0.2, 0.05, 0.2])
    assert d["mean"] == pytest.approx(0.15) and d["ci95"] == pytest.approx(4.303 * math.sqrt(0.0075 / 3))
    with pytest.raises(ValueError):
        common.paired([1.0, 2.0], [1.0])
    for bad in ([0, 1, 2], {"report": [100]}, {"selection": [0], "report": 100, "disjoint": True, "note": ""}):
        with pytest.raises(ValueError, match="seed_record"):
            common.finish({"seeds": bad}, tmp_path / "r.json", [])
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("name", LEARNING)
def test_learning_scripts_report_on_seeds_no_choice_was_made_on(name):
    """Each learning script's defaults report on seeds disjoint from its selection seeds (new seeds, 100 and up,
    where any choice was made on seeds) and its main writes the record into the results (`"seeds":
    seed_split(args)`)."""
    path = ROOT / "benchmarks" / f"{name}.py"
    module = script_module(path)
    record = module.seed_split(module.parse_args([]))
    common.check_seed_record(record)
    assert record["disjoint"] and not set(record["report"]) & set(record["selection"]), record
    assert bool(record["report"]) != (name in SELECTION_STUDIES), record
    if record["selection"] and record["report"]:  # settings were chosen on seeds: report on new ones
        assert min(record["report"]) >= 100, record
    tree = ast.parse(path.read_text())
    written = [node for node in ast.walk(tree) if isinstance(node, ast.Dict) for k, v in zip(node.keys, node.values)
               if isinstance(k, ast.Constant) and k.value == "seeds" and isinstance(v, ast.Call)
               and isinstance(v.func, ast.Name) and v.func.id == "seed_split"]
    assert written, f"{name}.py never writes 'seeds': seed_split(args) into its results"


def test_every_script_that_runs_seeds_records_the_split():
    """A script not listed as a learning script has no seeds to record (no --seed/--seeds/--first_seed flag)."""
    for path in SCRIPTS:
        if path.stem not in LEARNING:
            args = vars(script_module(path).parse_args([]))
            assert not {"seed", "seeds", "first_seed"} & set(args), f"{path.name} runs seeds: add it to LEARNING"


def test_dialogue_comparisons_are_paired_over_seeds_not_pooled_over_episodes():
    """Higher in every seed by 0.2, 0.05, 0.2 on 300 episodes each: pooled over 900 episodes this was "met"
    (difference 0.15 +- 0.045); paired over 3 seeds the interval (+-0.215) covers 0, so it is not."""
    import argparse

    module = script_module(ROOT / "benchmarks" / "dialogue_results.py")
    success = {"ilql": [0.6, 0.5, 0.7], "bc": [0.4, 0.45, 0.5]}
    per_seed = {s: {a: {"success": v[i], "return": v[i], "turns": 3.0, "compute": {"lm_steps": 1.0}}
                    for a, v in success.items()} for i, s in enumerate((100, 101, 102))}
    args = argparse.Namespace(agents=["bc", "ilql"], episodes=300)
    summary = module.summarise("guess", per_seed, args, {})
    c = summary["comparisons"]["ilql>bc"]
    assert c["per_seed"] == pytest.approx([0.2, 0.05, 0.2]) and c["higher_every_seed"]
    assert c["difference"] == pytest.approx(0.15) and c["ci95"] == pytest.approx(4.303 * math.sqrt(0.0075 / 3))
    assert c["met"] is False
    assert summary["ilql"]["success"]["ci95"] == pytest.approx(4.303 * 0.1 / math.sqrt(3))
    assert "success_pooled" not in summary["ilql"]


def test_quickstart_keep_runs_resumes_the_seeds_directory_and_says_so(tmp_path, monkeypatch):
    """--keep_runs leaves a seed's run directory for `rlhf run` to skip and resume (recorded as resumed);
    without it each seed starts from an empty directory. (`rlhf run`'s own skipping is tested in
    tests/test_pipeline_state.py; here the subprocess is replaced by one that writes a finished run's files.)"""
    import subprocess

    from benchmarks import quickstart

    calls = []

    def fake_run(cmd, cwd, env):
        out = Path(cmd[cmd.index("--output_dir") + 1])
        calls.append(sorted(p.name for p in out.iterdir()) if out.exists() else None)
        (out / "evaluate").mkdir(parents=True, exist_ok=True)
        (out / "pipeline.json").write_text(json.dumps({"stages": {}}))
        (out / "evaluate" / "report.json").write_text(json.dumps(
            {"checkpoints": {}, "num_prompts": 1, "num_samples": 1}))
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(quickstart.subprocess, "run", fake_run)
    out = tmp_path / "seed100"
    out.mkdir()
    (out / "sft").mkdir()  # a stage of an earlier, interrupted run
    assert quickstart.run_once("p.yaml", out, 100, {}, keep=True)["resumed"] is True
    assert calls[-1] == ["sft"]  # left in place for the pipeline to skip
    assert quickstart.run_once("p.yaml", out, 100, {}, keep=False)["resumed"] is False
    assert calls[-1] is None  # removed first: a fresh run
    assert quickstart.run_once("p.yaml", tmp_path / "new", 100, {}, keep=True)["resumed"] is False


def test_kept_unit_reuses_a_finished_unit_only_while_its_sources_and_outputs_are_unchanged(tmp_path, capsys):
    """--keep_runs of the learning-results scripts: a unit (a task and seed) runs once; the same parts reuse it
    while every source file it ran with is unchanged; an edited source, other parts or outputs that no longer
    match run it again; without a work directory nothing is kept."""
    source = tmp_path / "algorithm.py"
    source.write_text("STEP = 1\n")
    calls = []

    def compute():
        calls.append(1)
        return {"score": 0.5 + len(calls), "by_seed": {1: [1, 2]}}  # int keys come back as strings

    def unit(parts=None, work=tmp_path / "units", **kw):
        return common.kept_unit(work, parts or {"env": "guess", "seed": 100}, compute, "guess seed 100",
                                sources=lambda: [str(source)], **kw)

    first, prov = unit()
    assert (first, prov["reused"], len(calls)) == ({"score": 1.5, "by_seed": {"1": [1, 2]}}, False, 1)
    again, prov = unit()
    assert (again, prov["reused"], len(calls)) == (first, True, 1)
    assert prov["computed_utc"] and "reusing guess seed 100" in capsys.readouterr().err
    assert unit(parts={"env": "guess", "seed": 101})[1]["reused"] is False and len(calls) == 2
    source.write_text("STEP = 2\n")  # the algorithm changed: the kept result is stale
    changed, prov = unit()
    assert (changed["score"], prov["reused"], len(calls)) == (3.5, False, 3)
    assert unit()[1]["reused"] is True and len(calls) == 3  # kept again, under the new sources
    assert unit(outputs_match=lambda kept: False)[1]["reused"] is False and len(calls) == 4
    source.unlink()  # a source that is gone cannot vouch for the result
    assert unit()[1]["reused"] is False and len(calls) == 5
    assert unit()[1]["reused"] is False and len(calls) == 6  # and it vouches for no later run either
    assert unit(work=None)[1]["reused"] is False and len(calls) == 7


def test_loaded_sources_are_the_script_and_the_rlhf_modules_it_imported():
    import rlhf.fsio  # noqa: F401

    files = common.loaded_sources(ROOT / "benchmarks" / "dt_results.py")
    assert "benchmarks/dt_results.py" in files and "rlhf/fsio.py" in files
    assert all(f == "benchmarks/dt_results.py" or f.startswith("rlhf/") for f in files)
    assert common.sources_digest(files) == common.sources_digest(list(reversed(files)))
    assert common.sources_digest(files + ["rlhf/no_such_module.py"]) is None


def test_pomdp_race_configs_load_for_every_toolkit_agent(tmp_path):
    """benchmarks/pomdp.py runs each agent's shipped YAML with only the stopping return set and the final
    evaluation off (0 episodes): the config check must accept exactly that, for every agent of the race."""
    bench = script_module(ROOT / "benchmarks" / "pomdp.py")
    args = bench.parse_args(["--runs_dir", str(tmp_path)])
    for agent in bench.CONFIGS:
        cfg = bench.toolkit_config(agent, 100, args)
        assert (cfg.seed, cfg.stop_at_return, cfg.final_eval_episodes) == (100, bench.TARGET, 0)
        assert cfg.output_dir == f"{tmp_path}/{agent}-seed100"
