"""The paper's real datasets, MNIST and HIGGS, from small samples vendored in ``data/`` (offline).

Loader functions for neurodiag's ``--data`` (they take no arguments, so each sample size is its
own function), e.g. in ``sample_models/``::

    neurodiag scan plain_mlp.py:build_mnist_model --data paper_data.py:mnist
    neurodiag scan plain_mlp.py:build_higgs_model --data paper_data.py:higgs

``mnist()``: the 10,000 original MNIST test-set digits (784 pixels, 10 classes);
``mnist_2000()``: 200 per class of them, drawn with seed 0. ``higgs()``: LightGBM's 7,500 HIGGS
rows (28 features, 2 classes); ``higgs_train()`` / ``higgs_test()``: its 7,000 / 500 row split.
Each returns a tuple ``(x, y)`` of float32 features and int64 class ids. HIGGS is standardised
per column over the rows returned (zero mean, unit variance), as neurodiag's ``sklearn:`` and
``mnist1d:`` data are; MNIST pixels are scaled to [0, 1] and then standardised with ONE mean and
std over all pixels (MNIST's usual normalisation: per-pixel scaling would blow rare pixels up to
|x| ≈ 100). Provenance and
licences: ``data/README.md``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

DATA = Path(__file__).resolve().parent / "data"
MNIST_FILE = DATA / "mnist_subset.npz"
HIGGS_FILE = DATA / "higgs_sample.npz"
#: rows of ``higgs_sample.npz`` from LightGBM's ``binary.train``; the rest are ``binary.test``
HIGGS_TRAIN_ROWS = 7000
#: the seed of ``mnist_2000``'s class-stratified draw
SEED = 0


def standardise(features: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance per column; constant columns become 0 (float32)."""
    features = np.asarray(features, dtype=np.float64)
    centred = features - features.mean(axis=0)
    scale = features.std(axis=0)
    scale[scale == 0] = 1.0
    return np.asarray(centred / scale, dtype=np.float32)


def _arrays(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return data["x"], data["y"]


def _tensors(x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(standardise(x)), torch.from_numpy(y.astype(np.int64))


def stratified(y: np.ndarray, per_class: int, seed: int = SEED) -> np.ndarray:
    """Sorted row indices of ``per_class`` rows of each class, drawn with ``seed``."""
    rng = np.random.default_rng(seed)
    picks = [
        rng.choice(np.flatnonzero(y == label), size=per_class, replace=False)
        for label in np.unique(y)
    ]
    return np.sort(np.concatenate(picks))


def mnist(per_class: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST digits: all 10,000 (``per_class=None``) or ``per_class`` of each digit."""
    x, y = _arrays(MNIST_FILE)
    if per_class is not None:
        rows = stratified(y, per_class)
        x, y = x[rows], y[rows]
    pixels = x.astype(np.float64) / 255.0
    # One mean and std over all pixels (MNIST's usual normalisation), not per pixel: a pixel that
    # is almost always blank would otherwise reach |x| ≈ 100 and dominate the first layer.
    pixels = (pixels - pixels.mean()) / pixels.std()
    return torch.from_numpy(pixels.astype(np.float32)), torch.from_numpy(y.astype(np.int64))


def mnist_2000() -> tuple[torch.Tensor, torch.Tensor]:
    """2,000 MNIST digits, 200 of each class (seed 0)."""
    return mnist(per_class=200)


def higgs() -> tuple[torch.Tensor, torch.Tensor]:
    """All 7,500 HIGGS rows (LightGBM's train then test rows): signal 1, background 0."""
    return _tensors(*_arrays(HIGGS_FILE))


def higgs_2000() -> tuple[torch.Tensor, torch.Tensor]:
    """2,000 HIGGS rows, 1,000 of each class (seed 0), standardised over those rows."""
    x, y = _arrays(HIGGS_FILE)
    rows = stratified(y, per_class=1000)
    return _tensors(x[rows], y[rows])


def higgs_train() -> tuple[torch.Tensor, torch.Tensor]:
    """The 7,000 HIGGS rows of LightGBM's ``binary.train``."""
    x, y = _arrays(HIGGS_FILE)
    return _tensors(x[:HIGGS_TRAIN_ROWS], y[:HIGGS_TRAIN_ROWS])


def higgs_test() -> tuple[torch.Tensor, torch.Tensor]:
    """The 500 HIGGS rows of LightGBM's ``binary.test``."""
    x, y = _arrays(HIGGS_FILE)
    return _tensors(x[HIGGS_TRAIN_ROWS:], y[HIGGS_TRAIN_ROWS:])
