"""Landlock for a worker where the jail cannot start (no unprivileged user namespaces: Ubuntu 23.10+
restricts them through AppArmor, and many containers refuse them): the worker restricts its own file
access once it is ready to serve, with the `landlock` package (ctypes over the kernel's three calls).

Everything the worker needs to run is readable (the interpreter, its packages, the project's code,
system libraries, the markets, /proc and /sys for CPU counts); only the experiment folders, and for
a pool worker the markets' feature caches, are writable; nothing else is reachable at all (home,
/etc, /tmp, other users' files). Landlock also keeps the worker from ptrace-reading processes outside
its domain, so /proc/<executor>/environ is refused. Irreversible once applied, like seccomp."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

__all__ = ["landlock_unavailable_reason", "apply_worker_landlock", "system_read_paths"]

# Read-only system paths a worker uses (shared libraries, the loader's cache, /dev/null and
# /dev/urandom, CPU counts); only those that exist are added.
_SYSTEM_READ = (
    "/usr",
    "/lib",
    "/lib64",
    "/lib32",
    "/bin",
    "/etc/ld.so.cache",
    "/dev/null",
    "/dev/zero",
    "/dev/urandom",
    "/proc",
    "/sys/devices/system/cpu",
    "/sys/fs/cgroup",
)


def landlock_unavailable_reason() -> str | None:
    """None when this kernel and the `landlock` package can restrict a process; else why not."""
    try:
        from landlock import landlock_abi_version
    except ImportError:
        return "the landlock package is not installed (`pip install landlock`)"
    try:
        version = landlock_abi_version()
    except Exception as exc:  # noqa: BLE001 - the package raises its own errors for a kernel without it
        return f"the kernel has no Landlock: {exc}"
    return None if version >= 1 else "the kernel has no Landlock"


def system_read_paths() -> tuple[str, ...]:
    return tuple(p for p in _SYSTEM_READ if os.path.exists(p))


def apply_worker_landlock(read: Sequence[str | Path], write: Sequence[str | Path]) -> None:
    """Restrict this process (and its threads from now on) to reading `read` and writing `write`."""
    from landlock import FSAccess, Ruleset

    ruleset = Ruleset()
    read_dir = FSAccess.READ_FILE | FSAccess.READ_DIR | FSAccess.EXECUTE
    read_file = FSAccess.READ_FILE | FSAccess.EXECUTE
    for path in dict.fromkeys(os.path.realpath(p) for p in read if os.path.exists(p)):
        ruleset.allow(path, rules=read_dir if os.path.isdir(path) else read_file)
    for path in dict.fromkeys(os.path.realpath(p) for p in write if os.path.isdir(p)):
        ruleset.allow(path, rules=FSAccess.all())
    ruleset.apply()
