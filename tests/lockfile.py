"""The lock file (requirements.lock) against what an environment has installed.

    python -m tests.lockfile [requirements.lock]     # what differs, a line each (make test-latest)
"""

from __future__ import annotations

import re
import sys
import sysconfig
from importlib import metadata
from pathlib import Path

LOCK = Path(__file__).resolve().parent.parent / "requirements.lock"
#: The project itself, installed from the working tree and not locked.
PROJECT = "qa"
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")


def canonical(name: str) -> str:
    """PEP 503's normalised name: `Typing_Extensions` and `typing-extensions` are one package."""
    return re.sub(r"[-_.]+", "-", name).lower()


def locked(path: Path = LOCK) -> dict[str, str]:
    """Package -> exact version, from the `name==version` lines of a pip-compile lock."""
    return {canonical(m[1]): m[2] for line in path.read_text().splitlines() if (m := _PIN.match(line))}


def installed() -> dict[str, str]:
    """Package -> version, of what is installed in this environment's site-packages (the project
    left out). Only there: a library's vendored copies (setuptools puts its own `packaging` on
    sys.path once pkg_resources is imported) are not installed packages."""
    paths = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    found = {canonical(d.metadata["Name"]): d.version for d in metadata.distributions(path=paths)}
    found.pop(PROJECT, None)
    return found


def differences(lock: dict[str, str], have: dict[str, str]) -> list[tuple[str, str | None, str | None]]:
    """(package, locked version, installed version) wherever the two differ, by name."""
    return [(name, lock.get(name), have.get(name)) for name in sorted(lock.keys() | have.keys()) if lock.get(name) != have.get(name)]


def main(argv: list[str]) -> None:
    lock = Path(argv[0]) if argv else LOCK
    diff = differences(locked(lock), installed())
    if not diff:
        print(f"installed: exactly the {len(locked(lock))} packages of {lock.name}")
        return
    print(f"{len(diff)} packages differ from {lock.name} (package: locked -> installed):")
    for name, want, have in diff:
        print(f"  {name}: {want or 'not locked'} -> {have or 'not installed'}")


if __name__ == "__main__":
    main(sys.argv[1:])
