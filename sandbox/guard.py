"""Defence in depth for generated Python (a custom factor function, a model class).

Layers, each independent of the others:
1. a static screen of the AST: only allow-listed imports; no names or attributes starting with an
   underscore (the usual escapes: `__globals__`, `__subclasses__`, `__builtins__`); no eval/exec/open;
2. a restricted namespace: a curated set of builtins and an importer that only knows the allow-list;
3. an audit hook (PEP 578) that, while a guarded block runs, refuses process creation, sockets,
   ctypes, thread creation and file access outside the experiment's directory (reads of the installed
   Python and the market data stay allowed), and remembers every refusal - so code that swallows the
   `PermissionError` is still reported as forbidden;
4. the worker process itself (see `sandbox.worker`): rlimits, a network namespace where the kernel
   allows it, a process group killed whole on timeout.

What this does not do: it is not a proof against a determined attacker with a CPython exploit or a
memory-corruption bug in a C extension. Layers 1-3 stop the mistakes and hostile snippets an LLM
produces in practice; layer 4 bounds the damage of the rest to one worker.
"""

from __future__ import annotations

import ast
import builtins
import gc
import io
import os
import sys
import threading
import traceback
import types
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

__all__ = [
    "GENERATED_FILE",
    "ALLOWED_MODULES",
    "CodeRejected",
    "ForbiddenOperation",
    "LimitExceeded",
    "OutputLimitExceeded",
    "Guard",
    "screen_code",
    "load_generated",
]

#: The filename generated code is compiled under: frames with it on the stack are generated code running.
GENERATED_FILE = "<experiment>"

#: Top-level modules generated code may import (and their submodules).
ALLOWED_MODULES = frozenset(
    {
        "numpy",
        "pandas",
        "math",
        "statistics",
        "collections",
        "itertools",
        "functools",
        "typing",
        "dataclasses",
        "quantcore",
        "torch",
        "lightgbm",
    }
)
#: Submodules refused even under an allowed package: they reach files, processes or C pointers.
DENIED_SUBMODULES = (
    "numpy.ctypeslib",
    "numpy.f2py",
    "numpy.distutils",
    "quantcore.data",
    "quantcore.recording",
    "quantcore.cli",
    "torch.utils.cpp_extension",
    "torch.hub",
    "pandas.io",
)

_DENIED_NAMES = frozenset(
    {
        "eval",
        "exec",
        "compile",
        "open",
        "input",
        "breakpoint",
        "globals",
        "locals",
        "vars",
        "getattr",
        "setattr",
        "delattr",
        "memoryview",
        "help",
        "exit",
        "quit",
        "copyright",
        "credits",
        "license",
    }
)
_SAFE_BUILTINS = (
    "abs all any ascii bin bool bytearray bytes callable chr complex dict dir divmod enumerate filter float "
    "format frozenset hasattr hash hex id int isinstance issubclass iter len list map max min next object oct "
    "ord pow print property range repr reversed round set slice sorted staticmethod classmethod str sum super "
    "tuple type zip ArithmeticError AssertionError AttributeError Exception FloatingPointError IndexError "
    "KeyError LookupError NotImplementedError OverflowError RuntimeError StopIteration TypeError ValueError "
    "ZeroDivisionError True False None NotImplemented Ellipsis"
).split()

# audit events refused outright while a guarded block runs
_REFUSED_EVENTS = {
    "os.system": "running a shell command",
    "os.exec": "replacing the process",
    "os.posix_spawn": "starting a process",
    "os.spawn": "starting a process",
    "os.fork": "forking the process",
    "os.forkpty": "forking the process",
    "subprocess.Popen": "starting a subprocess",
    "os.kill": "sending a signal",
    "os.killpg": "sending a signal",
    "socket.__new__": "opening a socket",
    "socket.connect": "a network connection",
    "socket.bind": "binding a socket",
    "socket.getaddrinfo": "a DNS lookup",
    "socket.gethostbyname": "a DNS lookup",
    "ctypes.dlopen": "loading a C library",
    "ctypes.dlsym": "looking up a C symbol",
    "ctypes.cdata": "raw memory access through ctypes",
    "ctypes.call_function": "calling C through ctypes",
    "_thread.start_new_thread": "starting a thread",
    "os.putenv": "changing the environment",
    "os.unsetenv": "changing the environment",
    "os.chdir": "changing the working directory",
    "sys.settrace": "installing a tracer",
    "sys.setprofile": "installing a profiler",
    "sys.addaudithook": "installing an audit hook",
    "urllib.Request": "a network request",
    "webbrowser.open": "opening a browser",
    # raised by `_ModuleView` (not by CPython): an allowed module's attribute that leads elsewhere, and
    # monkeypatching - a replaced numpy function would outlive the experiment in this reused worker
    "sandbox.module_escape": "reaching a module or builtin outside the allow-list through an attribute",
    "sandbox.module_setattr": "changing a module's attributes",
}
# events that modify a path: allowed only under the experiment directory
_WRITE_EVENTS = {
    "os.remove",
    "os.rename",
    "os.rmdir",
    "os.mkdir",
    "os.chmod",
    "os.chown",
    "os.truncate",
    "os.symlink",
    "os.link",
    "os.utime",
    "shutil.rmtree",
    "shutil.copyfile",
    "shutil.move",
    "shutil.copytree",
    "os.replace",
}


class CodeRejected(Exception):
    """The static screen refused the code: `category` is parse_error or forbidden_operation, `context` the line."""

    def __init__(self, category: str, message: str, context: str = ""):
        super().__init__(message)
        self.category, self.context = category, context


class ForbiddenOperation(PermissionError):
    """Raised (by the audit hook) inside generated code that tried something the sandbox refuses."""


class LimitExceeded(BaseException):
    """A sandbox limit stopped generated code. A BaseException, so `except Exception` in the code does
    not swallow it; one swallowed anyway (raised inside a finaliser) is raised again by `Guard.active`."""


class OutputLimitExceeded(LimitExceeded):
    """Generated code printed more than the sandbox keeps."""


# ---- layer 1: static screen ---------------------------------------------------------------------------


def screen_code(source: str, filename: str = GENERATED_FILE) -> ast.Module:
    """Parse and screen generated code; raises CodeRejected naming the line."""
    try:
        tree = ast.parse(source, filename=filename)
    except SyntaxError as e:
        line = (e.text or "").rstrip("\n")
        caret = " " * max(0, (e.offset or 1) - 1) + "^"
        raise CodeRejected("parse_error", f"syntax error on line {e.lineno}: {e.msg}", f"{line}\n{caret}") from None
    except (ValueError, RecursionError, MemoryError) as e:
        bad = next((line for line in source.splitlines() if "\x00" in line), "")  # a NUL byte is the usual ValueError
        raise CodeRejected("parse_error", f"code cannot be parsed: {e}", repr(bad) if bad else str(e)) from None
    lines = source.splitlines()

    def refuse(node: ast.AST, why: str) -> None:
        lineno = getattr(node, "lineno", 0)
        text = lines[lineno - 1].strip() if 0 < lineno <= len(lines) else ""
        raise CodeRejected("forbidden_operation", f"line {lineno}: {why}", text)

    # names bound to imported modules or their members: assigning through them (`np.nanmean = f`,
    # `pd.DataFrame.rank = f`) would change the library for every later experiment in this worker
    imported = {
        (a.asname or a.name).split(".")[0]
        for n in ast.walk(tree)
        if isinstance(n, (ast.Import, ast.ImportFrom))
        for a in n.names
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.ctx, (ast.Store, ast.Del)):
            root = node.value
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(root, ast.Name) and root.id in imported:
                refuse(
                    node, f"changing the imported {ast.unparse(node)} is not allowed (it would outlive the experiment)"
                )
        if isinstance(node, ast.Import):
            for alias in node.names:
                _check_module(alias.name, node, refuse)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                refuse(node, "relative imports are not allowed")
            _check_module(node.module or "", node, refuse)
            for alias in node.names:
                if alias.name.startswith("_") or alias.name == "*":
                    refuse(node, f"importing {alias.name!r} is not allowed")
        elif isinstance(node, ast.Attribute) and node.attr.startswith("_"):
            refuse(node, f"access to the private attribute {node.attr!r} is not allowed")
        elif isinstance(node, ast.Name) and (node.id in _DENIED_NAMES or node.id.startswith("__")):
            refuse(node, f"{node.id!r} is not available in the sandbox")
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            refuse(node, "global/nonlocal declarations are not allowed")
    return tree


def _check_module(name: str, node: ast.AST, refuse) -> None:
    top = name.split(".")[0]
    if top not in ALLOWED_MODULES:
        refuse(node, f"importing {name!r} is not allowed (allowed: {', '.join(sorted(ALLOWED_MODULES))})")
    if any(name == d or name.startswith(d + ".") for d in DENIED_SUBMODULES):
        refuse(node, f"importing {name!r} is not allowed (it reaches files or processes)")


# ---- layer 2: restricted namespace -----------------------------------------------------------------------


def _restricted_import(name, globals=None, locals=None, fromlist=(), level=0):
    if level:
        raise ImportError("relative imports are not allowed in the sandbox")
    top = name.split(".")[0]
    if top not in ALLOWED_MODULES or any(name == d or name.startswith(d + ".") for d in DENIED_SUBMODULES):
        raise ImportError(f"importing {name!r} is not allowed in the sandbox")
    return _view(builtins.__import__(name, globals, locals, fromlist, level), name)


#: Builtins refused by the screen; the same objects re-exported by a module (`dataclasses.builtins.eval`,
#: `somemodule.open`) are refused by `_ModuleView`.
_DENIED_OBJECTS = {id(getattr(builtins, n)) for n in (*_DENIED_NAMES, "__import__") if hasattr(builtins, n)}


def _module_allowed(name: str) -> bool:
    return name.split(".")[0] in ALLOWED_MODULES and not any(
        name == d or name.startswith(d + ".") for d in DENIED_SUBMODULES
    )


def _view(value: Any, path: str) -> Any:
    """What generated code gets for `path`: allowed modules as read-only views, other values as they are."""
    if isinstance(value, types.ModuleType):
        if not _module_allowed(value.__name__):
            sys.audit("sandbox.module_escape", path)  # the guard refuses and records it
            raise ForbiddenOperation(f"the sandbox refused {path} (module {value.__name__!r} is not allowed)")
        return _ModuleView(value)
    if id(value) in _DENIED_OBJECTS:
        sys.audit("sandbox.module_escape", path)
        raise ForbiddenOperation(f"the sandbox refused {path} (a builtin the sandbox does not provide)")
    return value


class _ModuleView:
    """An allowed module as generated code sees it. Reads pass through, except those that lead out of
    the allow-list (`dataclasses.sys`, `pandas.compat.platform.os`, `dataclasses.builtins`: every module
    holds references to the modules it uses); writes are refused, since a worker serves many experiments."""

    __slots__ = ("_sandbox_module",)

    def __init__(self, module: types.ModuleType):
        object.__setattr__(self, "_sandbox_module", module)

    def __getattr__(self, name: str) -> Any:
        module = object.__getattribute__(self, "_sandbox_module")
        return _view(getattr(module, name), f"{module.__name__}.{name}")

    def __setattr__(self, name: str, value: Any) -> None:
        module = object.__getattribute__(self, "_sandbox_module")
        sys.audit("sandbox.module_setattr", f"{module.__name__}.{name}")
        raise ForbiddenOperation(f"the sandbox refused changing {module.__name__}.{name}")

    __delattr__ = lambda self, name: self.__setattr__(name, None)  # noqa: E731

    def __dir__(self) -> list[str]:
        return dir(object.__getattribute__(self, "_sandbox_module"))

    def __repr__(self) -> str:
        return f"<sandboxed module {object.__getattribute__(self, '_sandbox_module').__name__!r}>"


def _namespace(filename: str) -> dict[str, Any]:
    safe = {name: getattr(builtins, name) for name in _SAFE_BUILTINS if hasattr(builtins, name)}
    safe["__import__"] = _restricted_import
    safe["__build_class__"] = builtins.__build_class__  # class statements need it
    return {"__builtins__": safe, "__name__": "experiment", "__file__": filename}


def load_generated(source: str, filename: str = GENERATED_FILE, restricted: bool = True) -> dict[str, Any]:
    """Screen and execute generated code's top level in a fresh restricted namespace; returns it.
    Run inside `Guard.active` so top-level side effects are guarded too. `restricted=False` (a guard
    without its Python rules, under the OS jail only): plain Python, full builtins, any import."""
    if not restricted:
        namespace = {"__name__": "experiment", "__file__": filename}
        exec(compile(source, filename, "exec"), namespace)  # noqa: S102 - the OS jail is the boundary here
        return namespace
    tree = screen_code(source, filename)
    namespace = _namespace(filename)
    exec(compile(tree, filename, "exec"), namespace)  # noqa: S102 - screened code, restricted namespace, audited
    return namespace


# ---- layer 3: audit hook -------------------------------------------------------------------------------


class _CappedText(io.TextIOBase):
    def __init__(self, limit: int):
        self.limit, self.parts, self.size = limit, [], 0

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.size += len(text)
        if self.size > self.limit:
            raise OutputLimitExceeded(f"the code printed more than {self.limit} characters")
        self.parts.append(text)
        return len(text)

    def getvalue(self) -> str:
        return "".join(self.parts)


@dataclass
class Guard:
    """Per-worker audit-hook state: which directory generated code may write, and what it tried.

    `install()` adds the hook once (audit hooks cannot be removed); it does nothing unless a block
    runs under `active(...)`, so the worker's own file and socket work is unaffected.
    `python_rules=False`: no screen, no restricted namespace, no hook - only the output cap; for
    workers inside the OS jail and seccomp filter, which then contain the code alone."""

    read_roots: tuple[Path, ...] = ()
    python_rules: bool = True
    refusals: list[str] = field(default_factory=list)
    _workdir: Path | None = None
    _thread: int | None = None
    _installed: bool = False
    _inside: bool = False

    def install(self) -> None:
        if not self._installed:
            sys.addaudithook(self._hook)
            self._installed = True

    @contextmanager
    def active(self, workdir: str | Path, output_limit: int = 1 << 20) -> Iterator[_CappedText]:
        """Guard the block: generated code may write only under `workdir`; prints are captured."""
        if self.python_rules:
            self.install()
        self.refusals = []
        self._workdir = Path(workdir).resolve() if self.python_rules else None
        self._thread = threading.get_ident()
        out = _CappedText(output_limit)
        swallowed: list[BaseException] = []
        previous_hook = sys.unraisablehook

        def unraisable(info) -> None:  # an exception in a finaliser is printed and dropped by CPython
            if isinstance(info.exc_value, (LimitExceeded, MemoryError)):
                swallowed.append(info.exc_value)  # ... but a limit that stopped the code must still stop it
            previous_hook(info)

        sys.unraisablehook = unraisable
        try:
            with redirect_stdout(out), redirect_stderr(out):
                try:
                    yield out
                except BaseException as exc:
                    # the traceback keeps generated frames (and their locals) alive past this block:
                    # clear them here so their finalisers run guarded (line numbers stay for the context)
                    traceback.clear_frames(exc.__traceback__)
                    raise
                finally:
                    gc.collect()  # finalisers of generated objects run while still guarded
            if swallowed:
                raise swallowed[0]
        finally:
            sys.unraisablehook = previous_hook
            self._workdir = None
            self._thread = None

    def _hook(self, event: str, args: tuple) -> None:
        if self._inside:
            return
        self._inside = True  # events raised while we inspect (path resolution, frame walk) are ours
        try:
            if self._workdir is not None and threading.get_ident() == self._thread:
                why = self._check(event, args, self._workdir)
            elif event in _WATCHED_EVENTS and _generated_code_running():
                # generated code outside a guarded block: a finaliser run by a later garbage collection,
                # `__array__`/`__float__` of a returned object, a callback: same rules, and no writes at all
                why = self._check(event, args, None)
            else:
                why = None
        finally:
            self._inside = False
        if why:
            self.refusals.append(why)
            raise ForbiddenOperation(f"the sandbox refused {why}")

    def _check(self, event: str, args: tuple, workdir: Path | None) -> str | None:
        if event in _REFUSED_EVENTS:
            if event.startswith("sandbox."):
                return f"{_REFUSED_EVENTS[event]} ({args[0]})"
            return f"{_REFUSED_EVENTS[event]} ({event})"
        if event == "open":
            path, mode = args[0], args[1] if len(args) > 1 else "r"
            if isinstance(path, int) or path is None:
                return None  # an already-open descriptor
            if isinstance(path, str) and path.startswith("<") and path.endswith(">") and not _writes(mode):
                return None  # a pseudo-filename ("<experiment>"): CPython looks for the source of a syntax error
            return self._path_ok(path, _writes(mode), workdir)
        if event in _WRITE_EVENTS:
            for arg in args[:2]:
                if isinstance(arg, (str, bytes, os.PathLike)):
                    why = self._path_ok(arg, True, workdir)
                    if why:
                        return why
        return None

    def _path_ok(self, path, writes: bool, workdir: Path | None) -> str | None:
        try:
            p = Path(os.fsdecode(path)).resolve()
        except (OSError, ValueError, TypeError):
            return f"file access to an unresolvable path {path!r}"
        if _under(p, workdir):
            return None
        if not writes and any(_under(p, root) for root in self.read_roots):
            return None
        return f"{'writing' if writes else 'reading'} {p} (outside the experiment directory)"


#: What `_hook` checks when generated code runs outside a guarded block (the frame walk costs a little,
#: so only for events that can do harm).
_WATCHED_EVENTS = frozenset({*_REFUSED_EVENTS, *_WRITE_EVENTS, "open"})


def _writes(mode) -> bool:
    if isinstance(mode, int):  # os.open flags
        return bool(mode & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND))
    return isinstance(mode, str) and any(c in mode for c in "wax+")


def _generated_code_running() -> bool:
    """Whether a frame of generated code is on this thread's stack."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_filename == GENERATED_FILE:
            return True
        frame = frame.f_back
    return False


def _under(path: Path, root: Path | None) -> bool:
    if root is None:
        return False
    try:
        path.relative_to(root)
        return True
    except ValueError:
        return False


def default_read_roots(*extra: str | Path) -> tuple[Path, ...]:
    """Where guarded code may read: the Python installation and the allow-listed packages (lazy
    imports read their files), the sandbox's own source (tracebacks through it read its lines), plus
    `extra` (the market data). Not the project's other folders."""
    import importlib.util

    roots = {Path(sys.base_prefix) / "lib", Path(sys.prefix) / "lib", Path(__file__).resolve().parent}
    for name in ALLOWED_MODULES:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations:
            roots.update(Path(p) for p in spec.submodule_search_locations)
    roots.update(Path(e) for e in extra)
    return tuple(sorted({r.resolve() for r in roots if r.exists()}))
