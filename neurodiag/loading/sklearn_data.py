"""``sklearn:NAME``: scikit-learn's bundled datasets (no download).

Features are standardised per column (zero mean, unit variance; constant columns, such as the
always-blank corner pixels of ``digits``, become 0) so every dataset reaches the first layer at
the scale default initialisations assume; targets are int64 class ids.
"""

from __future__ import annotations

import numpy as np
import torch

from neurodiag.errors import NeurodiagError
from neurodiag.loading.batching import TensorBatches
from neurodiag.loading.datasource import DataOptions, DataSource

SCHEME = "sklearn:"
DATASETS = {
    "digits": "load_digits",
    "iris": "load_iris",
    "wine": "load_wine",
    "breast_cancer": "load_breast_cancer",
}


def load_sklearn(spec: str, options: DataOptions) -> DataSource:
    """Standardised features and class ids of ``sklearn:NAME``."""
    name = spec[len(SCHEME) :].strip()
    if name not in DATASETS:
        raise NeurodiagError(
            f"unknown scikit-learn dataset '{name}'; use one of "
            + ", ".join(f"sklearn:{known}" for known in DATASETS)
        )
    try:
        from sklearn import datasets
    except ImportError as exc:
        raise NeurodiagError(
            "sklearn datasets need scikit-learn; install scikit-learn: "
            "pip install 'neurodiag[sklearn]'"
        ) from exc
    features, targets = getattr(datasets, DATASETS[name])(return_X_y=True)
    x = torch.from_numpy(standardise(np.asarray(features, dtype=np.float64)))
    y = torch.from_numpy(np.asarray(targets, dtype=np.int64))
    batches = TensorBatches((x, y), options, label=f"{SCHEME}{name}")
    description = (
        f"{SCHEME}{name} ({batches.total} samples, {x.shape[1]} standardised features, "
        f"{int(y.max()) + 1} classes, {options.batching_note()})"
    )
    return DataSource(batches, description, batches.num_samples)


def standardise(features: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance per column; constant columns become 0 (float32)."""
    centred = features - features.mean(axis=0)
    scale = features.std(axis=0)
    scale[scale == 0] = 1.0
    return np.asarray(centred / scale, dtype=np.float32)
