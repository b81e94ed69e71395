"""Tabular multi-layer perceptron (qlib contrib/model/pytorch_nn.py's Net and MLP benchmark settings)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import nn

from quantcore.dataset import DataKey, Dataset
from quantcore.models import _torch as T
from quantcore.models.base import BaseModel, FitInfo, check_predictions, learn_arrays
from quantcore.models.errors import ModelConfigError

__all__ = ["MLPConfig", "MLPModel"]


@dataclass(frozen=True)
class MLPConfig:
    hidden: tuple[int, ...] = (256,)  # qlib Net's default layers
    dropout: float = 0.05  # qlib Net drops 5% of the input and of the last hidden layer
    lr: float = 2e-3  # qlib MLP Alpha158 benchmark
    weight_decay: float = 2e-4  # qlib MLP Alpha158 benchmark
    batch_size: int = 8192  # qlib MLP Alpha158 benchmark
    # qlib runs 8000 steps; epochs with early stopping end on small data before that matters, and a
    # modest cap keeps a CPU fit to minutes on Alpha158 x 300 instruments x 10 years
    n_epochs: int = 50
    early_stop: int = 10  # epochs without a better valid loss
    seed: int = 0
    device: str | None = None  # None: CUDA if available, else CPU
    # CPU threads; 0: every core this process may use. Small nets on a busy machine run faster on 1
    # (idle OpenMP workers spin while other processes hold the cores)
    num_threads: int = 0


def _net(n_features: int, c: MLPConfig) -> nn.Module:
    layers: list[nn.Module] = [nn.Dropout(c.dropout)]
    width = n_features
    for h in c.hidden:
        layers += [nn.Linear(width, h), nn.BatchNorm1d(h), nn.LeakyReLU(0.1)]
        width = h
    layers += [nn.Dropout(c.dropout), nn.Linear(width, 1), nn.Flatten(0)]  # (B, F) -> (B,)
    net = nn.Sequential(*layers)
    for m in net.modules():
        if isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight, a=0.1, mode="fan_in", nonlinearity="leaky_relu")
    return net


def _rows(x: np.ndarray, batch_size: int, order: np.ndarray | None = None):
    order = np.arange(len(x)) if order is None else order
    for lo in range(0, len(order), batch_size):
        yield x[order[lo : lo + batch_size]]


class MLPModel(BaseModel):
    family = "mlp"
    Config = MLPConfig

    def __init__(self, **params):
        super().__init__(**params)
        c = self.config
        if c.n_epochs < 1 or c.early_stop < 1 or c.batch_size < 2:
            raise ModelConfigError("mlp: n_epochs and early_stop must be >= 1 and batch_size >= 2")

    def _fit(self, dataset: Dataset, info: FitInfo) -> None:
        c = self.config
        device = T.resolve_device(c.device)
        x, y = learn_arrays(dataset, "train")
        xv, yv = learn_arrays(dataset, "valid")
        rng = np.random.default_rng(c.seed)

        def train_batches(epoch):
            order = rng.permutation(len(x))
            # a last batch of one row would break BatchNorm's training statistics
            order = order[: len(order) - (len(order) % c.batch_size == 1)]
            for lo in range(0, len(order), c.batch_size):
                idx = order[lo : lo + c.batch_size]
                yield x[idx], y[idx]

        def valid_batches():
            for lo in range(0, len(xv), c.batch_size):
                yield xv[lo : lo + c.batch_size], yv[lo : lo + c.batch_size]

        with T.torch_session(c.seed, device, c.num_threads):
            net = _net(x.shape[1], c)
            self.net_ = T.train_loop(
                net,
                train_batches,
                valid_batches,
                lr=c.lr,
                weight_decay=c.weight_decay,
                n_epochs=c.n_epochs,
                early_stop=c.early_stop,
                device=device,
                info=info,
            )
            pv = T.predict_batches(self.net_, _rows(xv, c.batch_size), device)
        info.n_train, info.n_valid, info.device = len(y), len(yv), str(device)
        self.n_features_ = x.shape[1]
        check_predictions(self.family, pv, "the valid segment")

    def _predict(self, dataset: Dataset, segment: str):
        c = self.config
        device = next(self.net_.parameters()).device
        x, _ = dataset.prepare(segment, DataKey.INFER)
        with T.torch_session(c.seed, device, c.num_threads):
            return T.predict_batches(self.net_, _rows(x.to_numpy(), c.batch_size), device), x.index

    def _state(self) -> dict:
        return {"n_features": self.n_features_, "net": T.state_to_numpy(self.net_)}

    def _set_state(self, state: dict) -> None:
        self.n_features_ = int(state["n_features"])
        self.net_ = _net(self.n_features_, self.config)
        T.state_from_numpy(self.net_, state["net"])
        self.net_.to(T.resolve_device(self.config.device))
