"""`rlhf <module> <command> [--config FILE.yaml] [--<field> VALUE ...]`: the dispatcher of the sibling modules.

`rlhf dialogue`, `rlhf pomdp` and `rlhf dt` each list their commands in a `COMMANDS` table of `Command`s (in
the module's cli.py) and hand the rest of the command line to `dispatch`, which prints the commands for
`--help` (or no command), parses the arguments into the command's config with `rlhf.config.parse_args` and
runs it. A command's config and function are named as "module:attribute" and imported only when used, so
`--help` stays quick.

    rlhf dt --help                                     # the commands, one line each
    rlhf dt train --help                               # every field of the command's config
    rlhf dt train --config configs/dt/train_cartpole.yaml --max_steps 100
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable


def _resolve(target: str) -> Any:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class Command:
    """One `rlhf <module> <command>`: its config class and its function, as "module:attribute"."""

    config: str  # the config dataclass, e.g. "rlhf.dt.train:DTTrainConfig"
    run: str  # function(config) -> metrics, e.g. "rlhf.dt.train:train"
    help: str  # one line for `rlhf <module> --help`
    base: str = ""  # optional function(argv) -> argv run before parsing (e.g. a run's own config as the base)

    def config_class(self) -> type:
        return _resolve(self.config)

    def parse(self, argv: list[str], prog: str):
        """The command's config from `argv` (defaults < --config file < flags), without running anything."""
        from rlhf.config import parse_args

        if self.base:
            argv = _resolve(self.base)(list(argv))
        return parse_args(self.config_class(), argv, prog=prog)


def usage(module: str, commands: dict[str, Command]) -> str:
    lines = [f"usage: rlhf {module} <command> [--config FILE.yaml] [--<field> VALUE ...]", "", "commands:"]
    lines += [f"  {name:<10} {command.help}" for name, command in commands.items()]
    lines += ["", f"`rlhf {module} <command> --help` lists every field of that command's config."]
    return "\n".join(lines)


def dispatch(module: str, commands: dict[str, Command], argv: list[str] | None) -> Any:
    """Run `rlhf <module> <argv>`: print the commands for --help or no command (success); a ConfigError for an
    unknown command; otherwise the command's function on its parsed config."""
    from rlhf.config import ConfigError

    argv = list(argv or [])
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage(module, commands))
        return None
    name = argv[0]
    if name not in commands:
        what = f"unknown {module} command '{name}'" if not name.startswith("-") else f"'{name}' before a command"
        raise ConfigError(f"{what}; give one of: {', '.join(commands)} (rlhf {module} --help)")
    command = commands[name]
    run: Callable = _resolve(command.run)
    return run(command.parse(argv[1:], prog=f"rlhf {module} {name}"))
