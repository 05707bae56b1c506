"""Accelerate presets (configs/accelerate/) and `rlhf launch`: every preset is parsed and validated by
accelerate's own launcher code, including the ones that need GPUs (nothing is started)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rlhf.cli import main as rlhf_main
from rlhf.config import ConfigError
from rlhf.launch import build_command, resolve_preset, validate_launch

ROOT = Path(__file__).resolve().parents[1]
PRESETS = ROOT / "configs" / "accelerate"

# preset -> (launcher accelerate picks, processes, machines, back-end specifics checked below)
EXPECTED = {
    "single_cpu": ("simple", 1, 1),
    "cpu_multiprocess": ("torchrun", 2, 1),
    "single_gpu": ("simple", 1, 1),
    "multi_gpu": ("torchrun", 8, 1),
    "deepspeed_zero2": ("deepspeed", 8, 1),
    "deepspeed_zero3": ("deepspeed", 8, 1),
    "deepspeed_zero3_offload": ("deepspeed", 8, 1),
    "fsdp2": ("torchrun", 8, 1),
    "multi_node": ("torchrun", 16, 2),
}


def test_the_presets_are_the_documented_set():
    assert sorted(p.stem for p in PRESETS.glob("*.yaml")) == sorted(EXPECTED)
    guide = (ROOT / "docs" / "launching.md").read_text()
    for name in EXPECTED:
        assert f"`{name}`" in guide, f"preset {name} is not listed in docs/launching.md"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_accelerate_parses_and_validates_every_preset(name, monkeypatch):
    from accelerate.utils import DeepSpeedPlugin, FullyShardedDataParallelPlugin

    # accelerate's parser, _validate_launch_command and prepare_*_env (launcher and environment)
    ns, launcher, env = validate_launch(["--config_file", str(resolve_preset(name))], str(ROOT / "scripts/sft.py"))
    want_launcher, processes, machines = EXPECTED[name]
    assert (launcher, ns.num_processes, ns.num_machines) == (want_launcher, processes, machines)
    assert ns.mixed_precision == "no"  # precision is the stage config's business
    # Build the back end's plugin from the environment the launcher would hand to the processes, as the
    # Accelerator does at start: this is where accelerate checks the values of the deepspeed/fsdp sections.
    for key, value in env.items():
        if key.startswith(("ACCELERATE_", "FSDP_")):
            monkeypatch.setenv(key, value)
    if name.startswith("deepspeed"):
        ds = DeepSpeedPlugin().deepspeed_config
        zero = ds["zero_optimization"]
        assert zero["stage"] == (2 if name == "deepspeed_zero2" else 3)
        assert ds["gradient_accumulation_steps"] == 1  # the stages accumulate themselves (micro_batch)
        assert ds["gradient_clipping"] == 1.0
        offload = "cpu" if name.endswith("offload") else "none"
        assert zero["offload_optimizer"]["device"] == zero["offload_param"]["device"] == offload
        if zero["stage"] == 3:  # accelerator.get_state_dict needs it to gather the model for saving
            assert zero["stage3_gather_16bit_weights_on_model_save"] is True
    elif name == "fsdp2":
        from torch.distributed.fsdp import StateDictType

        plugin = FullyShardedDataParallelPlugin()
        assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True
        assert plugin.state_dict_type == StateDictType.SHARDED_STATE_DICT
        assert plugin.auto_wrap_policy.__name__ == "transformer_auto_wrap_policy"
    else:
        assert env.get("ACCELERATE_USE_DEEPSPEED", "false") != "true" and "FSDP_VERSION" not in env
    if name == "single_cpu":
        assert env["ACCELERATE_USE_CPU"] == "True"
    if name == "single_gpu":
        # What the preset promises: one process, not on the CPU, on the first GPU. Which variable carries the
        # device list is accelerate's business and depends on the accelerator it finds (none on a CPU machine,
        # where accelerate 1.16 sets no CUDA_VISIBLE_DEVICES), so only a variable that is set is checked.
        assert ns.gpu_ids == "0" and not ns.cpu and env["ACCELERATE_USE_CPU"] == "False"
        for var in ("CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "XPU_VISIBLE_DEVICES", "ZE_AFFINITY_MASK"):
            if env.get(var) != os.environ.get(var):  # set by the launcher, not inherited
                assert env[var] == "0", var


def test_multi_node_preset_gives_torchrun_the_node_rank_and_the_main_address():
    args = ["--config_file", str(resolve_preset("multi_node")), "--machine_rank", "1",
            "--main_process_ip", "192.168.7.1", "--main_process_port", "29611"]
    ns, launcher, _ = validate_launch(args)  # prepare_multi_gpu_env fills in torchrun's arguments
    assert launcher == "torchrun"
    assert (ns.nnodes, ns.node_rank, ns.nproc_per_node) == ("2", 1, "8")
    assert ns.rdzv_endpoint == "192.168.7.1:29611"  # torchrun's static rendezvous at the main machine


@pytest.mark.parametrize("body, message", [
    ("distributed_type: MULTI_GPU\nnum_processes: 2\nnum_proceses: 2\n", "unknown keys"),
    ("distributed_type: DEEPSPEED\ndeepspeed_config:\n  zero_stag: 3\n", "deepspeed_config.zero_stag"),
    ("distributed_type: FSDP\nfsdp_config:\n  fsdp_verison: 2\n", "fsdp_config.fsdp_verison"),
    ("distributed_type: SUPERCOMPUTER\n", "SUPERCOMPUTER"),
    ("distributed_type: MULTI_GPU\nnum_processes: 2\nmixed_precision: fp17\n", "Unknown mixed_precision mode"),
])
def test_a_malformed_preset_is_rejected_with_accelerates_message(tmp_path, body, message):
    path = tmp_path / "bad.yaml"
    path.write_text(body)
    with pytest.raises(ConfigError, match=message):
        validate_launch(["--config_file", str(path)])


def test_rlhf_launch_dry_run_prints_the_accelerate_command(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # presets and scripts are still found in the toolkit's checkout
    assert rlhf_main(["launch", "--dry_run", "--num_processes", "4", "multi_gpu", "sft",
                      "--config", "configs/sft.yaml", "--max_steps", "3"]) == 0
    cmd = capsys.readouterr().out.strip().split()
    assert cmd[cmd.index("--config_file") + 1] == str(PRESETS / "multi_gpu.yaml")
    assert cmd[cmd.index("--num_processes") + 1] == "4"
    script = cmd.index(str(ROOT / "scripts" / "sft.py"))
    assert cmd[script + 1:] == ["--config", "configs/sft.yaml", "--max_steps", "3"]
    assert cmd.index("--num_processes") < script  # launcher options before the script, stage args after
    assert not list(tmp_path.iterdir())  # nothing ran


def test_the_documented_launch_lines_are_accepted(capsys, monkeypatch):
    """Every `rlhf launch` line of docs/launching.md, with --dry_run: the preset, stage and launcher options
    are what `rlhf launch` and accelerate accept (nothing runs)."""
    import re
    import shlex

    guide = (ROOT / "docs" / "launching.md").read_text()
    lines = [ln.strip() for block in re.findall(r"```bash\n(.*?)```", guide, flags=re.S)
             for ln in block.splitlines() if ln.strip().startswith("rlhf launch")]
    assert len(lines) >= 6 and any("--machine_rank 1" in ln for ln in lines)
    monkeypatch.chdir(ROOT)
    for line in lines:
        argv = shlex.split(line)[1:]
        if "--dry_run" not in argv and "--list" not in argv:
            argv.insert(1, "--dry_run")
        assert rlhf_main(argv) == 0, (line, capsys.readouterr().err)
    out = capsys.readouterr().out
    assert "--machine_rank 1" in out and "--main_process_ip 10.0.0.1" in out


def test_rlhf_launch_names_what_is_wrong(capsys):
    assert rlhf_main(["launch", "--dry_run", "multi_gpuu", "sft"]) == 2
    err = capsys.readouterr().err
    assert "unknown accelerate preset 'multi_gpuu'" in err and "deepspeed_zero3" in err
    assert rlhf_main(["launch", "--dry_run", "multi_gpu", "sftt"]) == 2
    assert "unknown stage 'sftt'" in capsys.readouterr().err
    assert rlhf_main(["launch", "--list"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in EXPECTED)


def test_an_accelerate_config_file_path_works_as_a_preset(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text((PRESETS / "multi_gpu.yaml").read_text().replace("num_processes: 8", "num_processes: 3"))
    cmd = build_command(str(path), "reward", ["--num_epochs", "1"], {})
    assert cmd[cmd.index("--config_file") + 1] == str(path) and cmd[-2:] == ["--num_epochs", "1"]


# ------------------------------------------------------------------- global vs per-rank batch sizes


def test_every_stage_names_global_and_per_rank_sizes_apart():
    """Training stages: a global size (over all processes) and a per-device one, the per-rank share derived
    by rlhf.batching; sampling-only stages say their batch is per process."""
    import dataclasses

    from rlhf.stages.collect import CollectConfig
    from rlhf.stages.policy import PolicyConfig
    from rlhf.stages.reward import RewardConfig
    from rlhf.stages.sft import SFTConfig

    def help_of(cls, name):
        return {f.name: f.metadata["help"] for f in dataclasses.fields(cls)}[name]

    for cls in (SFTConfig, RewardConfig):
        assert "all processes" in help_of(cls, "global_batch_size")
        assert "one process" in help_of(cls, "per_device_batch_size")
    for name in ("prompts_per_update", "minibatch_size"):
        assert "all processes" in help_of(PolicyConfig, name)
    assert "per process" in help_of(CollectConfig, "batch_size")


def test_an_uneven_split_fails_at_start_naming_the_key():
    from rlhf.batching import derive_batch_sizes, split_evenly

    sizes = derive_batch_sizes(32, 4, 2)
    assert (sizes.local_batch, sizes.grad_accum) == (16, 4)
    with pytest.raises(ConfigError, match="global_batch_size 30 does not split evenly over 4 processes"):
        derive_batch_sizes(30, 5, 4)
    with pytest.raises(ConfigError, match="per-process batch 8 .* not a multiple of per_device_batch_size 3"):
        derive_batch_sizes(16, 3, 2)
    with pytest.raises(ConfigError, match="prompts_per_update 6 does not split evenly over 4 processes"):
        split_evenly(6, 4, "prompts_per_update")


@pytest.mark.parametrize("stage, args", [
    ("sft", ["--global_batch_size", "9", "--per_device_batch_size", "1", "--max_steps", "1"]),
    ("reward", ["--global_batch_size", "33", "--per_device_batch_size", "1"]),
    ("policy", ["--prompts_per_update", "3", "--k", "2", "--minibatch_size", "2", "--num_updates", "1"]),
])
def test_each_training_stage_refuses_an_uneven_split_before_any_work(stage, args, tmp_path, monkeypatch, capsys):
    """Two processes seen by the stage (WORLD_SIZE 2): the split is checked before a model is loaded."""
    import importlib

    import rlhf.distributed as dist_mod

    class TwoProcesses:
        num_processes, process_index, is_main_process = 2, 0, True

    monkeypatch.setattr(dist_mod, "make_accelerator", lambda **kw: TwoProcesses())
    module = importlib.import_module(f"rlhf.stages.{stage}")
    monkeypatch.setattr(module, "make_accelerator", lambda **kw: TwoProcesses())
    out = tmp_path / stage
    code = rlhf_main([stage, "--config", str(ROOT / f"configs/tiny/{stage}.yaml"), "--output_dir", str(out),
                      *args])
    err = capsys.readouterr().err
    assert code == 2 and "does not split evenly over 2 processes" in err, err
    assert not out.exists()  # failed before writing anything


def test_a_command_leaves_its_process_group_after_success_only(tmp_path):
    """The process entry point (rlhf.cli.entry: the `rlhf` command, scripts/*.py) ends a launched run's
    process group (barrier, destroy) once the command has succeeded, so no rank tears gloo/NCCL down at
    interpreter exit (with gloo that aborted 3 of 25 two-process collect runs); after an error it leaves the
    group alone (a barrier there could wait for a peer that has failed), and `main` alone never touches it (one
    process may run several commands). A one-process gloo group stands in for a launch."""
    import torch.distributed as dist

    from rlhf.cli import entry

    def join(name: str) -> None:
        store = dist.FileStore(str(tmp_path / name), 1)
        dist.init_process_group("gloo", store=store, rank=0, world_size=1)

    join("main")
    try:
        assert rlhf_main(["launch", "--list"]) == 0
        assert dist.is_initialized()
        assert entry(["launch", "no_such_preset", "sft"]) == 2
        assert dist.is_initialized()
    finally:
        dist.destroy_process_group()
    join("entry")
    assert entry(["launch", "--list"]) == 0
    assert not dist.is_initialized()


def test_a_launched_rank_leaves_without_the_interpreter_teardown(tmp_path):
    """A rank of a launched run (WORLD_SIZE > 1) that has left its group exits at once with code 0, its
    output flushed, skipping the interpreter's teardown (where gloo could abort the rank); the same command
    in a plain process returns to its caller."""
    import subprocess
    import sys

    script = f"""
import atexit, os, sys
import torch.distributed as dist
from rlhf.cli import entry
atexit.register(lambda: print("TEARDOWN RAN", flush=True))
dist.init_process_group("gloo", store=dist.FileStore({str(tmp_path / 'store')!r}, 1), rank=0, world_size=1)
code = entry(["launch", "--list"])
print("RETURNED", code, dist.is_initialized(), flush=True)
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for world, returned in (("2", False), ("1", True)):
        (tmp_path / "store").unlink(missing_ok=True)
        proc = subprocess.run([sys.executable, "-c", script], env={**env, "WORLD_SIZE": world}, cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "single_gpu" in proc.stdout  # the command's own output came out whole
        assert ("RETURNED 0 False" in proc.stdout) == returned and ("TEARDOWN RAN" in proc.stdout) == returned
