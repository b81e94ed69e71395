"""Alpha158: qlib's 158 hand-crafted price/volume features, with qlib's exact names and expressions.

The recipe (families, windows, include/exclude) follows qlib's `Alpha158DL.get_feature_config`, so a
model trained on qlib's Alpha158 sees identical columns here.
"""

from __future__ import annotations

from typing import Iterable

__all__ = ["alpha158", "ROLLING_FAMILIES", "DEFAULT_WINDOWS"]

DEFAULT_WINDOWS = (5, 10, 20, 30, 60)

KBAR = {
    "KMID": "($close-$open)/$open",
    "KLEN": "($high-$low)/$open",
    "KMID2": "($close-$open)/($high-$low+1e-12)",
    "KUP": "($high-Greater($open, $close))/$open",
    "KUP2": "($high-Greater($open, $close))/($high-$low+1e-12)",
    "KLOW": "(Less($open, $close)-$low)/$open",
    "KLOW2": "(Less($open, $close)-$low)/($high-$low+1e-12)",
    "KSFT": "(2*$close-$high-$low)/$open",
    "KSFT2": "(2*$close-$high-$low)/($high-$low+1e-12)",
}

# name -> (column prefix, template with {d} = window). Order matters: it is qlib's column order.
_UP = "Greater({x}-Ref({x}, 1), 0)"
_DOWN = "Greater(Ref({x}, 1)-{x}, 0)"
_ABS = "Abs({x}-Ref({x}, 1))"
ROLLING_FAMILIES: dict[str, tuple[str, str]] = {
    "ROC": ("ROC", "Ref($close, {d})/$close"),
    "MA": ("MA", "Mean($close, {d})/$close"),
    "STD": ("STD", "Std($close, {d})/$close"),
    "BETA": ("BETA", "Slope($close, {d})/$close"),
    "RSQR": ("RSQR", "Rsquare($close, {d})"),
    "RESI": ("RESI", "Resi($close, {d})/$close"),
    "MAX": ("MAX", "Max($high, {d})/$close"),
    "LOW": ("MIN", "Min($low, {d})/$close"),
    "QTLU": ("QTLU", "Quantile($close, {d}, 0.8)/$close"),
    "QTLD": ("QTLD", "Quantile($close, {d}, 0.2)/$close"),
    "RANK": ("RANK", "Rank($close, {d})"),
    "RSV": ("RSV", "($close-Min($low, {d}))/(Max($high, {d})-Min($low, {d})+1e-12)"),
    "IMAX": ("IMAX", "IdxMax($high, {d})/{d}"),
    "IMIN": ("IMIN", "IdxMin($low, {d})/{d}"),
    "IMXD": ("IMXD", "(IdxMax($high, {d})-IdxMin($low, {d}))/{d}"),
    "CORR": ("CORR", "Corr($close, Log($volume+1), {d})"),
    "CORD": ("CORD", "Corr($close/Ref($close,1), Log($volume/Ref($volume, 1)+1), {d})"),
    "CNTP": ("CNTP", "Mean($close>Ref($close, 1), {d})"),
    "CNTN": ("CNTN", "Mean($close<Ref($close, 1), {d})"),
    "CNTD": ("CNTD", "Mean($close>Ref($close, 1), {d})-Mean($close<Ref($close, 1), {d})"),
    "SUMP": ("SUMP", f"Sum({_UP}, {{d}})/(Sum({_ABS}, {{d}})+1e-12)".replace("{x}", "$close")),
    "SUMN": ("SUMN", f"Sum({_DOWN}, {{d}})/(Sum({_ABS}, {{d}})+1e-12)".replace("{x}", "$close")),
    "SUMD": ("SUMD", f"(Sum({_UP}, {{d}})-Sum({_DOWN}, {{d}}))/(Sum({_ABS}, {{d}})+1e-12)".replace("{x}", "$close")),
    "VMA": ("VMA", "Mean($volume, {d})/($volume+1e-12)"),
    "VSTD": ("VSTD", "Std($volume, {d})/($volume+1e-12)"),
    "WVMA": (
        "WVMA",
        "Std(Abs($close/Ref($close, 1)-1)*$volume, {d})/(Mean(Abs($close/Ref($close, 1)-1)*$volume, {d})+1e-12)",
    ),
    "VSUMP": ("VSUMP", f"Sum({_UP}, {{d}})/(Sum({_ABS}, {{d}})+1e-12)".replace("{x}", "$volume")),
    "VSUMN": ("VSUMN", f"Sum({_DOWN}, {{d}})/(Sum({_ABS}, {{d}})+1e-12)".replace("{x}", "$volume")),
    "VSUMD": ("VSUMD", f"(Sum({_UP}, {{d}})-Sum({_DOWN}, {{d}}))/(Sum({_ABS}, {{d}})+1e-12)".replace("{x}", "$volume")),
}


def alpha158(
    *,
    kbar: bool = True,
    price_windows: Iterable[int] = (0,),
    price_fields: Iterable[str] = ("OPEN", "HIGH", "LOW", "VWAP"),
    volume_windows: Iterable[int] | None = None,
    rolling_windows: Iterable[int] = DEFAULT_WINDOWS,
    include: Iterable[str] | None = None,
    exclude: Iterable[str] = (),
) -> dict[str, str]:
    """Feature name -> expression. Defaults give qlib's 158 columns; the options mirror qlib's config."""
    features: dict[str, str] = {}
    if kbar:
        features.update(KBAR)
    for field in price_fields:
        lower = field.lower()
        for d in price_windows:
            features[f"{field.upper()}{d}"] = f"Ref(${lower}, {d})/$close" if d else f"${lower}/$close"
    for d in volume_windows or ():
        features[f"VOLUME{d}"] = f"Ref($volume, {d})/($volume+1e-12)" if d else "$volume/($volume+1e-12)"
    wanted = set(include) if include is not None else None
    skipped = set(exclude)
    unknown = ((wanted or set()) | skipped) - set(ROLLING_FAMILIES)
    if unknown:
        raise ValueError(f"unknown Alpha158 rolling families {sorted(unknown)}; known: {', '.join(ROLLING_FAMILIES)}")
    windows = tuple(rolling_windows)
    for family, (prefix, template) in ROLLING_FAMILIES.items():
        if family in skipped or (wanted is not None and family not in wanted):
            continue
        for d in windows:
            features[f"{prefix}{d}"] = template.replace("{d}", str(d))
    return features
