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

# Our default arithmetic is float64; qlib keeps element-wise steps on its float32 fields in float32.
# With float32_arithmetic=True we reproduce that, and every column must then match to 1e-6 (abs or
# rel), except correlations of short windows, where pandas' own windowed moments carry rounding of up
# to a few 1e-5 on a correlation (ours match a long-double reference: test_kernels.py).
TOLERANCE = 1e-6
CORR_ABS_TOLERANCE = 1e-4


@pytest.mark.qlib
def test_alpha158_and_every_operator_match_pyqlib(tmp_path):
    if not QLIB_PYTHON.exists() or not DEFAULT_REFERENCE.exists():
        pytest.skip(f"needs pyqlib at {QLIB_PYTHON} and {DEFAULT_REFERENCE}")
    default, emulated, _ = parity(60, 400, 11, QLIB_PYTHON, DEFAULT_REFERENCE, tmp_path, float32_arithmetic=True)
    assert len(emulated) > 158
    nan_mismatch = {d.name: d.nan_mismatch for d in default + emulated if d.nan_mismatch}
    assert not nan_mismatch, nan_mismatch
    bad = {
        d.name: (d.max_abs, d.max_rel)
        for d in emulated
        if not d.within(TOLERANCE)
        and not (d.name.startswith(("CORR", "CORD", "OP_CORR")) and d.max_abs < CORR_ABS_TOLERANCE)
    }
    assert not bad, bad
    # the default float64 arithmetic stays within float32 rounding of qlib's value, amplified at most
    # by short-window correlations
    assert max(d.max_abs for d in default if not d.name.startswith(("OP_COV", "OP_VAR", "OP_INFIX"))) < 1e-3
