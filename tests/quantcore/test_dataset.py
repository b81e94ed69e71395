"""Dataset: processors against hand-written pandas on tiny frames, no leakage from valid/test into
fitted statistics, segment and data refusals, tabular rows, and time-series windows vs direct slices."""

from __future__ import annotations

import tracemalloc
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from quantcore.data.panel import Panel
from quantcore.data.synthetic import planted_alphas, synth_market
from quantcore.dataset import (
    CSRankNorm,
    CSZScoreNorm,
    DataKey,
    DatasetConfig,
    DatasetError,
    DropnaFeature,
    DropnaLabel,
    FieldGroup,
    Fillna,
    FilterCol,
    ProcessInf,
    ProcessorError,
    RobustZScoreNorm,
    SegmentError,
    TSFill,
    ZScoreNorm,
    build_dataset,
    make_processor,
)
from quantcore.dataset import processors as P
from quantcore.dataset.dataset import process
from quantcore.expr.evaluate import Evaluator
from quantcore.features import DEFAULT_LABEL

NAN, INF = np.nan, np.inf
SEGMENTS = {
    "train": ("2010-01-01", "2010-12-31"),
    "valid": ("2011-01-01", "2011-03-31"),
    "test": ("2011-04-01", "2011-07-15"),
}
FEATURES = {a.name: a.expression for a in planted_alphas(0)} | {"ret1": "$close/Ref($close, 1) - 1"}


# ---- tiny hand-made block -----------------------------------------------------------------------
DAYS = pd.to_datetime(["2020-01-02", "2020-01-03", "2020-01-06", "2020-01-07"])
INSTS = ["A", "B", "C", "D"]
# features (T=4, N=4, F=2); instrument D is unlisted on day 0 (its value there must be ignored)
F0 = np.array(
    [
        [[1.0, 10.0], [2.0, NAN], [3.0, 30.0], [99.0, 99.0]],
        [[4.0, INF], [NAN, 20.0], [6.0, 40.0], [5.0, -INF]],
        [[2.0, 1.0], [2.0, 2.0], [7.0, 3.0], [1.0, 4.0]],
        [[0.5, 8.0], [1.5, 6.0], [NAN, NAN], [3.0, 2.0]],
    ],
    dtype=np.float32,
)
L0 = np.array([[0.1, NAN, 0.3, 0.0], [0.2, 0.4, NAN, 0.1], [0.5, 0.1, 0.2, 0.3], [NAN, 0.2, 0.1, 0.4]], np.float32)
LISTED = np.ones((4, 4), bool)
LISTED[0, 3] = False


def _block() -> P.Block:
    return P.Block(F0.copy(), L0.copy(), LISTED, LISTED, ("f0", "f1"))


def _frame(block: P.Block) -> pd.DataFrame:
    """Long frame of the block's rows: what qlib's processors would see."""
    idx = pd.MultiIndex.from_product([DAYS, INSTS], names=["datetime", "instrument"])
    df = pd.DataFrame(
        np.concatenate([block.features.reshape(16, -1), block.label.reshape(16, 1)], axis=1).astype(np.float64),
        index=idx,
        columns=["f0", "f1", "label"],
    )
    return df[block.rows.reshape(-1)]


def _got(block: P.Block) -> pd.DataFrame:
    return _frame(block)


def _check(got: pd.DataFrame, want: pd.DataFrame, atol=1e-6) -> None:
    got, want = got.sort_index(), want.sort_index()
    assert list(got.index) == list(want.index)
    np.testing.assert_allclose(got[want.columns].to_numpy(), want.to_numpy(), rtol=1e-6, atol=atol, equal_nan=True)


def _apply(proc, days=slice(0, 2)):
    b = _block()
    return P.apply(proc, P.fit(proc, b, days), b)


def test_cs_rank_norm_matches_pandas_groupby_rank():
    want = _frame(_block())
    want = (want.groupby("datetime").rank(pct=True) - 0.5) * 3.46
    _check(_got(_apply(CSRankNorm())), want)


def test_cs_zscore_norm_matches_pandas_ddof1():
    df = _frame(_block()).replace([INF, -INF], NAN)
    want = df.groupby("datetime", group_keys=False).apply(lambda x: (x - x.mean()) / x.std())
    b = _block()
    b = replace(b, features=np.where(np.isinf(b.features), np.nan, b.features).astype(np.float32))
    out = P.apply(CSZScoreNorm(FieldGroup.FEATURE), None, b)
    _check(_got(out)[["f0", "f1"]], want[["f0", "f1"]])


def test_process_inf_uses_the_days_finite_mean():
    df = _frame(_block())
    want = df.copy()
    for day, g in df.groupby("datetime"):
        for col in df.columns:
            s = g[col]
            want.loc[s.index, col] = s.replace([INF, -INF], s[~np.isinf(s)].mean())
    got = _got(_apply(ProcessInf()))
    _check(got, want)
    # day 1, f1: finite values 20, 40 (B, C) -> inf and -inf both become 30
    assert got.loc[(DAYS[1], "A"), "f1"] == 30.0 and got.loc[(DAYS[1], "D"), "f1"] == 30.0


def test_fillna_dropna_filtercol():
    _check(_got(_apply(Fillna(FieldGroup.FEATURE, -1.0)))[["f0", "f1"]], _frame(_block())[["f0", "f1"]].fillna(-1.0))
    assert np.isnan(_apply(Fillna(FieldGroup.FEATURE)).label).sum() == np.isnan(L0).sum()  # label untouched
    _check(_got(_apply(DropnaLabel())), _frame(_block()).dropna(subset=["label"]))
    _check(_got(_apply(DropnaFeature())), _frame(_block()).dropna(subset=["f0", "f1"]))
    kept = _apply(FilterCol(("f1",)))
    assert kept.feature_names == ("f1",) and np.array_equal(kept.features[..., 0], F0[..., 1], equal_nan=True)
    with pytest.raises(ProcessorError, match="nope"):
        _apply(FilterCol(("nope",)))


def test_robust_zscore_fits_on_train_days_only():
    df = _frame(_block()).replace([INF, -INF], NAN)
    b = _block()
    b = replace(b, features=np.where(np.isinf(b.features), np.nan, b.features).astype(np.float32))
    train = df[df.index.get_level_values(0) <= DAYS[1]]
    med = train.median()
    mad = (train - med).abs().median()
    want = ((df - med) / ((mad + 1e-12) * 1.4826)).clip(-3, 3)
    proc = RobustZScoreNorm()
    state = P.fit(proc, b, slice(0, 2))
    _check(_got(P.apply(proc, state, b)), want)
    unclipped = P.apply(RobustZScoreNorm(clip_outlier=False), state, b)
    assert np.nanmax(np.abs(unclipped.features)) > 3


def test_zscore_norm_uses_population_std_and_leaves_constant_columns():
    b = _block()
    b = replace(b, features=np.where(np.isinf(b.features), np.nan, b.features).astype(np.float32))
    b = replace(b, label=np.full_like(b.label, 0.25))  # constant column: qlib leaves it as is
    df = _frame(b)
    train = df[df.index.get_level_values(0) <= DAYS[1]]
    want = (df - train.mean()) / train.std(ddof=0)
    want["label"] = 0.25
    proc = ZScoreNorm()
    _check(_got(P.apply(proc, P.fit(proc, b, slice(0, 2)), b)), want)


def test_make_processor_accepts_qlib_spellings_and_lists_names():
    assert make_processor("Fillna", fields_group="feature", fill_value=1) == Fillna(FieldGroup.FEATURE, 1)
    assert make_processor("FilterCol", col_list=["a"]) == FilterCol(("a",))
    assert make_processor("DropnaLabel", fields_group="label") == DropnaLabel()
    assert make_processor("CSRankNorm", fields_group=None) == CSRankNorm(FieldGroup.ALL)
    with pytest.raises(ProcessorError, match="known: .*RobustZScoreNorm"):
        make_processor("MinMaxNormX")
    with pytest.raises(ProcessorError, match="valid: clip_outlier, fields_group"):
        make_processor("RobustZScoreNorm", clip=True)
    with pytest.raises(ProcessorError, match="must be fitted"):
        P.apply(ZScoreNorm(), None, _block())


# ---- datasets on a synthetic market -------------------------------------------------------------
@pytest.fixture(scope="module")
def panel() -> Panel:
    return synth_market(60, 400, 0)


def _config(**kw) -> DatasetConfig:
    base = dict(
        features=FEATURES,
        segments=SEGMENTS,
        infer_processors=(
            ProcessInf(FieldGroup.FEATURE),
            RobustZScoreNorm(FieldGroup.FEATURE),
            Fillna(FieldGroup.FEATURE),
        ),
        learn_processors=(DropnaLabel(), ZScoreNorm(FieldGroup.LABEL)),
    )
    return DatasetConfig(**(base | kw))


@pytest.fixture(scope="module")
def dataset(panel):
    return build_dataset(panel, _config())


def test_tabular_rows_and_raw_values_match_the_evaluator(panel, monkeypatch):
    import quantcore.dataset.dataset as D

    monkeypatch.setattr(D, "_EVAL_CHUNK", 4)  # 6 features: two evaluator batches, one partial
    ds = build_dataset(panel, _config(infer_processors=(), learn_processors=()))
    x, y = ds.prepare("valid")
    want = Evaluator(panel).frame(FEATURES, start="2011-01-01", end="2011-03-31")
    assert x.index.equals(want.index)
    np.testing.assert_array_equal(x.to_numpy(), want.to_numpy())
    label = Evaluator(panel).frame({"y": DEFAULT_LABEL}, start="2011-01-01", end="2011-03-31", allow_future=True)
    np.testing.assert_array_equal(y.to_numpy(), label["y"].to_numpy())
    assert y.name == "label" and x.index.names == ["datetime", "instrument"]


def test_learn_block_drops_nan_labels_and_normalises_them(dataset):
    _, y_infer = dataset.prepare("train", DataKey.INFER)
    x, y = dataset.prepare("train", DataKey.LEARN)
    assert y_infer.isna().any() and not y.isna().any()
    assert len(x) == y_infer.notna().sum()
    assert abs(y.mean()) < 1e-4 and abs(y.std(ddof=0) - 1) < 1e-4  # ZScoreNorm fitted on these rows
    assert not np.isnan(x.to_numpy()).any()  # Fillna in the infer processors
    assert np.abs(x.to_numpy()).max() <= 3.0  # RobustZScoreNorm clips


def test_no_leakage_fitted_state_ignores_valid_and_test(dataset):
    """Wildly perturb every valid/test value of the raw block: fitted states and train outputs stay
    bit-identical. Perturb one train value: they change."""
    cfg = dataset.config
    raw = _raw(dataset)
    train = dataset.days("train")
    rng = np.random.default_rng(1)
    feats, label = raw.features.copy(), raw.label.copy()
    after = slice(train.stop, None)
    feats[after] = feats[after] * 1e6 + rng.normal(0, 1e3, feats[after].shape)
    feats[after][::7] = np.inf
    label[after] = rng.normal(50, 100, label[after].shape)
    perturbed = replace(raw, features=feats.astype(np.float32), label=label.astype(np.float32))

    base = process(raw, cfg.infer_processors, cfg.learn_processors, train)
    moved = process(perturbed, cfg.infer_processors, cfg.learn_processors, train)
    _assert_states_equal(base[2] + base[3], moved[2] + moved[3])
    for a, b in ((base[0], moved[0]), (base[1], moved[1])):
        np.testing.assert_array_equal(a.features[train], b.features[train])
        np.testing.assert_array_equal(a.label[train], b.label[train])
    assert not np.array_equal(base[0].features[after], moved[0].features[after])

    f2 = raw.features.copy()
    f2[train.start + 3] *= 10.0  # one train day changes
    changed = process(replace(raw, features=f2), cfg.infer_processors, cfg.learn_processors, train)
    with pytest.raises(AssertionError):
        _assert_states_equal(base[2], changed[2])
    l2 = raw.label.copy()
    l2[train.start + 3] += 1.0
    changed = process(replace(raw, label=l2), cfg.infer_processors, cfg.learn_processors, train)
    with pytest.raises(AssertionError):
        _assert_states_equal(base[3], changed[3])


def test_no_leakage_through_the_panel(panel, dataset):
    """Changing the market after the train segment (beyond the label's 2-day horizon) leaves the
    dataset's fitted state and train rows unchanged."""
    train = dataset.days("train")
    cut = train.stop + 2  # DEFAULT_LABEL on the last train day reads the close two days later
    fields = {k: v.copy() for k, v in panel.fields.items()}
    for k in ("close", "open", "high", "low", "vwap", "volume"):
        fields[k][:, cut:] *= np.random.default_rng(2).uniform(0.2, 5.0, fields[k][:, cut:].shape)
    other = build_dataset(replace(panel, fields=fields), _config())
    _assert_states_equal(dataset.infer_states_ + dataset.learn_states_, other.infer_states_ + other.learn_states_)
    for key in DataKey:
        xa, ya = dataset.prepare("train", key)
        xb, yb = other.prepare("train", key)
        pd.testing.assert_frame_equal(xa, xb)
        pd.testing.assert_series_equal(ya, yb)
    assert not dataset.prepare("test")[0].equals(other.prepare("test")[0])


def _raw(ds) -> P.Block:
    """The unprocessed block of a dataset, rebuilt from its config (processors off)."""
    plain = build_dataset(_PANEL_CACHE["panel"], replace(ds.config, infer_processors=(), learn_processors=()))
    return plain.infer


_PANEL_CACHE: dict = {}


@pytest.fixture(autouse=True, scope="module")
def _remember_panel(panel):
    _PANEL_CACHE["panel"] = panel


def _assert_states_equal(a, b):
    assert len(a) == len(b)
    for sa, sb in zip(a, b):
        assert (sa is None) == (sb is None)
        if sa is not None:
            assert sa.keys() == sb.keys()
            for k in sa:
                np.testing.assert_array_equal(sa[k], sb[k])


# ---- refusals -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "segments, match",
    [
        ({"valid": ("2011-01-01", "2011-03-31")}, "must include 'train'"),
        ({"train": ("2010-12-31", "2010-01-01")}, "'train' starts .* after it ends"),
        ({"train": ("2010-01-01", "2010-12-31"), "test": ("2015-01-01", "2015-12-31")}, "'test' .* outside"),
        ({"train": ("2010-01-01", "2010-12-31"), "valid": ("2011-01-01",)}, "'valid' must be a \\(start, end\\)"),
        ({"train": ("2010-01-01", "2010-12-31"), "valid": ("2011-01-01", "2011-01-01")}, "'valid' .* no trading day"),
        ({"train": ("2010-01-01", "2010-12-31"), "valid": ("2010-12-01", "2011-03-31")}, "'train' and 'valid' overlap"),
    ],
)
def test_segment_errors_name_the_segment(panel, segments, match):
    with pytest.raises(SegmentError, match=match):
        build_dataset(panel, _config(segments=segments))


def test_unknown_segment_lists_defined_ones(dataset):
    with pytest.raises(SegmentError, match="'holdout' is not in this dataset; defined: train, valid, test"):
        dataset.prepare("holdout")


def test_all_nan_feature_or_label_in_train_is_refused(panel):
    with pytest.raises(DatasetError, match="all-NaN in the train segment: long"):
        build_dataset(panel, _config(features={"ok": "$close", "long": "Ref($close, 1000)"}))
    with pytest.raises(DatasetError, match="label is all-NaN in the train segment"):
        build_dataset(panel, _config(label="Ref($close, -1000) / $close"))


def test_empty_universe_is_refused(panel):
    empty = replace(panel, starts=np.zeros_like(panel.starts), ends=np.zeros_like(panel.ends))
    with pytest.raises(DatasetError, match="empty universe"):
        build_dataset(empty, _config())
    with pytest.raises(DatasetError, match="at least one feature"):
        build_dataset(panel, _config(features={}))


# ---- time-series view ---------------------------------------------------------------------------
def _direct_window(ds, day, inst, step_len, fill):
    """The instrument's last `step_len` calendar days of INFER features by slicing, NaN-padded before the
    calendar start and off-listing, then filled like pandas ffill/bfill."""
    b = ds.infer
    lo = day - step_len + 1
    rows = np.full((step_len, b.features.shape[2]), np.nan, np.float32)
    src = np.arange(max(lo, 0), day + 1)
    rows[src - lo] = b.features[src, inst]
    rows[src[~b.listed[src, inst]] - lo] = np.nan
    frame = pd.DataFrame(rows)
    if fill is not TSFill.NONE:
        frame = frame.ffill()
        if fill is TSFill.FFILL_BFILL:
            frame = frame.bfill()
    return frame.to_numpy(np.float32)


@pytest.mark.parametrize("processed", [False, True], ids=["raw", "filled"])
@pytest.mark.parametrize("fill", list(TSFill))
def test_ts_windows_equal_direct_slices(panel, fill, processed):
    # raw features keep NaN inside listed days (element-wise filling); filled ones only pad around the
    # listing span (whole-day filling); a late-listed instrument is included
    ds = build_dataset(
        panel, _config(learn_processors=()) if processed else _config(infer_processors=(), learn_processors=())
    )
    step_len = 15
    view = ds.ts_view("train", step_len, DataKey.INFER, fill)
    day, inst = ds.rows("train")
    late = int(np.argmax(panel.starts))  # listed after day 0: its first windows start before listing
    pick = np.concatenate(
        [
            [0, 1, len(view) - 1],
            np.nonzero(inst == late)[0][:3],
            np.random.default_rng(0).choice(len(view), 40, replace=False),
        ]
    )
    x, y = view.batch(pick)
    assert x.shape == (len(pick), step_len, len(FEATURES))
    for k, i in enumerate(pick):
        want = _direct_window(ds, day[i], inst[i], step_len, fill)
        np.testing.assert_array_equal(x[k], want)
        assert y[k] == ds.infer.label[day[i], inst[i]] or np.isnan(y[k])
    single, _ = view[int(pick[4])]
    np.testing.assert_array_equal(single, x[4])
    # the late instrument's first row is its listing day: the window's earlier days are padding
    first = x[3]
    if fill is TSFill.FFILL_BFILL:
        np.testing.assert_array_equal(first[:-1], np.broadcast_to(first[-1], first[:-1].shape))  # back-filled
    else:
        assert np.isnan(first[:-1]).all()


def test_ts_view_memory_does_not_scale_with_step_len(dataset):
    sizes = []
    for step_len in (5, 200):
        tracemalloc.start()
        view = dataset.ts_view("train", step_len)
        size, _ = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        sizes.append(size)
        assert np.shares_memory(view.features, dataset.infer.features)  # the store, never a copy
    rows = len(view)
    # the view owns two int32 index arrays (plus the row lookup's temporaries), whatever the window
    assert sizes[1] < 1.5 * sizes[0] + 4096
    assert sizes[1] < 64 * rows  # far below rows * step_len * features * 4 bytes
    assert rows * 200 * len(FEATURES) * 4 > 100 * sizes[1]
    n = 0
    for _, xb, yb in view.iter_batches(1000, shuffle=True, seed=3):
        n += len(yb)
        assert xb.shape[1:] == (200, len(FEATURES))
    assert n == rows


def test_ts_view_rejects_bad_step_len(dataset):
    with pytest.raises(DatasetError, match="step_len must be >= 1"):
        dataset.ts_view("train", 0)


def test_dataset_config_from_yaml_shaped_data(panel):
    from quantcore.dataset import dataset_config

    cfg = dataset_config(
        FEATURES,
        {k: list(v) for k, v in SEGMENTS.items()},
        infer_processors=[
            {"class": "RobustZScoreNorm", "kwargs": {"fields_group": "feature", "clip_outlier": True}},
            {"class": "Fillna", "kwargs": {"fields_group": "feature"}},
        ],
        learn_processors=["DropnaLabel", {"class": "CSRankNorm", "kwargs": {"fields_group": "label"}}],
    )
    assert cfg.infer_processors == (RobustZScoreNorm(FieldGroup.FEATURE), Fillna(FieldGroup.FEATURE))
    assert cfg.learn_processors == (DropnaLabel(), CSRankNorm(FieldGroup.LABEL))
    assert cfg.segments["train"] == ("2010-01-01", "2010-12-31")
    assert dataset_config("alpha158", SEGMENTS).learn_processors == DatasetConfig({}, {}).learn_processors
    assert len(dataset_config("alpha158", SEGMENTS).features) == 158
    with pytest.raises(DatasetError, match="processor #0 must be"):
        dataset_config(FEATURES, SEGMENTS, infer_processors=[{"klass": "Fillna"}])
    with pytest.raises(ProcessorError, match="unknown processor 'Nope'"):
        dataset_config(FEATURES, SEGMENTS, infer_processors=["Nope"])
    ds = build_dataset(panel, cfg)
    assert ds.feature_names == tuple(FEATURES)


def test_days_after_the_last_segment_are_not_processed_and_change_nothing(panel):
    """The dataset stops at its last segment's end; a later segment added to the same config leaves
    every earlier day's processed values, fitted states and rows exactly as they were."""
    procs = dict(
        infer_processors=(ProcessInf(FieldGroup.FEATURE), CSRankNorm(FieldGroup.FEATURE), Fillna(FieldGroup.FEATURE)),
        learn_processors=(DropnaLabel(), CSZScoreNorm(FieldGroup.LABEL)),
    )
    segments = {**SEGMENTS, "test": ("2011-04-01", "2011-05-31")}
    short = build_dataset(panel, _config(segments=segments, **procs))
    longer = build_dataset(panel, _config(segments={**segments, "later": ("2011-06-01", "2011-07-15")}, **procs))
    stop = short.days("test").stop
    assert short.calendar[-1] == pd.Timestamp("2011-05-31") and len(short.calendar) == stop < panel.n_days
    assert short.infer.features.shape[0] == short.learn.label.shape[0] == stop
    for name in ("infer", "learn"):
        a, b = getattr(short, name), getattr(longer, name)
        assert np.array_equal(a.features, b.features[:stop], equal_nan=True)
        assert np.array_equal(a.label, b.label[:stop], equal_nan=True) and np.array_equal(a.rows, b.rows[:stop])
    for seg in segments:
        pd.testing.assert_frame_equal(short.prepare(seg)[0], longer.prepare(seg)[0])
