"""Parity with pyqlib 0.9.7 on the same qlib-format market (runs only with `-m qlib`).

pyqlib is not one of our dependencies: point RDQUANT_QLIB_PYTHON at an interpreter that has it
(`python3.11 -m venv ~/qlibref && ~/qlibref/bin/pip install pyqlib==0.9.7`); ~/qlibref is tried by default."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

from qlib_parity import DEFAULT_QLIB_PYTHON, DEFAULT_REFERENCE, parity  # noqa: E402

QLIB_PYTHON = Path(os.environ.get("RDQUANT_QLIB_PYTHON", DEFAULT_QLIB_PYTHON))

# Columns whose differences are understood and bounded (see benchmarks/qlib_parity.py and the README):
# qlib does element-wise arithmetic in float32 (its data type) where we use float64, so a value that is
# a small difference of large float32 terms carries float32 rounding in qlib's result.
FLOAT32_TOLERANCE = 2e-5


@pytest.mark.qlib
def test_alpha158_and_every_operator_match_pyqlib(tmp_path):
    if not QLIB_PYTHON.exists() or not DEFAULT_REFERENCE.exists():
        pytest.skip(f"needs pyqlib at {QLIB_PYTHON} and {DEFAULT_REFERENCE}")
    diffs, _ = parity(60, 400, 11, QLIB_PYTHON, DEFAULT_REFERENCE, tmp_path)
    assert len(diffs) > 158
    nan_mismatch = {d.name: d.nan_mismatch for d in diffs if d.nan_mismatch}
    assert not nan_mismatch, nan_mismatch
    bad = {d.name: (d.max_abs, d.max_rel) for d in diffs if not d.within(FLOAT32_TOLERANCE)}
    assert not bad, bad
