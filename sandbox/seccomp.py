"""A seccomp filter a worker loads on itself once it is ready to serve: from then on the kernel refuses
it new processes, programs, sockets, ptrace and the other calls a factor or a model never needs.

Built with libseccomp through `pyseccomp` (a ctypes binding with the official bindings' API), so the
rules read as syscall names and the library compiles them for this architecture. The filter is loaded
by the worker itself, after its imports and its own set-up (which may still unshare a network
namespace), and cannot be lifted afterwards: seccomp filters only stack, and `no_new_privs` (set by
libseccomp) means no exec could regain anything. Refusals return an errno (EPERM, or ENOSYS where the
C library falls back to an older call), so library code that probes sees an ordinary error.

What stays allowed on purpose: threads (`clone` with CLONE_THREAD: OpenMP, LightGBM, torch), signals
to the worker itself (the CPU-time limit, `raise`), and every file call (where files are visible is
the mount namespace's job, see `sandbox.jail`)."""

from __future__ import annotations

import errno
import os

__all__ = ["DENIED", "apply_worker_filter", "seccomp_unavailable_reason"]

CLONE_THREAD = 0x00010000

#: Refused outright with EPERM, grouped by what they would give hostile code.
DENIED = {
    "new processes and programs": ("fork", "vfork", "execve", "execveat"),
    "sockets (the worker keeps only the channel it inherited)": ("socket", "socketpair"),
    "other processes' memory and fds": (
        "ptrace",
        "process_vm_readv",
        "process_vm_writev",
        "pidfd_open",
        "pidfd_getfd",
        "pidfd_send_signal",
        "kcmp",
    ),
    "namespaces, mounts and the root": (
        "unshare",
        "setns",
        "mount",
        "umount2",
        "pivot_root",
        "chroot",
        "fsopen",
        "fsmount",
        "move_mount",
        "open_tree",
    ),
    "kernel attack surface": (
        "bpf",
        "perf_event_open",
        "userfaultfd",
        "keyctl",
        "add_key",
        "request_key",
        "io_uring_setup",
        "io_uring_enter",
        "io_uring_register",
        "kexec_load",
        "kexec_file_load",
        "init_module",
        "finit_module",
        "delete_module",
        "acct",
        "swapon",
        "swapoff",
        "reboot",
        "quotactl",
        "lookup_dcookie",
        "personality",
    ),
}


def seccomp_unavailable_reason() -> str | None:
    """None when a filter can be built and loaded here; otherwise why not, in one line."""
    try:
        status = open("/proc/self/status").read()
    except OSError:
        return "no /proc/self/status: not Linux, or /proc is hidden"
    if "Seccomp:" not in status:
        return "the kernel has no seccomp"
    try:
        import pyseccomp  # noqa: F401 - loads libseccomp.so.2 when imported
    except ImportError:
        return "the pyseccomp package is not installed (`pip install pyseccomp`)"
    except (OSError, AttributeError, TypeError) as exc:  # the binding raises these when libseccomp is absent
        return f"libseccomp (libseccomp.so.2) cannot be loaded: {exc}"
    return None


def apply_worker_filter() -> None:
    """Load the worker's filter on this process (and the threads it starts from now on). Irreversible."""
    import pyseccomp as sc

    pid = os.getpid()
    flt = sc.SyscallFilter(sc.ALLOW)
    for names in DENIED.values():
        for name in names:
            _deny(flt, sc, sc.ERRNO(errno.EPERM), name)
    # threads only: a clone without CLONE_THREAD would be a new process
    _deny(flt, sc, sc.ERRNO(errno.EPERM), "clone", sc.Arg(0, sc.MASKED_EQ, CLONE_THREAD, 0))
    # clone3 passes its flags in a struct a filter cannot read; ENOSYS makes glibc fall back to clone
    _deny(flt, sc, sc.ERRNO(errno.ENOSYS), "clone3")
    # signals to itself only: to another process (or a group, or -1: everyone) is EPERM
    for name in ("kill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo"):
        _deny(flt, sc, sc.ERRNO(errno.EPERM), name, sc.Arg(0, sc.NE, pid))
    _deny(flt, sc, sc.ERRNO(errno.EPERM), "tkill")  # a bare thread id of any process; glibc uses tgkill
    flt.load()


def _deny(flt, sc, action: int, name: str, *args) -> None:
    try:
        sc.resolve_syscall(sc.system_arch(), name)
    except Exception:  # noqa: BLE001 - a syscall this architecture does not have needs no rule
        return
    flt.add_rule(action, name, *args)
