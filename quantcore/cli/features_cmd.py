"""`rdquant features`: compute a feature set over a market and write it to Parquet."""


def features_command() -> None:
    """Compute features (arrives with the expression engine)."""
