"""The look-ahead gate on generated model code (`sandbox.generated_model`), through the worker's own path
(`run_spec` with a `WorkerContext`) on a real synthetic market: `Model.predict` gets the whole test
segment in one call, so a model that scores a day with later rows (statistics of the whole batch, the
next day's row of the same instrument) must fail as `look_ahead`, naming the cut, the rows and the
first changed day; an honest row-wise model must pass with exactly the metrics of its built-in twin."""

from __future__ import annotations

import re

import numpy as np
import pytest

from quantcore.data.sources import load_market
from sandbox.experiments import WorkerContext, run_spec

MARKET = "synthetic:60:400:0"
FEATURES = {"rev": "-($close/Ref($close, 5) - 1)", "rng": "($high-$low)/$close"}
# The test segment ends before an instrument's delisting: every test day has the same rows, so "the
# next day's row of the same instrument" is the row `ROWS` further on.
SEGMENTS = {
    "train": ["2010-01-04", "2010-12-31"],
    "valid": ["2011-01-03", "2011-04-29"],
    "test": ["2011-05-02", "2011-07-13"],
}
BACKTEST = {"topk": 10, "n_drop": 2}
# The built-in `linear` family's arithmetic (quantcore.models.linear, alpha=1, NaN as 0), step for step:
# its predictions, and so every metric, are the built-in model's bit for bit.
RIDGE = (
    "import numpy as np\n\n"
    "class Model:\n"
    "    def fit(self, x, y, xv, yv):\n"
    "        x, y = self.clean(x), y.astype(np.float64)\n"
    "        x_mean, y_mean = x.mean(axis=0), y.mean()\n"
    "        xc = x - x_mean\n"
    "        gram = xc.T @ xc + 1.0 * np.eye(x.shape[1])\n"
    "        self.coef = np.linalg.lstsq(gram, xc.T @ (y - y_mean), rcond=None)[0]\n"
    "        self.intercept = float(y_mean - x_mean @ self.coef)\n\n"
    "    def clean(self, x):\n"
    "        x = np.asarray(x, dtype=np.float64)\n"
    "        return np.where(np.isfinite(x), x, 0.0)\n\n"
    "    def score(self, x):\n"
    "        return self.clean(x) @ self.coef + self.intercept\n\n"
    "    def predict(self, x):\n"
    "        return self.score(x)\n"
)
MESSAGE = re.compile(
    r"generated model changed (\d+) of its (\d+) predictions up to (\d{4}-\d\d-\d\d) \(look-ahead "
    r"cut (\d+) of (\d+), seed (-?\d+)\) when only later rows of the predict batch changed "
    r"\(first on (\d{4}-\d\d-\d\d)\)"
)


def model(predict_body: str) -> str:
    """The ridge model with another `predict` body (indented 8 spaces, `p = self.score(x)` at hand)."""
    return RIDGE.replace("        return self.score(x)\n", predict_body)


def normalised_by_the_batch() -> str:
    return model("        p = self.score(x)\n        return (p - p.mean()) / p.std()\n")


def next_day_row(rows: int) -> str:
    return model(f"        return self.score(np.roll(x, -{rows}, axis=0))\n")


def next_day_row_on_the_last_days(rows: int) -> str:
    """Honest except on the segment's second-to-last day, whose rows add the last day's scores."""
    return model(f"        p = self.score(x)\n        p[-2 * {rows}:-{rows}] += p[-{rows}:]\n        return p\n")


def statistics_of_the_first_test_batch() -> str:
    """Normalises by the statistics of the first batch of its size it saw (the whole test segment), kept
    for later calls: without a fresh copy of the model per call, every check would reuse them."""
    return model(
        "        p = self.score(x)\n"
        "        if not hasattr(self, 'kept'):\n"
        "            self.kept = {}\n"
        "        if len(x) not in self.kept:\n"
        "            self.kept[len(x)] = (p.mean(), p.std())\n"
        "        mean, std = self.kept[len(x)]\n"
        "        return (p - mean) / std\n"
    )


@pytest.fixture(scope="module")
def panel():
    return load_market(MARKET)


@pytest.fixture(scope="module")
def test_days(panel):
    return panel.date_index(*SEGMENTS["test"])


@pytest.fixture(scope="module")
def rows(panel, test_days):
    """Rows per test day: the same on every day (checked), the instruments listed then."""
    per_day = (~panel.outside_span[:, test_days]).sum(axis=0)
    assert (per_day == per_day[0]).all(), per_day
    return int(per_day[0])


@pytest.fixture(scope="module")
def run(panel, tmp_path_factory):
    ctx = WorkerContext(attach=lambda m: panel)
    root = tmp_path_factory.mktemp("model-lookahead")

    def go(**spec):
        raw = {
            "kind": "model",
            "market": MARKET,
            "features": FEATURES,
            "segments": SEGMENTS,
            "backtest": BACKTEST,
            **spec,
        }
        return run_spec(raw, ctx, root / str(len(list(root.iterdir()))))

    return go


def _day(panel, i: int) -> str:
    return str(panel.calendar[i])[:10]


def _caught(result, seed: int) -> dict:
    """Assert `result` is the gate's look-ahead failure; its numbers by name."""
    assert not result.ok and result.failure.category.value == "look_ahead", result.failure
    m = MESSAGE.search(result.failure.message)
    assert m, result.failure.message
    assert int(m[6]) == seed
    return {"changed": int(m[1]), "of": int(m[2]), "cut": m[3], "cut_no": int(m[4]), "cuts": int(m[5]), "first": m[7]}


def _scores(metrics: dict[str, float]) -> dict[str, float]:
    """The prediction's and the backtest's metrics (not the fit's timings)."""
    return {k: v for k, v in metrics.items() if not k.startswith("fit.") and "seconds" not in k}


def test_an_honest_row_wise_model_passes_with_its_metrics(run):
    generated = run(code=RIDGE)
    builtin = run(family="linear")  # not gated: trusted code
    assert generated.ok and builtin.ok, (generated.failure, builtin.failure)
    scores = _scores(generated.metrics)
    assert {"IC", "Rank IC", "ARR.with_cost"} <= set(scores)
    assert scores == _scores(builtin.metrics)
    assert generated.details["daily_rank_ic"] == builtin.details["daily_rank_ic"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_model_normalised_by_the_whole_batch_is_caught(run, panel, test_days, rows, seed):
    result = run(code=normalised_by_the_batch(), seed=seed)
    found = _caught(result, seed)
    # the first cut already: every prediction up to it moves with the batch's mean and std
    assert found["cut_no"] == 1 and found["first"] == _day(panel, test_days.start)
    cut = int(np.searchsorted(panel.calendar, np.datetime64(found["cut"])))
    assert test_days.start <= cut < test_days.stop - 1
    assert found["changed"] == found["of"] == rows * (cut - test_days.start + 1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_model_reading_the_next_days_row_is_caught(run, panel, test_days, rows, seed):
    result = run(code=next_day_row(rows), seed=seed)
    found = _caught(result, seed)
    # the first cut: only the cut day's rows read a perturbed (next-day) row
    assert found["cut_no"] == 1 and found["changed"] == rows and found["first"] == found["cut"]
    assert _day(panel, test_days.start) <= found["cut"] < _day(panel, test_days.stop - 1)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_a_leak_on_the_segments_last_days_is_caught_whatever_the_seed(run, panel, test_days, rows, seed):
    """Only a cut on the second-to-last day sees it: the gate always makes one there."""
    found = _caught(run(code=next_day_row_on_the_last_days(rows), seed=seed), seed)
    last_but_one = _day(panel, test_days.stop - 2)
    assert found["cut_no"] == found["cuts"] and found["cut"] == found["first"] == last_but_one
    assert found["changed"] == rows and found["of"] == rows * (test_days.stop - 1 - test_days.start)


def test_a_model_keeping_the_first_batchs_statistics_is_caught(run, panel, test_days):
    """Each check predicts with a fresh copy of the fitted model: state the scoring call left (here
    the whole segment's mean and std, kept by batch size) does not hide the leak."""
    found = _caught(run(code=statistics_of_the_first_test_batch()), 0)
    assert found["cut_no"] == 1 and found["first"] == _day(panel, test_days.start)


def test_a_model_using_each_days_own_rows_passes(run, rows):
    """Cross-sectional work within a day reads no later day: demeaning each day's scores passes."""
    per_day = model(
        f"        p = self.score(x)\n"
        f"        if len(p) % {rows}:\n"
        "            return p  # the valid segment's days have other rows\n"
        f"        days = p.reshape(-1, {rows})\n"
        "        return (days - days.mean(axis=1, keepdims=True)).reshape(-1)\n"
    )
    result = run(code=per_day)
    assert result.ok, result.failure
