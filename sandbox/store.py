"""The sandbox's folder: exported markets, one directory per experiment, and the result cache.

    <root>/markets/<market>/         memory-mapped by workers (sandbox.market)
    <root>/markets/<market>/features/<code version>/  evaluated features that model experiments share
    <root>/experiments/<spec hash>/  the only place generated code may write; model captures land here
    <root>/results/<key>.json        cached results, key = spec hash + data version + code version
Cache files are written atomically; an unreadable one is a miss (and is recomputed), never an error."""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from sandbox.result import ExperimentResult, FailureCategory

__all__ = ["SandboxStore", "code_version", "code_digest", "CACHEABLE_FAILURES"]


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """Part of every cache key: a digest of the quant core's and the sandbox's code (sources and compiled
    kernels), so an edited operator, processor or rebuilt kernel never serves a result computed by the
    code before it. Read once per process (~10 ms)."""
    folders = {p: Path(importlib.util.find_spec(p).origin).parent for p in ("quantcore", "sandbox")}
    return f"rdquant-code-{code_digest(folders)}"


def code_digest(folders: dict[str, Path]) -> str:
    """sha256 (16 hex digits) over the .py, .pyx and compiled .so files under each named folder."""
    digest = hashlib.sha256()
    for name, base in sorted(folders.items()):
        for path in sorted(base.rglob("*")):
            if path.suffix in (".py", ".pyx", ".so") and "__pycache__" not in path.parts:
                digest.update(f"{name}/{path.relative_to(base).as_posix()}\x1f".encode())
                digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


#: Failures that depend only on the spec and the data (not on load or limits) are cached too.
CACHEABLE_FAILURES = frozenset(
    {
        FailureCategory.PARSE_ERROR,
        FailureCategory.INVALID_SPEC,
        FailureCategory.LOOK_AHEAD,
        FailureCategory.DEGENERATE_OUTPUT,
        FailureCategory.FORBIDDEN_OPERATION,
        FailureCategory.RUNTIME_ERROR,
    }
)


@dataclass(frozen=True)
class SandboxStore:
    root: Path

    @classmethod
    def at(cls, root: str | Path) -> "SandboxStore":
        root = Path(root).absolute()
        for sub in ("markets", "experiments", "results"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        return cls(root)

    def workdir(self, spec_hash: str) -> Path:
        return self.root / "experiments" / spec_hash

    def result_key(self, spec_hash: str, data_version: str) -> str:
        return hashlib.sha256(f"{spec_hash}\x1f{data_version}\x1f{code_version()}".encode()).hexdigest()[:32]

    def cached(self, key: str) -> ExperimentResult | None:
        path = self.root / "results" / f"{key}.json"
        try:
            return ExperimentResult.from_dict(json.loads(path.read_text())).with_(cached=True)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError, KeyError):
            return None  # corrupt or from an older layout: recompute

    def put(self, key: str, result: ExperimentResult) -> None:
        if result.failure is not None and result.failure.category not in CACHEABLE_FAILURES:
            return
        folder = self.root / "results"
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(result.with_(cached=False).to_dict(), fh)
            os.replace(tmp, folder / f"{key}.json")
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
