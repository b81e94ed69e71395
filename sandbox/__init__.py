"""Run research experiments safely and in parallel: specs in, structured results (or failures) out.

    from sandbox import LocalExecutor
    with LocalExecutor(workers=2) as ex:
        result = ex.run({"kind": "factor", "market": "synthetic", "expressions": {"rev5": "-Ref($close, 5)/$close"}})

`RayExecutor` (the same interface on Ray, `pip install rdquant[ray]`) is imported on first use.
"""

__all__ = [
    "SPEC_VERSION",
    "BaseExecutor",
    "ExperimentResult",
    "ExperimentSpec",
    "FactorSpec",
    "Failure",
    "FailureCategory",
    "Limits",
    "LocalExecutor",
    "ModelSpec",
    "RayExecutor",
    "RLSpec",
    "SpecError",
    "WorkflowSpec",
    "parse_spec",
    "spec_hash",
]


# Names are imported on first use: a worker process imports `sandbox.worker`, and with it this
# package, so importing the executors (and their parent-side dependencies) here would add a third of
# a second to every worker start - one per generated-code experiment.
_HOMES = {
    "BaseExecutor": "sandbox.executor",
    "Limits": "sandbox.limits",
    "LocalExecutor": "sandbox.local",
    "RayExecutor": "sandbox.ray_executor",
    "ExperimentResult": "sandbox.result",
    "Failure": "sandbox.result",
    "FailureCategory": "sandbox.result",
    **{
        name: "sandbox.spec"
        for name in (
            "SPEC_VERSION",
            "ExperimentSpec",
            "FactorSpec",
            "ModelSpec",
            "RLSpec",
            "SpecError",
            "WorkflowSpec",
            "parse_spec",
            "spec_hash",
        )
    },
}


def __getattr__(name: str):
    if name in _HOMES:  # RayExecutor too: importing sandbox must not import Ray
        import importlib

        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'sandbox' has no attribute {name!r}")
