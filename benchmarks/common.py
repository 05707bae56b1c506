"""What every benchmark and results script shares: the machine it ran on and the closing block.

`finish(results, out, argv)` adds the machine, the package versions, the load average and the exact command
to the results, writes them to `out` (atomically: a temporary name, then a rename) and prints them as the last
line of output, one JSON object.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PACKAGES = ("torch", "transformers", "accelerate", "trl", "peft", "datasets")


def machine() -> dict:
    """Platform, cores, load and the versions of the libraries the numbers depend on."""
    from importlib import metadata

    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(), "cpu_count": os.cpu_count()}
    for name in PACKAGES:
        try:
            info[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            info[name] = None
    try:
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        info["load_average"] = None
    if "torch" in sys.modules:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return info


def command(argv: list[str] | None) -> str:
    """The command that remakes the results: the script, relative to the repository, with its arguments."""
    script = Path(sys.argv[0]).resolve()
    try:
        script = script.relative_to(ROOT)
    except ValueError:
        pass
    args = sys.argv[1:] if argv is None else argv
    return " ".join(["python", shlex.quote(str(script)), *map(shlex.quote, args)])


def finish(results: dict, out: str | Path, argv: list[str] | None = None) -> dict:
    """Record machine and command, write `out`, print the one-line JSON last."""
    results = {**results, "command": command(argv), "machine": machine()}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    os.replace(tmp, out)
    print(json.dumps(results))
    return results
