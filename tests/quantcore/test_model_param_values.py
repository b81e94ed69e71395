"""Model parameters are checked by value against each family's config (issue 18, item 4): a value of
the wrong type, or a string LightGBM would read as more "key=value" parameters, is refused by name."""

from __future__ import annotations

import math

import pytest

from quantcore.models.errors import ModelConfigError
from quantcore.models.registry import make_model


@pytest.mark.parametrize(
    "params, fragment",
    [
        ({"objective": "regression forcedsplits_filename=/etc/passwd"}, "objective must be a plain word"),
        ({"objective": "regression\tinput_model=/tmp/m.txt"}, "objective must be a plain word"),
        ({"objective": "binary"}, "objective must be one of"),
        ({"num_leaves": "31"}, "num_leaves must be a whole number"),
        ({"max_depth": True}, "max_depth must be a whole number"),
        ({"learning_rate": math.nan}, "learning_rate must be a finite number"),
        ({"learning_rate": "fast"}, "learning_rate must be a finite number"),
        ({"forcedsplits_filename": "/etc/passwd"}, "unknown parameter"),
    ],
)
def test_lightgbm_refuses_bad_values_by_name(params, fragment):
    with pytest.raises(ModelConfigError, match=fragment):
        make_model("lightgbm", **params)


def test_good_values_pass_and_a_float_written_as_text_is_read():
    model = make_model("lightgbm", objective="huber", num_leaves=31, learning_rate="1e-3")
    assert model.config.learning_rate == 0.001 and model.config.objective == "huber"
    assert make_model("mlp", hidden=[64, 32], device="cuda:0").config.device == "cuda:0"
    with pytest.raises(ModelConfigError, match="hidden must be a list of whole numbers"):
        make_model("mlp", hidden=[64, "x"])
    with pytest.raises(ModelConfigError, match="fit_intercept must be true or false"):
        make_model("linear", fit_intercept="yes")
