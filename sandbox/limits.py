"""Process limits for a worker: wall clock (enforced by the parent), CPU time and address space
(rlimits, set in the worker), and what the machine allows beyond that (a network namespace)."""

from __future__ import annotations

import ctypes
import ctypes.util
import math
import numbers
import os
import resource
import signal
from dataclasses import dataclass

__all__ = ["Limits", "LimitsError", "apply_process_limits", "arm_cpu_limit", "isolate_network", "address_space_bytes"]

_CLONE_NEWNET = 0x40000000
_CLONE_NEWUSER = 0x10000000
# Upper bounds, so that every limit stays something the kernel and the parent's clock can hold:
MAX_WALL_SECONDS = 1e6  # ~11.6 days: past any experiment, and inside poll(2)'s timeout (a C int of ms, ~24.8 days)
MAX_CPU_SECONDS = 1e9  # an RLIMIT_CPU in whole seconds (callers scale it by their worker count)
MAX_MEMORY_MB = 1 << 30  # 1 PiB: the worker's size plus this stays far inside RLIMIT_AS's 64-bit rlim_t
MAX_OUTPUT_CHARS = 1 << 40


class LimitsError(ValueError):
    """A limit that is not a usable number: `field` names it, `requirement` says what it must be."""

    def __init__(self, field: str, requirement: str, value: object):
        self.field, self.requirement, self.value = field, requirement, value
        super().__init__(f"{field} must be {requirement}, got {value!r}")


@dataclass(frozen=True)
class Limits:
    """Per-experiment limits. `memory_mb` is address space the worker may grow by beyond what it
    holds when it starts (the interpreter, numpy and the mapped market); `cpu_seconds` is CPU time
    of all its threads."""

    wall_seconds: float = 120.0
    cpu_seconds: float = 240.0
    memory_mb: int = 4096
    output_chars: int = 1 << 20
    file_mb: int = 2048  # the largest file a worker may write (RLIMIT_FSIZE): a feature cache entry, a capture

    def __post_init__(self) -> None:
        for name, top in (("wall_seconds", MAX_WALL_SECONDS), ("cpu_seconds", MAX_CPU_SECONDS)):
            value = getattr(self, name)
            if not (_real(value) and math.isfinite(value) and 0 < value <= top):
                raise LimitsError(name, f"a number of seconds above 0 and at most {top:g}", value)
        for name, unit, top in (
            ("memory_mb", "MiB", MAX_MEMORY_MB),
            ("output_chars", "characters", MAX_OUTPUT_CHARS),
            ("file_mb", "MiB", MAX_MEMORY_MB),
        ):
            value = getattr(self, name)
            if not (isinstance(value, numbers.Integral) and not isinstance(value, bool) and 1 <= value <= top):
                raise LimitsError(name, f"a whole number of {unit} from 1 to {top}", value)


def _real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def address_space_bytes() -> int:
    """This process's current virtual size (VmSize)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def apply_process_limits(limits: Limits) -> None:
    """Whole-worker limits: no core files, files of at most file_mb (a write past it fails with EFBIG
    instead of the default SIGXFSZ kill), and an address-space cap of current size + memory_mb."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_mb << 20, limits.file_mb << 20))
    cap = address_space_bytes() + limits.memory_mb * (1 << 20)
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))


def arm_cpu_limit(cpu_seconds: float, on_exceed) -> None:
    """Deliver SIGXCPU once this process has used `cpu_seconds` more CPU from now; `on_exceed` is the
    signal handler (it raises, so Python code stops at its next bytecode; C loops are the parent's
    wall clock's job)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    used = usage.ru_utime + usage.ru_stime
    soft = int(used + cpu_seconds) + 1
    signal.signal(signal.SIGXCPU, on_exceed)
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    # Only the soft limit is used: the hard limit's SIGKILL would be indistinguishable from an OOM kill,
    # and code that survives SIGXCPU is stopped by the parent's wall clock anyway. (Raising a lowered
    # hard limit again would also need privileges.)
    try:
        resource.setrlimit(resource.RLIMIT_CPU, (soft if hard == resource.RLIM_INFINITY else min(soft, hard), hard))
    except (ValueError, OSError):
        pass


def isolate_network() -> str | None:
    """Move this process into a fresh network namespace (no interfaces: no network at all).
    Returns None on success, else why not (unprivileged containers usually refuse)."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return "no C library to call unshare(2)"
    libc = ctypes.CDLL(libc_name, use_errno=True)
    if libc.unshare(_CLONE_NEWNET) == 0:
        return None
    err = ctypes.get_errno()
    # an unprivileged user may still create one inside a new user namespace
    if libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNET) == 0:
        return None
    return f"unshare(CLONE_NEWNET) refused: {os.strerror(err)}"
