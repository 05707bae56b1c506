"""`rlhf launch`: run a stage script under `accelerate launch` with a preset from configs/accelerate/.

    rlhf launch cpu_multiprocess sft --config configs/tiny/sft.yaml       # 2 processes on a CPU machine
    rlhf launch multi_gpu policy --config configs/policy.yaml             # DDP over the machine's GPUs
    rlhf launch --num_processes 4 deepspeed_zero3 sft --config configs/sft.yaml
    rlhf launch --dry_run fsdp2 sft --config configs/sft.yaml             # print the command, run nothing
    rlhf launch --list                                                    # the presets

Launcher options (--num_processes, --num_machines, --machine_rank, --main_process_ip, --main_process_port)
go before the preset name and override the preset; everything after the stage name goes to the stage.
The command is checked with accelerate's own launch-argument parser and validation before it runs.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

from rlhf.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]
PRESET_DIR = Path("configs") / "accelerate"
# options of `rlhf launch` passed on to `accelerate launch` (they override the preset's values)
LAUNCH_OPTIONS = {
    "num_processes": (int, "Processes over all machines."),
    "num_machines": (int, "Machines taking part."),
    "machine_rank": (int, "This machine's rank, 0 .. num_machines - 1 (0 runs the main process)."),
    "main_process_ip": (str, "Address of the machine with machine_rank 0."),
    "main_process_port": (int, "Port on the main machine that every machine can reach."),
}


def preset_dirs() -> list[Path]:
    """Where preset names are looked up: the working directory's configs/accelerate, then the toolkit's."""
    return list(dict.fromkeys([Path.cwd() / PRESET_DIR, ROOT / PRESET_DIR]))


def available_presets() -> list[str]:
    return sorted({p.stem for d in preset_dirs() if d.is_dir() for p in d.glob("*.yaml")})


def resolve_preset(name: str) -> Path:
    """A preset name (`multi_gpu`) or a path to an accelerate config file -> the file."""
    if name.endswith((".yaml", ".yml")) or "/" in name:
        path = Path(name)
        if not path.is_file():
            raise ConfigError(f"accelerate config file {name} does not exist")
        return path
    for d in preset_dirs():
        if (d / f"{name}.yaml").is_file():
            return d / f"{name}.yaml"
    raise ConfigError(f"unknown accelerate preset '{name}'; presets: {', '.join(available_presets())} "
                      "(or give the path of an accelerate config file)")


def stage_script(stage: str) -> Path:
    from rlhf.cli import STAGES

    def script(name: str) -> Path | None:
        found = [b / "scripts" / f"{name}.py" for b in (Path.cwd(), ROOT) if (b / "scripts" / f"{name}.py").is_file()]
        return found[0] if found else None

    launchable = [s for s in STAGES if s != "launch" and script(s)]
    if stage not in launchable:
        raise ConfigError(f"unknown stage '{stage}'; stages with a script in scripts/: {', '.join(launchable)}")
    return script(stage)


def launch_args(preset: Path, overrides: dict[str, object]) -> list[str]:
    """The `accelerate launch` options: the preset file, then the overrides given to `rlhf launch`."""
    args = ["--config_file", str(preset)]
    for key, value in overrides.items():
        if value is not None:
            args += [f"--{key}", str(value)]
    return args


def validate_launch(args: list[str], script: str = "script.py") -> tuple[argparse.Namespace, str, dict[str, str]]:
    """Parse and validate `accelerate launch <args> <script>` the way `accelerate launch` does before it
    starts anything: its own parser, `_validate_launch_command`, and the preparation of the environment
    for the launcher it would use. Returns (resolved arguments, launcher, environment of the processes),
    the launcher being "simple" (one process), "torchrun" (DDP, FSDP) or "deepspeed".

    Raises ConfigError with accelerate's message when the preset is malformed: an unknown key at the top
    level, an unknown option inside deepspeed_config / fsdp_config (accelerate would silently ignore it), a
    bad value, or conflicting back ends.
    """
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import (
        prepare_deepspeed_cmd_env,
        prepare_multi_gpu_env,
        prepare_simple_launcher_cmd_env,
    )

    parser = launch_command_parser()
    known = {a.dest for a in parser._actions}
    try:
        ns = parser.parse_args([*args, script])
        cluster = load_config_from_file(ns.config_file)
        for section, prefix in (("deepspeed_config", ""), ("fsdp_config", "fsdp_")):
            for key in getattr(cluster, section) or {}:
                dest = key if key.startswith(prefix) else prefix + key
                if dest not in known:
                    raise ValueError(f"{section}.{key} is not an option of `accelerate launch`")
        ns, _, _ = _validate_launch_command(ns)
        if ns.use_deepspeed:
            ns.deepspeed_fields_from_accelerate_config = ",".join(cluster.deepspeed_config)
            launcher, (_, env) = "deepspeed", prepare_deepspeed_cmd_env(ns)
        elif ns.multi_gpu or ns.use_fsdp:
            launcher, env = "torchrun", prepare_multi_gpu_env(ns)
        else:
            launcher, (_, env) = "simple", prepare_simple_launcher_cmd_env(ns)
    except (ValueError, TypeError, KeyError, OSError) as e:  # OSError: the main port is taken
        raise ConfigError(f"accelerate rejects {' '.join(args)}: {e}") from e
    except SystemExit as e:  # argparse's way of reporting a bad option
        raise ConfigError(f"accelerate launch cannot parse {' '.join(args)}") from e
    return ns, launcher, env


def summary(preset: Path) -> str:
    """The first sentence of a preset file's leading comment."""
    words = []
    for line in preset.read_text().splitlines():
        if not line.startswith("#") or line.startswith("#  "):
            break
        words.append(line.lstrip("# "))
    text = " ".join(words)
    return text.split(". ")[0].rstrip(".")


def launcher_prefix() -> list[str]:
    exe = Path(sys.executable).parent / "accelerate"
    return [str(exe), "launch"] if exe.is_file() else [sys.executable, "-m", "accelerate.commands.launch"]


def build_command(preset: str, stage: str, stage_args: list[str], overrides: dict[str, object]) -> list[str]:
    args = launch_args(resolve_preset(preset), overrides)
    script = stage_script(stage)
    validate_launch(args, str(script))
    return [*launcher_prefix(), *args, str(script), *stage_args]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rlhf launch", description="Run a stage under `accelerate launch` with a preset from "
        "configs/accelerate/ (or an accelerate config file). Launcher options go before the preset; "
        "everything after the stage goes to the stage.")
    p.add_argument("--dry_run", action="store_true", help="Print the command (after accelerate has "
                   "validated it) and exit.")
    p.add_argument("--list", action="store_true", help="List the presets and exit.")
    for key, (tp, text) in LAUNCH_OPTIONS.items():
        p.add_argument(f"--{key}", type=tp, default=None, help=f"{text} Overrides the preset.")
    p.add_argument("preset", nargs="?", help="Preset name (file stem in configs/accelerate/) or a config file.")
    p.add_argument("stage", nargs="?", help="Stage to run: sft, collect, label, reward, policy, ...")
    p.add_argument("stage_args", nargs=argparse.REMAINDER, help="Arguments of the stage.")
    return p


def main(argv: list[str] | None = None) -> None:
    ns = parser().parse_args(argv)
    if ns.list:
        for name in available_presets():
            print(f"  {name:<24} {summary(resolve_preset(name))}")
        return
    if not ns.preset or not ns.stage:
        raise ConfigError("usage: rlhf launch [options] <preset> <stage> [stage args ...]; "
                          f"presets: {', '.join(available_presets())}")
    cmd = build_command(ns.preset, ns.stage, ns.stage_args,
                        {k: getattr(ns, k) for k in LAUNCH_OPTIONS})
    print(shlex.join(cmd), flush=True)
    if ns.dry_run:
        return
    code = subprocess.call(cmd)
    if code:
        raise SystemExit(code)
