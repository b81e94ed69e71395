"""GRU over time-series windows (qlib contrib/model/pytorch_gru_ts.py with TSDatasetH)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from quantcore.dataset import DataKey, Dataset, TSFill, TSView
from quantcore.models import _torch as T
from quantcore.models.base import BaseModel, FitInfo, check_predictions
from quantcore.models.errors import ModelConfigError, ModelInputError

__all__ = ["GRUConfig", "GRUModel"]


@dataclass(frozen=True)
class GRUConfig:
    """Defaults: examples/benchmarks/GRU/workflow_config_gru_Alpha158.yaml (TSDatasetH, step_len 20)."""

    step_len: int = 20  # days per window (qlib TSDatasetH step_len in the GRU benchmark)
    # > 0: qlib's GRU on flat rows (pytorch_gru.py): each row's F = d_feat x L features are read as a
    # sequence of L steps of d_feat values, field-major as Alpha360 lays them out (d_feat 6, L 60).
    # The time-series view is then not used (step_len is ignored).
    d_feat: int = 0
    hidden_size: int = 64
    num_layers: int = 2
    dropout: float = 0.0
    lr: float = 2e-4  # the benchmark's lr (the class default is 1e-3)
    batch_size: int = 800  # the benchmark's batch_size
    # qlib allows 200 epochs with early_stop 10. Measured on Alpha158 x 300 instruments x 2 train years
    # (136k windows): ~11 s an epoch on 16 CPU cores, ~2 s on an H100; a 7-year train on 2 cores takes
    # minutes an epoch, so the CPU-friendly cap is modest; raise it on a GPU
    n_epochs: int = 30
    early_stop: int = 10  # the benchmark's early_stop, in epochs of no better valid loss
    seed: int = 0
    device: str | None = None  # None: CUDA if available, else CPU
    # CPU threads; 0: every core this process may use. Small nets on a busy machine run faster on 1
    # (idle OpenMP workers spin while other processes hold the cores)
    num_threads: int = 0


class _GRUNet(nn.Module):
    def __init__(self, n_features: int, c: GRUConfig):
        super().__init__()
        self.d_feat = c.d_feat
        self.rnn = nn.GRU(c.d_feat or n_features, c.hidden_size, c.num_layers, batch_first=True, dropout=c.dropout)
        self.fc_out = nn.Linear(c.hidden_size, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, L, F)
        if self.d_feat:  # (B, 1, d_feat * L) -> (B, d_feat, L) -> (B, L, d_feat), oldest step first
            x = x.reshape(x.shape[0], self.d_feat, -1).permute(0, 2, 1)
        out, _ = self.rnn(x)  # (B, L, H)
        return self.fc_out(out[:, -1, :]).squeeze(-1)  # (B,)


def _windows(view: TSView, batch_size: int, with_label: bool, shuffle: bool = False, seed: int = 0):
    for _, x, y in view.iter_batches(batch_size, shuffle=shuffle, seed=seed):
        yield (x, y) if with_label else x


def _labelled(view: TSView) -> TSView:
    """The view restricted to samples with a finite label."""
    keep = np.isfinite(view.label[view.day, view.inst])
    return TSView(view.features, view.label, view.listed, view.day[keep], view.inst[keep], view.step_len, view.fill)


class GRUModel(BaseModel):
    family = "gru"
    Config = GRUConfig

    def __init__(self, **params):
        super().__init__(**params)
        c = self.config
        if c.n_epochs < 1 or c.early_stop < 1 or c.batch_size < 1 or c.step_len < 1 or c.d_feat < 0:
            raise ModelConfigError("gru: n_epochs, early_stop, batch_size and step_len must be >= 1, d_feat >= 0")

    def _view(self, dataset: Dataset, segment: str, key: DataKey) -> TSView:
        # qlib's GRU fills windows with "ffill+bfill" before the net sees them
        step_len = 1 if self.config.d_feat else self.config.step_len
        return dataset.ts_view(segment, step_len, key, TSFill.FFILL_BFILL)

    def _fit(self, dataset: Dataset, info: FitInfo) -> None:
        c = self.config
        device = T.resolve_device(c.device)
        train = _labelled(self._view(dataset, "train", DataKey.LEARN))
        valid = _labelled(self._view(dataset, "valid", DataKey.LEARN))
        if len(train) == 0 or len(valid) == 0:
            raise ModelInputError("gru: the train and valid segments need rows with a finite label")
        if c.d_feat and train.n_features % c.d_feat:
            raise ModelConfigError(f"gru: d_feat ({c.d_feat}) must divide the number of features ({train.n_features})")
        with T.torch_session(c.seed, device, c.num_threads):
            net = _GRUNet(train.n_features, c)
            self.net_ = T.train_loop(
                net,
                lambda epoch: _windows(train, c.batch_size, True, shuffle=True, seed=c.seed + epoch),
                lambda: _windows(valid, c.batch_size, True),
                lr=c.lr,
                weight_decay=0.0,
                n_epochs=c.n_epochs,
                early_stop=c.early_stop,
                device=device,
                info=info,
            )
            pv = T.predict_batches(self.net_, _windows(valid, c.batch_size, False), device)
        info.n_train, info.n_valid, info.device = len(train), len(valid), str(device)
        self.n_features_ = train.n_features
        check_predictions(self.family, pv, "the valid segment")

    def _predict(self, dataset: Dataset, segment: str):
        c = self.config
        view = self._view(dataset, segment, DataKey.INFER)
        device = next(self.net_.parameters()).device
        with T.torch_session(c.seed, device, c.num_threads):
            scores = T.predict_batches(self.net_, _windows(view, c.batch_size, False), device)
        return scores, dataset.index(segment, DataKey.INFER)

    def _state(self) -> dict:
        return {"n_features": self.n_features_, "net": T.state_to_numpy(self.net_)}

    def _set_state(self, state: dict) -> None:
        self.n_features_ = int(state["n_features"])
        self.net_ = _GRUNet(self.n_features_, self.config)
        T.state_from_numpy(self.net_, state["net"])
        self.net_.to(T.resolve_device(self.config.device))
