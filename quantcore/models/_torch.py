"""Shared torch plumbing for the neural families: device choice, a seeded deterministic session, and
one epoch loop with early stopping on the valid loss (qlib's pytorch models' loop, in one place)."""

from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator

import numpy as np
import torch

from quantcore.models.base import FitInfo, available_cores
from quantcore.models.errors import ModelConfigError, ModelFitError

__all__ = ["resolve_device", "torch_session", "train_loop", "predict_batches", "state_to_numpy", "state_from_numpy"]

Batches = Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]]


def resolve_device(name: str | None) -> torch.device:
    """CUDA when present unless `name` says otherwise; asking for CUDA without it is an error."""
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ModelConfigError(f"device {name!r} is not a torch device; use 'cpu', 'cuda', 'cuda:N' or None") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelConfigError(f"device {name!r} requested but CUDA is not available; use device=None or 'cpu'")
    return device


@contextmanager
def torch_session(seed: int, device: torch.device, num_threads: int = 0) -> Iterator[None]:
    """Seed torch without touching the caller's RNG state; on CPU use `num_threads` (0: every allowed
    core) and deterministic kernels. Global torch settings are restored on exit."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    rng_devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=rng_devices):
        torch.manual_seed(seed)
        if device.type == "cpu":
            torch.set_num_threads(num_threads or available_cores())
            # CUDA would also need CUBLAS_WORKSPACE_CONFIG set before start-up; GPU runs are seeded only
            torch.use_deterministic_algorithms(True)
        try:
            yield
        finally:
            torch.set_num_threads(threads)
            torch.use_deterministic_algorithms(deterministic)


def _masked_mse(pred: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    mask = torch.isfinite(label)  # qlib's loss_fn: a NaN label does not count
    return torch.mean((pred[mask] - label[mask]) ** 2)


def _tensor(a: np.ndarray, device: torch.device) -> torch.Tensor:
    # windows or rows may still hold NaN where a feature never had a value; the nets need numbers
    return torch.nan_to_num(torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)), nan=0.0).to(device)


def _eval_loss(net: torch.nn.Module, batches: Iterable, device: torch.device) -> float:
    net.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for x, y in batches:
            yt = torch.from_numpy(np.asarray(y, dtype=np.float32)).to(device)
            mask = torch.isfinite(yt)
            if mask.any():
                pred = net(_tensor(x, device))
                total += float(torch.sum((pred[mask] - yt[mask]) ** 2))
                count += int(mask.sum())
    return total / max(count, 1)


def train_loop(
    net: torch.nn.Module,
    train_batches: Callable[[int], Iterable],
    valid_batches: Batches,
    *,
    lr: float,
    weight_decay: float,
    n_epochs: int,
    early_stop: int,
    device: torch.device,
    info: FitInfo,
    clip_value: float | None = 3.0,
) -> torch.nn.Module:
    """Adam on masked MSE; after each epoch score train and valid; keep the best-valid weights and stop
    after `early_stop` epochs without improvement. Curves and the kept epoch go into `info`."""
    net.to(device)
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay)
    best, best_state, stale = float("inf"), None, 0
    for epoch in range(n_epochs):
        net.train()
        total, count = 0.0, 0
        for x, y in train_batches(epoch):
            yt = torch.from_numpy(np.asarray(y, dtype=np.float32)).to(device)
            loss = _masked_mse(net(_tensor(x, device)), yt)
            opt.zero_grad()
            loss.backward()
            if clip_value is not None:
                torch.nn.utils.clip_grad_value_(net.parameters(), clip_value)  # qlib's GRU/LSTM clip at 3.0
            opt.step()
            total += loss.item() * len(y)
            count += len(y)
        train_loss = total / max(count, 1)
        valid_loss = _eval_loss(net, valid_batches(), device)
        info.train_loss.append(train_loss)
        info.valid_loss.append(valid_loss)
        if not np.isfinite(train_loss):
            raise ModelFitError(f"training loss became {train_loss} at epoch {epoch}; lower lr or normalise inputs")
        if valid_loss < best:
            best, best_state, stale = valid_loss, copy.deepcopy(net.state_dict()), 0
            info.best_iteration, info.best_valid_loss = epoch, valid_loss
        else:
            stale += 1
            if stale >= early_stop:
                info.stopped_early = True
                break
    if best_state is None:
        raise ModelFitError("the valid loss was never finite; check the valid segment's labels")
    net.load_state_dict(best_state)
    return net


def predict_batches(net: torch.nn.Module, batches: Iterable[np.ndarray], device: torch.device) -> np.ndarray:
    net.eval()
    out = []
    with torch.no_grad():
        for x in batches:
            out.append(net(_tensor(x, device)).float().cpu().numpy())
    return np.concatenate(out) if out else np.empty(0, dtype=np.float32)


def state_to_numpy(net: torch.nn.Module) -> dict:
    return {k: v.detach().cpu().numpy() for k, v in net.state_dict().items()}


def state_from_numpy(net: torch.nn.Module, state: dict) -> None:
    net.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in state.items()})
