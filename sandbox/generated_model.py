"""A generated model class (`class Model` with fit/predict on numpy arrays) as a quant-core model.

Its fit and predict run under the sandbox guard, exactly like a generated factor function. Its
predictions on a scoring segment pass a look-ahead gate (`_check_no_look_ahead`): `predict(x)` gets
the whole segment in one call, so it could score a day with later rows (statistics of the whole
batch, the next day's row of the same instrument); the gate perturbs the rows after seeded cut days
and requires every earlier prediction to stay the same bit for bit."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from quantcore.dataset import DataKey, Dataset
from quantcore.errors import LookAheadError
from quantcore.evaluate.significance import lookahead_cut_points
from quantcore.models.base import BaseModel, FitInfo, check_predictions, learn_arrays
from sandbox.failures import DegenerateOutput
from sandbox.guard import ForbiddenOperation, Guard, load_generated

__all__ = ["GeneratedModel", "LOOKAHEAD_CUTS"]

#: Seeded cut days of the look-ahead gate (one in each of k equal parts of the scoring segment, plus the
#: day before its last): a factor experiment's default `lookahead_cuts`. Each costs one `Model.predict`
#: on the whole segment.
LOOKAHEAD_CUTS = 5


@dataclass(frozen=True)
class _NoConfig:
    pass


class GeneratedModel(BaseModel):
    """Wraps `class Model: fit(x_train, y_train, x_valid, y_valid); predict(x) -> (rows,)`; `seed` (the
    spec's) places the look-ahead gate's cut days."""

    family = "generated"
    Config = _NoConfig

    def __init__(
        self,
        source: str,
        guard: Guard,
        workdir: Path,
        output_chars: int = 1 << 20,
        *,
        seed: int = 0,
        lookahead_cuts: int = LOOKAHEAD_CUTS,
    ):
        super().__init__()
        self.source, self.guard, self.workdir, self.output_chars = source, guard, Path(workdir), output_chars
        self.seed, self.lookahead_cuts = seed, lookahead_cuts
        self._impl = None

    def _guarded(self, fn, *args):
        with self.guard.active(self.workdir, self.output_chars):
            out = fn(*args)
        if self.guard.refusals:
            raise ForbiddenOperation(f"the sandbox refused {self.guard.refusals[0]}")
        return out

    def _fit(self, dataset: Dataset, info: FitInfo) -> None:
        def build_and_fit(xt, yt, xv, yv):
            cls = load_generated(self.source, restricted=self.guard.python_rules).get("Model")
            if not isinstance(cls, type):
                raise DegenerateOutput("the code defines no class `Model`")
            impl = cls()
            impl.fit(xt, yt, xv, yv)
            return impl

        xt, yt = learn_arrays(dataset, "train")
        xv, yv = learn_arrays(dataset, "valid")
        self._impl = self._guarded(build_and_fit, xt, yt, xv, yv)
        pv: list[np.ndarray] = []
        self._scores_each([xv], lambda _, scores: pv.append(scores))
        info.valid_loss = [float(np.mean((pv[0] - yv) ** 2))]
        info.best_iteration, info.best_valid_loss = 0, info.valid_loss[0]
        info.n_train, info.n_valid = len(yt), len(yv)
        check_predictions(self.family, pv[0], "the valid segment")

    def _scores_each(
        self, batches: Iterable[np.ndarray], emit: Callable[[int, np.ndarray], None], fresh: bool = False
    ) -> None:
        """`Model.predict` on each batch, handing `emit` (position, its (rows,) float64 scores). One
        guarded block for all: its exit (a full garbage collection, ~50 ms in a worker) is paid once.
        `fresh`: each call on its own deep copy of the fitted model, so that state one call leaves
        (statistics kept from the first batch it saw) cannot reach the next. `batches` and `emit` run
        guarded: numpy only."""
        guard = self.guard
        with guard.active(self.workdir, self.output_chars):
            for i, x in enumerate(batches):
                impl = _copied(self._impl) if fresh else self._impl
                out = impl.predict(x)
                # converted (and the output released) while still guarded: a returned object's
                # `__array__` is generated code too
                try:
                    scores = np.asarray(out, dtype=np.float64).reshape(-1)
                except (TypeError, ValueError) as e:
                    raise DegenerateOutput(
                        f"Model.predict returned a {type(out).__name__} that is not numeric: {e}"
                    ) from None
                del impl, out
                if guard.refusals:
                    raise ForbiddenOperation(f"the sandbox refused {guard.refusals[0]}")
                if scores.shape[0] != len(x):
                    raise DegenerateOutput(f"Model.predict returned {scores.shape[0]} scores for {len(x)} rows")
                emit(i, scores)
                del scores
        if guard.refusals:
            raise ForbiddenOperation(f"the sandbox refused {guard.refusals[0]}")

    def _predict(self, dataset: Dataset, segment: str):
        x, _ = dataset.prepare(segment, DataKey.INFER)
        day, _ = dataset.rows(segment, DataKey.INFER)  # x's rows, sorted by day
        scores = self._check_no_look_ahead(np.asarray(x.to_numpy(), dtype=np.float32), day, dataset.calendar)
        return scores, x.index

    def _check_no_look_ahead(self, x: np.ndarray, day: np.ndarray, calendar: np.ndarray) -> np.ndarray:
        """`Model.predict(x)` on the whole segment (rows sorted by day, `day` their calendar positions),
        then again at each cut day (`_cut_days`) on a copy whose rows after the cut are perturbed
        (`_perturbed`): a model that scores each row from that row (and its own day's rows) keeps every
        prediction up to the cut bit for bit; one that reads later rows changes them. Every call is on
        a fresh copy of the fitted model, and of `x` (predict may write into its input). Returns the
        whole segment's scores.

        Perturbed rather than cut off: numpy's matrix-vector product is bit-stable at one batch shape
        (any alignment) but not across shapes (a few rows differ by an ulp at another row count, with
        one thread or several), so a cut-off batch would fail an honest linear model."""
        seed = self.seed % (1 << 64)  # numpy seeds are non-negative; a spec's may not be
        cuts = _cut_days(day, self.lookahead_cuts, seed)
        ends = np.searchsorted(day, cuts, side="right")  # rows up to each cut: a prefix of x
        full: list[np.ndarray] = []

        def batches():
            yield x.copy()
            for cut, end in zip(cuts, ends):
                yield _perturbed(x, int(end), seed, cut)

        def compare(i: int, scores: np.ndarray) -> None:
            if i == 0:
                full.append(scores)
                return
            cut, end = cuts[i - 1], int(ends[i - 1])
            before, after = full[0][:end], scores[:end]
            changed = ~((before == after) | (np.isnan(before) & np.isnan(after)))
            if changed.any():
                first = str(calendar[day[int(np.argmax(changed))]])[:10]
                raise LookAheadError(
                    f"generated model changed {int(changed.sum())} of its {end} predictions up to "
                    f"{str(calendar[cut])[:10]} (look-ahead cut {i} of {len(cuts)}, seed {self.seed}) when only "
                    f"later rows of the predict batch changed (first on {first}): Model.predict reads later "
                    "rows; score each row from its own features (and its own day's rows) only"
                )

        self._scores_each(batches(), compare, fresh=True)
        return full[0]

    def _state(self) -> dict:
        return {"source": self.source}  # the code itself: a generated object is not saved by pickle

    def _set_state(self, state: dict) -> None:
        raise DegenerateOutput("a generated model is re-created from its spec, not loaded from a file")


def _cut_days(day: np.ndarray, k: int, seed: int) -> list[int]:
    """The gate's cut days for rows on calendar days `day` (sorted): one seeded day in each of `k` equal
    parts of [first day, last day) (`lookahead_cut_points`; every day when fewer) and the day before the
    last, so that a leak on the segment's last rows is caught whatever the seed. Each has later rows."""
    if len(day) == 0 or day[-1] <= day[0]:
        return []  # one day: nothing later to perturb
    first, last = int(day[0]), int(day[-1])
    return sorted(set(lookahead_cut_points(first, last, min(k, last - first), seed)) | {last - 1})


def _perturbed(x: np.ndarray, end: int, seed: int, cut: int) -> np.ndarray:
    """A copy of `x` whose rows from `end` on are each a seeded random row of `x` times noise in
    [0.5, 1.5): later values, signs and missing-value patterns all change; rows before `end` do not.
    Depends on (seed, cut) only: reproducible per spec."""
    rng = np.random.default_rng((seed, cut))
    out = x.copy()
    n = len(x) - end
    out[end:] = x[rng.integers(0, len(x), size=n)] * (rng.random((n, x.shape[1]), dtype=np.float32) + 0.5)
    return out


def _copied(impl):
    """A deep copy of a fitted generated model (its class has no copy hooks: the guard refuses
    underscore names), or the model itself when it holds something that cannot be copied (a module)."""
    try:
        return copy.deepcopy(impl)
    except (TypeError, ValueError, copy.Error, RecursionError):
        return impl
