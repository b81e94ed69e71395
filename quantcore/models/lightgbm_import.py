"""Import LightGBM without its scikit-learn estimators, for a process that only trains boosters.

`import lightgbm` tries scikit-learn (for `LGBMRegressor` and friends), which pulls in most of SciPy:
about 1.6 s of a 2-core machine's time, against 0.3 s for LightGBM's own core. The training API
(`lightgbm.train`, `Dataset`, `Booster`) does not use it. A command that knows it never needs the
estimators (`rdquant run`, whose MLflow store lives in another process) calls this first."""

from __future__ import annotations

import sys

__all__ = ["import_lightgbm_without_sklearn"]


def import_lightgbm_without_sklearn() -> bool:
    """Import LightGBM with scikit-learn hidden from it; True if that happened. Nothing is done when
    either is already imported. scikit-learn itself stays importable afterwards; only this process's
    `lightgbm.LGBMRegressor` & co. are unavailable (LightGBM says it needs scikit-learn)."""
    if "lightgbm" in sys.modules or "sklearn" in sys.modules:
        return False
    sys.modules["sklearn"] = None  # LightGBM's optional import of it raises ImportError and is skipped
    try:
        import lightgbm  # noqa: F401
    finally:
        del sys.modules["sklearn"]
    return True
