"""Run research experiments safely and in parallel: specs in, structured results (or failures) out.

    from sandbox import LocalExecutor
    with LocalExecutor(workers=2) as ex:
        result = ex.run({"kind": "factor", "market": "synthetic", "expressions": {"rev5": "-Ref($close, 5)/$close"}})

`RayExecutor` (the same interface on Ray, `pip install rdquant[ray]`) is imported on first use.
"""

from sandbox.executor import BaseExecutor
from sandbox.limits import Limits
from sandbox.local import LocalExecutor
from sandbox.result import ExperimentResult, Failure, FailureCategory
from sandbox.spec import (
    SPEC_VERSION,
    ExperimentSpec,
    FactorSpec,
    ModelSpec,
    RLSpec,
    SpecError,
    WorkflowSpec,
    parse_spec,
    spec_hash,
)

__all__ = [
    "SPEC_VERSION", "BaseExecutor", "ExperimentResult", "ExperimentSpec", "FactorSpec", "Failure", "FailureCategory",
    "Limits", "LocalExecutor", "ModelSpec", "RayExecutor", "RLSpec", "SpecError", "WorkflowSpec", "parse_spec", "spec_hash",
]


def __getattr__(name: str):
    if name == "RayExecutor":  # lazily: importing sandbox must not import Ray
        from sandbox.ray_executor import RayExecutor

        return RayExecutor
    raise AttributeError(f"module 'sandbox' has no attribute {name!r}")
