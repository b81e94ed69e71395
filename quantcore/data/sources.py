"""One entry point for every market the quant core can run on: `load_market(spec)`."""

from __future__ import annotations

from pathlib import Path

from quantcore.data.panel import Panel
from quantcore.errors import DataError

__all__ = ["load_market", "synthetic_args", "MARKET_SPECS"]

#: The forms `load_market` accepts, as shown in error messages and CLI help.
MARKET_SPECS = (
    "sp500 (the embedded S&P 500 sample, the default)",
    "synthetic or synthetic:N:T:SEED:K (e.g. synthetic:300:2520:0; K planted alphas, default 4, "
    "0 for a null market; trailing parts may be left out)",
    "a qlib directory (holding calendars/day.txt)",
    "a CSV or Parquet file of daily bars (.csv, .csv.gz, .parquet)",
)

_BAR_SUFFIXES = (".csv", ".csv.gz", ".csv.bz2", ".csv.zip", ".csv.xz", ".csv.zst", ".parquet", ".pq")


def load_market(spec: str = "sp500", **kw) -> Panel:
    """Load a market by spec; keyword arguments go to the loader (`read_qlib`, `import_bars`, `synth_market`)."""
    text = str(spec).strip()
    low = text.lower()
    if low == "sp500":
        from quantcore.data.embedded import load_sp500

        if kw:
            raise DataError(f"the sp500 market takes no options (got {', '.join(kw)})")
        return load_sp500()
    if low == "synthetic" or low.startswith("synthetic:"):
        from quantcore.data.synthetic import synth_market

        return synth_market(**{**synthetic_args(text), **kw})
    path = Path(text).expanduser()
    if path.is_dir():
        from quantcore.data.qlib_format import is_qlib_dir, read_qlib

        if not is_qlib_dir(path):
            raise DataError(f"{path} is a directory but not a qlib one (no calendars/day.txt); {_forms()}")
        return read_qlib(path, **kw)
    if low.endswith(_BAR_SUFFIXES):
        if not path.is_file():
            raise DataError(f"bars file {path} does not exist")
        from quantcore.data.importer import import_bars

        return import_bars(path, **kw)[0]
    raise DataError(f"unknown market {spec!r}; {_forms()}")


def synthetic_args(text: str) -> dict:
    """The keyword arguments of `synth_market` a "synthetic:N:T:SEED:K" spec names."""
    parts = text.split(":")[1:]
    names = ("n_instruments", "n_days", "seed", "n_alphas")
    if len(parts) > len(names) or any(not p.strip().lstrip("-").isdigit() for p in parts):
        raise DataError(
            f"bad synthetic market spec {text!r}: expected synthetic:N:T:SEED:K with whole numbers "
            "(instruments, days, seed, planted alphas), e.g. synthetic:300:2520:0:4"
        )
    return {name: int(p) for name, p in zip(names, parts)}


def _forms() -> str:
    return "valid markets: " + "; ".join(MARKET_SPECS)
