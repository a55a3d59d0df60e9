#!/usr/bin/env python
"""Rebuild ``mnist_subset.npz`` and ``higgs_sample.npz`` from the raw files (see README.md).

    python sample_models/data/make_data.py RAW_DIR

``RAW_DIR`` holds ``t10k-images-idx3-ubyte.gz`` and ``t10k-labels-idx1-ubyte.gz`` (the original
MNIST test-set files) and LightGBM's ``binary.train`` and ``binary.test`` (HIGGS rows). Both
outputs are deterministic: the MD5 of each raw file is checked first, and the MNIST order is a
permutation drawn with ``numpy.random.default_rng(SEED)``.
"""

from __future__ import annotations

import gzip
import hashlib
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SEED = 0
#: MD5s of the original files (http://yann.lecun.com/exdb/mnist/) and of LightGBM's files at
#: commit bae0b7ba953341a32b2a9c5c5c437a1b976f576f (unchanged since 1c774687, 2016).
MD5 = {
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    "binary.train": "51374b98818ac86a32990cb3da2acbdf",
    "binary.test": "6f6e5f37cc786d6fde206c17517002dc",
}


def checked(raw: Path, name: str) -> bytes:
    data = (raw / name).read_bytes()
    digest = hashlib.md5(data).hexdigest()
    if digest != MD5[name]:
        raise SystemExit(f"{name}: md5 {digest}, expected {MD5[name]}")
    return data


def idx(data: bytes, header: int) -> np.ndarray:
    """The uint8 payload of an (un-gzipped) idx file after its ``header`` bytes."""
    return np.frombuffer(gzip.decompress(data), dtype=np.uint8, offset=header)


def make_mnist(raw: Path) -> None:
    x = idx(checked(raw, "t10k-images-idx3-ubyte.gz"), 16).reshape(-1, 784)
    y = idx(checked(raw, "t10k-labels-idx1-ubyte.gz"), 8).astype(np.int64)
    order = np.random.default_rng(SEED).permutation(len(y))
    np.savez_compressed(HERE / "mnist_subset.npz", x=x[order], y=y[order])
    print("mnist_subset.npz", x.shape, np.bincount(y).tolist())


def make_higgs(raw: Path) -> None:
    parts = []
    for name in ("binary.train", "binary.test"):
        text = checked(raw, name).decode("ascii")
        parts.append(np.loadtxt(text.splitlines(), delimiter="\t", dtype=np.float64))
    table = np.concatenate(parts)
    x = table[:, 1:].astype(np.float32)
    y = table[:, 0].astype(np.int64)
    np.savez_compressed(HERE / "higgs_sample.npz", x=x, y=y)
    print("higgs_sample.npz", x.shape, np.bincount(y).tolist())


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    make_mnist(Path(sys.argv[1]))
    make_higgs(Path(sys.argv[1]))
