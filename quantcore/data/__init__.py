"""Market data: the in-memory `Panel`, qlib's binary format, CSV/Parquet import, embedded and synthetic markets."""

from quantcore.data.embedded import build_embedded, load_sp500
from quantcore.data.importer import Defect, DefectPolicy, ImportReport, import_bars
from quantcore.data.panel import PRICE_FIELDS, Panel
from quantcore.data.qlib_format import read_qlib, write_qlib
from quantcore.data.sources import load_market
from quantcore.data.synthetic import PlantedAlpha, SynthConfig, planted_alphas, synth_market

__all__ = [
    "Panel",
    "PRICE_FIELDS",
    "read_qlib",
    "write_qlib",
    "import_bars",
    "ImportReport",
    "Defect",
    "DefectPolicy",
    "load_sp500",
    "build_embedded",
    "synth_market",
    "SynthConfig",
    "PlantedAlpha",
    "planted_alphas",
    "load_market",
]
