"""Named feature sets (qlib's Alpha158 and Alpha360) and the default label."""

from __future__ import annotations

from typing import Callable

from quantcore.features.alpha158 import alpha158
from quantcore.features.alpha360 import alpha360

__all__ = ["alpha158", "alpha360", "FEATURE_SETS", "DEFAULT_LABEL", "feature_set"]

#: qlib's default label: return from the next close to the close after (trade at t+1, exit at t+2).
DEFAULT_LABEL = "Ref($close, -2) / Ref($close, -1) - 1"

FEATURE_SETS: dict[str, Callable[[], dict[str, str]]] = {"alpha158": alpha158, "alpha360": alpha360}


def feature_set(name: str) -> dict[str, str]:
    """Feature name -> expression for a named set; an unknown name lists the known ones."""
    try:
        return FEATURE_SETS[name.lower()]()
    except KeyError:
        raise ValueError(f"unknown feature set {name!r}; known: {', '.join(FEATURE_SETS)}") from None
