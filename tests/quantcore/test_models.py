"""Models: each family learns the planted alphas of a synthetic market (positive test rank IC), saves and
loads to identical predictions, refits deterministically on CPU, and refuses bad input clearly."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from quantcore.data.synthetic import planted_alphas, synth_market
from quantcore.dataset import DataKey, DatasetConfig, DropnaLabel, FieldGroup, Fillna, RobustZScoreNorm, build_dataset
from quantcore.models import (
    FAMILIES,
    BaseModel,
    FitInfo,
    Model,
    ModelConfigError,
    ModelFitError,
    ModelInputError,
    load_model,
    make_model,
)
from quantcore.models._torch import resolve_device
from quantcore.models.base import check_predictions

SEGMENTS = {
    "train": ("2010-01-01", "2010-12-31"),
    "valid": ("2011-01-01", "2011-03-31"),
    "test": ("2011-04-01", "2011-07-15"),
}
FEATURES = {a.name: a.expression for a in planted_alphas(0)} | {
    "ret1": "$close/Ref($close, 1) - 1",
    "vol20": "Std($close/Ref($close, 1) - 1, 20)",
}
# small, fast settings: the tests share two busy cores, so torch runs on one thread
PARAMS = {
    "linear": {},
    "lightgbm": {"num_threads": 1},
    "mlp": {"batch_size": 1024, "n_epochs": 6, "early_stop": 3, "num_threads": 1},
    "gru": {"step_len": 8, "hidden_size": 32, "n_epochs": 3, "lr": 1e-3, "num_threads": 1},
}


def _config(**kw) -> DatasetConfig:
    # qlib's Alpha158 benchmark handler: robust z-score + fill on features, rank-normalised label
    base = dict(
        features=FEATURES,
        segments=SEGMENTS,
        infer_processors=(RobustZScoreNorm(FieldGroup.FEATURE), Fillna(FieldGroup.FEATURE)),
    )
    return DatasetConfig(**(base | kw))


@pytest.fixture(scope="module")
def panel():
    return synth_market(60, 400, 0)


@pytest.fixture(scope="module")
def dataset(panel):
    return build_dataset(panel, _config())


@pytest.fixture(scope="module")
def fitted(dataset):
    return {name: make_model(name, **PARAMS[name]).fit(dataset) for name in FAMILIES}


def _rank_ic(score: pd.Series, label: pd.Series) -> float:
    """Mean daily Spearman correlation, by pandas ranks (independent of the models' code)."""
    df = pd.DataFrame({"s": score, "y": label}).dropna()
    return df.groupby(level="datetime").apply(lambda d: d["s"].rank().corr(d["y"].rank())).mean()


@pytest.mark.parametrize("name", list(FAMILIES))
def test_model_learns_the_planted_signal(name, fitted, dataset):
    model = fitted[name]
    score = model.predict(dataset, "test")
    _, label = dataset.prepare("test", DataKey.INFER)  # the raw forward return
    assert isinstance(model, Model)
    assert score.name == "score" and score.index.equals(label.index)
    assert score.index.names == ["datetime", "instrument"]
    assert np.isfinite(score).all()
    ic = _rank_ic(score, label)
    assert ic > 0.02, f"{name}: test rank IC {ic:.4f}"
    info = model.fit_info_
    assert isinstance(info, FitInfo) and info.n_train > 0 and info.n_valid > 0
    assert len(info.train_loss) == len(info.valid_loss) >= 1
    assert 0 <= info.best_iteration < len(info.valid_loss)
    assert info.best_valid_loss == min(info.valid_loss) or name == "lightgbm"


def test_lightgbm_uses_qlib_defaults_and_early_stops(fitted):
    m = fitted["lightgbm"]
    params = m._params()
    assert params["learning_rate"] == 0.2 and params["num_leaves"] == 210 and params["max_depth"] == 8
    assert params["lambda_l1"] == 205.6999 and params["lambda_l2"] == 580.9768
    assert (
        m.config.num_threads == 1 and make_model("lightgbm")._params()["num_threads"] >= 1 and params["verbosity"] == -1
    )
    info = m.fit_info_
    assert info.stopped_early and len(info.valid_loss) == info.best_iteration + 1 + 50


@pytest.mark.parametrize("name", list(FAMILIES))
def test_save_load_round_trip(name, fitted, dataset, tmp_path):
    model = fitted[name]
    path = tmp_path / f"{name}.model"
    model.save(path)
    again = type(model).load(path)
    pd.testing.assert_series_equal(again.predict(dataset, "test"), model.predict(dataset, "test"))
    generic = load_model(path)
    assert type(generic) is type(model) and generic.config == model.config
    assert generic.fit_info_ == model.fit_info_
    other = next(cls for fam, cls in FAMILIES.items() if fam != name)
    with pytest.raises(ModelInputError, match=f"holds a '{name}' model"):
        other.load(path)


@pytest.mark.parametrize("name", ["lightgbm", "mlp", "gru"])
def test_cpu_fits_are_deterministic(name, dataset):
    params = PARAMS[name] | ({"n_epochs": 1, "device": "cpu"} if name in ("mlp", "gru") else {})
    a = make_model(name, **params).fit(dataset).predict(dataset, "valid")
    rng_before = torch.get_rng_state()
    b = make_model(name, **params).fit(dataset).predict(dataset, "valid")
    pd.testing.assert_series_equal(a, b, check_exact=True)
    assert torch.equal(rng_before, torch.get_rng_state())  # the caller's RNG is left alone
    c = make_model(name, **(params | {"seed": 7})).fit(dataset).predict(dataset, "valid")
    assert not np.array_equal(a.to_numpy(), c.to_numpy())


def test_factory_errors_list_the_valid_choices():
    with pytest.raises(ModelConfigError, match="unknown model family 'xgb'; valid: lightgbm, linear, mlp, gru"):
        make_model("xgb")
    with pytest.raises(ModelConfigError, match="unknown parameter\\(s\\) depth; valid: .*max_depth"):
        make_model("lightgbm", depth=3)
    with pytest.raises(ModelConfigError, match="n_epochs"):
        make_model("gru", n_epochs=0)
    with pytest.raises(ModelConfigError, match="alpha must be >= 0"):
        make_model("linear", alpha=-1.0)


def test_predict_refuses_unfitted_models_and_other_features(dataset, panel, fitted, tmp_path):
    with pytest.raises(ModelInputError, match="not fitted"):
        make_model("linear").predict(dataset)
    with pytest.raises(ModelInputError, match="not fitted; nothing to save"):
        make_model("mlp").save(tmp_path / "x")
    other = build_dataset(panel, _config(features={"ret1": FEATURES["ret1"]}))
    with pytest.raises(ModelInputError, match="differ from the 6 features"):
        fitted["linear"].predict(other)
    (tmp_path / "junk").write_bytes(b"\x80\x05N.")  # a pickled None
    with pytest.raises(ModelInputError, match="not a saved quantcore model"):
        BaseModel.load(tmp_path / "junk")


def test_lightgbm_on_a_raw_return_label_is_reported_degenerate(panel):
    """qlib's lambda_l1=205.7 outweighs every split gain on raw daily returns: constant trees."""
    raw = build_dataset(panel, _config(learn_processors=(DropnaLabel(),)))
    with pytest.raises(ModelFitError, match="constant .*normalise the label"):
        make_model("lightgbm", num_threads=1).fit(raw)


def test_degenerate_prediction_checks():
    with pytest.raises(ModelFitError, match="2 of 3 predictions .* NaN/inf"):
        check_predictions("mlp", np.array([np.nan, 1.0, np.inf]), "valid")
    with pytest.raises(ModelFitError, match="constant"):
        check_predictions("mlp", np.zeros(5), "valid")
    check_predictions("mlp", np.array([0.0, 1.0]), "valid")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without CUDA")
def test_asking_for_cuda_without_it_is_an_error(dataset):
    assert resolve_device(None).type == "cpu"
    with pytest.raises(ModelConfigError, match="CUDA is not available"):
        make_model("mlp", device="cuda").fit(dataset)
    with pytest.raises(ModelConfigError, match="not a torch device"):
        resolve_device("tpu0")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["mlp", "gru"])
def test_cuda_path(name, dataset, tmp_path):
    assert resolve_device(None).type == "cuda"  # chosen automatically when present
    model = make_model(name, **PARAMS[name]).fit(dataset)
    assert model.fit_info_.device.startswith("cuda")
    assert next(model.net_.parameters()).is_cuda
    score = model.predict(dataset, "test")
    _, label = dataset.prepare("test", DataKey.INFER)
    assert np.isfinite(score).all() and _rank_ic(score, label) > 0.02
    model.save(tmp_path / "m")
    pd.testing.assert_series_equal(type(model).load(tmp_path / "m").predict(dataset, "test"), score)
    cpu = make_model(name, **(PARAMS[name] | {"device": "cpu"})).fit(dataset).predict(dataset, "test")
    assert np.corrcoef(cpu, score)[0, 1] > 0.9  # same seed, same data: close to the CPU fit


def test_gru_reads_flat_alpha360_rows_as_sequences():
    """qlib's GRU on Alpha360: a row of d_feat x L field-major features is a sequence of L steps."""
    from quantcore.features import alpha360
    from quantcore.models.gru import GRUConfig, _GRUNet

    net = _GRUNet(12, GRUConfig(d_feat=3, hidden_size=4))
    assert net.rnn.input_size == 3
    x = torch.arange(12, dtype=torch.float32).reshape(1, 1, 12)  # fields a, b, c x 4 steps, oldest first
    seen = []
    net.rnn.register_forward_hook(lambda mod, inp, out: seen.append(inp[0]))
    net(x)
    assert seen[0].shape == (1, 4, 3)
    assert seen[0][0, 0].tolist() == [0.0, 4.0, 8.0] and seen[0][0, -1].tolist() == [3.0, 7.0, 11.0]

    panel = synth_market(40, 420, 0)
    ds = build_dataset(panel, _config(features=alpha360(days=5)))
    model = make_model("gru", d_feat=6, hidden_size=8, n_epochs=1, num_threads=1, device="cpu").fit(ds)
    assert np.isfinite(model.predict(ds, "test").to_numpy()).all()
    with pytest.raises(ModelConfigError, match="d_feat"):
        make_model("gru", d_feat=7, n_epochs=1, num_threads=1, device="cpu").fit(ds)


def test_learn_columns_is_learn_arrays_transposed(dataset):
    from quantcore.models.base import learn_arrays, learn_columns

    for segment in ("train", "valid"):
        x, y = learn_arrays(dataset, segment)
        for chunk in (1, 3, 8, 10_000):
            cols, labels = learn_columns(dataset, segment, day_chunk=chunk)
            assert cols.shape == x.T.shape and cols.dtype == np.float32 and cols.flags.c_contiguous
            np.testing.assert_array_equal(cols, x.T)  # NaN features kept, in the same places
            np.testing.assert_array_equal(labels, y)


def test_learning_from_a_segment_without_finite_labels_is_refused(dataset):
    from dataclasses import replace

    from quantcore.models.base import learn_arrays, learn_columns

    label = dataset.learn.label.copy()
    label[dataset.days("valid")] = np.nan  # the train segment keeps its labels
    no_valid = replace(dataset, learn=replace(dataset.learn, label=label))
    for learn in (learn_arrays, learn_columns):
        assert learn(no_valid, "train")[0].size > 0
        with pytest.raises(ModelInputError, match="segment 'valid' has no rows with a finite label"):
            learn(no_valid, "valid")
    with pytest.raises(ModelInputError, match="'valid' has no rows with a finite label"):
        make_model("lightgbm").fit(no_valid)
