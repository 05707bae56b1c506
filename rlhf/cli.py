"""The `rlhf` command: one subcommand per stage, each taking `--config FILE.yaml` and `--<field> VALUE`.

    rlhf sft --config configs/tiny/sft.yaml --max_steps 5
    rlhf sft --help            # every field with its help text and default
"""

from __future__ import annotations

import errno
import importlib
import sys

# subcommand -> (module with main(argv), one-line description). Later stages register here as they land.
STAGES = {
    "sft": ("rlhf.stages.sft", "Stage 1: supervised fine-tuning on demonstrations."),
    "collect": ("rlhf.stages.collect", "Stage 2a: sample k completions per prompt (candidates.jsonl)."),
    "label": ("rlhf.stages.label", "Stage 2b: label candidates into preference pairs (pairs.jsonl)."),
    "reward": ("rlhf.stages.reward", "Stage 3: reward model (frozen backbone + scalar head, Bradley-Terry); "
               "`rlhf reward score` scores a file."),
    "policy": ("rlhf.stages.policy", "Stage 4: KL-penalised, importance-sampled policy gradient."),
    "dpo": ("rlhf.stages.dpo", "Stage 4 (offline): DPO on the same preference pairs (TRL's DPOTrainer)."),
    "dialogue": ("rlhf.dialogue.cli", "Multi-step offline RL on text games: `rlhf dialogue data|train|evaluate`."),
    "launch": ("rlhf.launch", "Run a stage under `accelerate launch` with a preset from configs/accelerate/ "
               "(`rlhf launch --list`)."),
    "evaluate": ("rlhf.stages.evaluate", "Stage 5: checkpoints side by side (report.json, report.md, plots)."),
    "run": ("rlhf.pipeline", "Every stage chained from one pipeline file (configs/quickstart.yaml); completed "
            "stages are skipped, interrupted ones resume."),
    "pomdp": ("rlhf.pomdp.cli", "POMDP baselines: `rlhf pomdp train|evaluate` any agent on any environment."),
    "dt": ("rlhf.dt.cli", "Decision Transformer: `rlhf dt data | train | evaluate` (offline RL, gymnasium tasks)."),
}


# reported in one line, not as a traceback
DISK_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}


def usage() -> str:
    lines = ["usage: rlhf <stage> [--config FILE.yaml] [--<field> VALUE ...]", "", "stages:"]
    lines += [f"  {name:<10} {desc}" for name, (_, desc) in STAGES.items()]
    lines += ["", "`rlhf <stage> --help` lists every field of that stage's config."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from rlhf.config import ConfigError
    from rlhf.data import DataError
    from rlhf.fsio import RunLockedError
    from rlhf.runs import RunExistsError

    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if argv[0] not in STAGES:
        print(f"rlhf: unknown stage '{argv[0]}'\n\n{usage()}", file=sys.stderr)
        return 2
    from rlhf.runs import forget_fresh_runs

    module = importlib.import_module(STAGES[argv[0]][0])
    forget_fresh_runs()
    try:
        module.main(argv[1:])
        forget_fresh_runs()
    except RunLockedError as e:  # another process writes that run: nothing there is this process's to remove
        forget_fresh_runs()
        print(f"rlhf {argv[0]}: error: {e}", file=sys.stderr)
        return 2
    except (ConfigError, DataError, RunExistsError, FileNotFoundError) as e:
        from rlhf.runs import discard_fresh_runs

        discard_fresh_runs()  # a refused run leaves nothing that would block the corrected command
        message = str(e).strip().replace("\n", " ")
        print(f"rlhf {argv[0]}: error: {message}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno not in DISK_ERRORS:
            raise
        # every artefact is written atomically (rlhf.fsio), so the files already there are whole
        fix = "free space and" if e.errno in (errno.ENOSPC, errno.EDQUOT) else "fix that and"
        print(f"rlhf {argv[0]}: error: {e.strerror}: {e.filename}; the files already written are intact; "
              f"{fix} run the command again (a stage with --resume true)", file=sys.stderr)
        return 1
    except RuntimeError as e:
        # torch.save reports a failed write (a full disk, say) as a RuntimeError of its C++ stream writer, not an
        # OSError; its checkpoint goes to a temporary name first (rlhf.runs), so nothing older is damaged
        if not any(m in str(e) for m in ("PytorchStreamWriter", "file write failed", "No space left",
                                         "inline_container.cc")) or "Reader" in str(e):
            raise
        print(f"rlhf {argv[0]}: error: a checkpoint could not be written ({str(e).splitlines()[0][:200]}); "
              "the files already written are intact; free space and run the command again (a stage with "
              "--resume true)", file=sys.stderr)
        return 1
    return 0


def entry(argv: list[str] | None = None) -> int:
    """The process's entry point (the `rlhf` command, scripts/*.py): `main`, then, after a success, every rank
    of a launched run leaves its process group together (`rlhf.distributed.leave_process_group`). `main`
    alone leaves the group as it is, so one process can run several commands (the tests' workers do)."""
    code = main(argv)
    if code == 0:
        from rlhf.distributed import leave_process_group

        import os

        if leave_process_group() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            # A rank of a launched run. Objects that outlive the group (a DDP-wrapped model keeps its process
            # group) are torn down at interpreter exit, after the peers have closed their connections; gloo can
            # then abort the rank ("terminate called without an active exception", exit -6) although every
            # file is written. Every artefact is on disk (fsio writes are durable) and the trackers are closed
            # (RunLogger.finish): flush and leave without the interpreter's teardown. (Never in a process that
            # runs commands in-process, such as the tests': they are not launched ranks.)
            import logging

            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
    return code


if __name__ == "__main__":
    sys.exit(entry())
