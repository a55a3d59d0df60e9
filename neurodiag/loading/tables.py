"""Tables: ``.csv``, ``.parquet``/``.pq`` read with pandas.

The target column is the ``target`` option, else the first of ``target``, ``label``, ``y`` that
exists, else none (batches are then ``x`` only). Every other column is a feature and must be
numeric or bool (-> float32). Targets: integer or bool columns -> int64 class ids; text or
categorical columns -> int64 codes of the sorted distinct values; float columns -> float32.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from pandas.api import types as ptypes

from neurodiag.errors import NeurodiagError
from neurodiag.loading.batching import TensorBatches
from neurodiag.loading.datasource import DataOptions, DataSource
from neurodiag.loading.pyfile import describe_exception, list_names, why_not_a_file

DEFAULT_TARGETS = ("target", "label", "y")


def load_table(spec: str, options: DataOptions) -> DataSource:
    """x (and y) from a CSV or Parquet file."""
    frame = _read(spec)
    if frame.empty:
        raise NeurodiagError(f"data file '{spec}' has no rows; check the file")
    target = _target_column(frame, spec, options.target)
    features = [str(c) for c in frame.columns if c != target]
    if not features:
        raise NeurodiagError(f"data file '{spec}' has no feature columns besides the target")
    bad = [c for c in features if not ptypes.is_numeric_dtype(frame[c])]
    if bad:
        raise NeurodiagError(
            f"data file '{spec}': feature columns {list_names(bad, 5)} are not numeric; "
            "encode or drop them"
        )
    x = torch.from_numpy(np.array(frame[features], dtype=np.float32))
    label = f"data file '{spec}'"
    arrays = x if target is None else (x, _target_tensor(frame[target]))
    batches = TensorBatches(arrays, options, label=label)
    target_note = f"target '{target}'" if target is not None else "no target"
    description = (
        f"{spec} ({batches.total} samples, {len(features)} features, {target_note}, "
        f"{options.batching_note()})"
    )
    return DataSource(batches, description, batches.num_samples)


def _read(spec: str) -> pd.DataFrame:
    path = Path(spec).expanduser()
    if not path.is_file():
        raise NeurodiagError(f"data file '{spec}' {why_not_a_file(path)}")
    try:
        if path.suffix.lower() == ".csv":
            return pd.read_csv(path)
        return pd.read_parquet(path)
    except ImportError as exc:
        raise NeurodiagError(
            f"reading '{spec}' needs a Parquet engine ({describe_exception(exc)}); "
            "pip install pyarrow"
        ) from exc
    except pd.errors.EmptyDataError as exc:
        raise NeurodiagError(f"data file '{spec}' is empty; check the file") from exc
    except Exception as exc:
        raise NeurodiagError(
            f"cannot read data file '{spec}' ({describe_exception(exc)}); check the file format"
        ) from exc


def _target_column(frame: pd.DataFrame, spec: str, wanted: str | None) -> str | None:
    columns = [str(c) for c in frame.columns]
    if wanted is not None:
        if wanted not in columns:
            raise NeurodiagError(
                f"target column '{wanted}' not in '{spec}'; columns: {list_names(columns)}"
            )
        return wanted
    return next((name for name in DEFAULT_TARGETS if name in columns), None)


def _target_tensor(column: pd.Series) -> torch.Tensor:
    if column.isna().any():
        raise NeurodiagError(f"target column '{column.name}' has missing values; fill or drop them")
    # np.array copies: pandas may hand out read-only views, which torch warns about.
    if ptypes.is_bool_dtype(column) or ptypes.is_integer_dtype(column):
        return torch.from_numpy(np.array(column, dtype=np.int64))
    if ptypes.is_float_dtype(column):
        return torch.from_numpy(np.array(column, dtype=np.float32))
    codes = pd.Categorical(column.astype(str)).codes
    return torch.from_numpy(np.array(codes, dtype=np.int64))
