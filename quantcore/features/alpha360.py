"""Alpha360: the last 60 days of raw prices and volume, normalised by today's close and volume
(qlib's `Alpha360DL`, same names and column order)."""

from __future__ import annotations

__all__ = ["alpha360"]

_PRICE_FIELDS = ("close", "open", "high", "low", "vwap")


def alpha360(days: int = 60) -> dict[str, str]:
    """Feature name -> expression; 6 fields x `days` lags (360 columns by default)."""
    features: dict[str, str] = {}
    for field in _PRICE_FIELDS:
        for i in range(days - 1, 0, -1):
            features[f"{field.upper()}{i}"] = f"Ref(${field}, {i})/$close"
        features[f"{field.upper()}0"] = f"${field}/$close"
    for i in range(days - 1, 0, -1):
        features[f"VOLUME{i}"] = f"Ref($volume, {i})/($volume+1e-12)"
    features["VOLUME0"] = "$volume/($volume+1e-12)"
    return features
