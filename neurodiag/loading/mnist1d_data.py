"""``mnist1d:train`` / ``mnist1d:test``: MNIST-1D generated on the spot (no download).

MNIST-1D (Greydanus & Kobak, 2024) is a 40-sample 1-d analogue of MNIST: the ``mnist1d``
package's ``make_dataset`` builds it from ten templates with its default arguments (4000 train
and 1000 test samples, seed 42), so the data are the same everywhere. ``make_dataset`` seeds
Python's and NumPy's global RNGs; both are restored afterwards. Features are standardised per
column as for ``sklearn:`` datasets; targets are int64 class ids.
"""

from __future__ import annotations

import random

import numpy as np
import torch

from neurodiag.errors import NeurodiagError
from neurodiag.loading.batching import TensorBatches
from neurodiag.loading.datasource import DataOptions, DataSource
from neurodiag.loading.sklearn_data import standardise

SCHEME = "mnist1d:"
SPLITS = {"train": ("x", "y"), "test": ("x_test", "y_test")}


def load_mnist1d(spec: str, options: DataOptions) -> DataSource:
    """The ``train`` (default) or ``test`` split of MNIST-1D's default dataset."""
    split = spec[len(SCHEME) :].strip() or "train"
    if split not in SPLITS:
        raise NeurodiagError(f"unknown MNIST-1D split '{split}'; use mnist1d:train or mnist1d:test")
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as exc:
        raise NeurodiagError(
            "mnist1d: data needs the mnist1d package: pip install 'neurodiag[mnist1d]'"
        ) from exc
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        data = make_dataset(get_dataset_args())
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
    x_key, y_key = SPLITS[split]
    x = torch.from_numpy(standardise(np.asarray(data[x_key], dtype=np.float64)))
    y = torch.from_numpy(np.asarray(data[y_key], dtype=np.int64))
    batches = TensorBatches((x, y), options, label=f"{SCHEME}{split}")
    description = (
        f"{SCHEME}{split} ({batches.total} samples, {x.shape[1]} standardised features, "
        f"{int(y.max()) + 1} classes, {options.batching_note()})"
    )
    return DataSource(batches, description, batches.num_samples)
