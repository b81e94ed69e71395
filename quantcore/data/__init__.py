"""Market data: the in-memory `Panel`, qlib's binary format, CSV/Parquet import, embedded and synthetic markets."""

from quantcore.data.panel import PRICE_FIELDS, Panel

__all__ = ["Panel", "PRICE_FIELDS"]
