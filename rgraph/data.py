"""Datasets and batching.

``load(name, path=None)`` returns a ``Dataset`` of float inputs (N, C, H, W) and int64 labels, split
into train and test, normalised per channel with statistics of the training split only:

* "digits": scikit-learn's bundled 8x8 handwritten digits (no download), a fixed seeded split;
* "mnist": the four IDX files (plain or .gz) in ``path``;
* "cifar10": the python batches in ``path`` (or ``path/cifar-10-batches-py``);
* "npz": arrays x_train, y_train, x_test, y_test (or x, y, split with the seed) in the file ``path``:
  inputs (N, features) or images (N, C, H, W), finite numbers; labels (N,) class indices 0..K-1
  (any integer dtype, or floats holding whole numbers).

``path`` is ``--data-path`` in ``rgraph train``; the messages name both.
"""
from __future__ import annotations

import gzip
import os
import pickle
import struct
from dataclasses import dataclass, replace

import numpy as np


class DatasetError(ValueError):
    """A dataset that is missing, truncated or not in the expected format."""


_PATH = "--data-path (path= in Python),"   # how the messages name the path, in both of its spellings


@dataclass
class Dataset:
    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int

    @property
    def input_shape(self):
        return self.x_train.shape[1:]

    def flat(self) -> "Dataset":
        """The same data with inputs reshaped to (N, features), for fully connected networks."""
        return replace(self, x_train=self.x_train.reshape(len(self.x_train), -1),
                       x_test=self.x_test.reshape(len(self.x_test), -1))

    def __repr__(self):
        return (f"<Dataset {self.name}: {len(self.x_train)} train, {len(self.x_test)} test, inputs "
                f"{self.input_shape}, {self.num_classes} classes>")


LOADERS = {}


def loader(name):
    def register(fn):
        LOADERS[name] = fn
        return fn
    return register


def load(name: str, path=None, *, dtype="float64", seed=0, test_fraction=0.2, normalize=True) -> Dataset:
    """Load a dataset by name (see the module docstring)."""
    if name not in LOADERS:
        raise DatasetError(f"unknown dataset {name!r}; known: {sorted(LOADERS)}")
    x_train, y_train, x_test, y_test = LOADERS[name](path, seed=seed, test_fraction=test_fraction)
    if len(x_train) == 0 or len(x_test) == 0:
        raise DatasetError(f"{name}: {len(x_train)} train and {len(x_test)} test samples; both splits need some")
    y_train, y_test = np.asarray(y_train, np.int64), np.asarray(y_test, np.int64)
    num_classes = int(max(y_train.max(), y_test.max())) + 1
    x_train, x_test = x_train.astype(np.float64), x_test.astype(np.float64)
    if normalize:
        axes = (0,) + tuple(range(2, x_train.ndim))
        mean = x_train.mean(axis=axes, keepdims=True)
        std = x_train.std(axis=axes, keepdims=True)
        std[std == 0] = 1.0
        x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    return Dataset(name, x_train.astype(dtype), y_train, x_test.astype(dtype), y_test, num_classes)


def split(x, y, test_fraction, seed):
    """A fixed, seeded train/test split."""
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = int(round(len(x) * test_fraction))
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


@loader("digits")
def _digits(path, *, seed, test_fraction):
    if path is not None:   # most likely a file meant for --data npz: say so rather than train on digits
        raise DatasetError(f"'digits' is bundled with scikit-learn and reads no {_PATH.rstrip(',')}; got {path!r} "
                           f"(for your own arrays use --data npz)")
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DatasetError("the 'digits' dataset needs scikit-learn: pip install 'rgraph[data]'") from None
    bunch = load_digits()
    x = bunch.images.reshape(-1, 1, 8, 8) / 16.0
    return split(x, bunch.target, test_fraction, seed)


def _open(path):
    return gzip.open(path, "rb") if str(path).endswith(".gz") else open(path, "rb")


def _find(directory, stem):
    for candidate in (stem, stem + ".gz"):
        full = os.path.join(directory, candidate)
        if os.path.exists(full):
            return full
    raise DatasetError(f"expected {stem} (or {stem}.gz) in {directory!r}; it is not there")


def read_idx(path, magic, ndim):
    """An IDX file: big-endian magic (2051 images, 2049 labels), dimensions, then unsigned bytes."""
    try:
        with _open(path) as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DatasetError(f"{path}: cannot be read ({e})") from None
    if len(raw) < 4 + 4 * ndim:
        raise DatasetError(f"{path}: truncated header ({len(raw)} bytes)")
    found = struct.unpack(">i", raw[:4])[0]
    if found != magic:
        raise DatasetError(f"{path}: wrong magic number {found}, expected {magic}")
    dims = struct.unpack(f">{ndim}i", raw[4:4 + 4 * ndim])
    body = raw[4 + 4 * ndim:]
    expected = int(np.prod(dims))
    if len(body) != expected:
        raise DatasetError(f"{path}: header says {dims} = {expected} bytes of data, file holds {len(body)}")
    return np.frombuffer(body, np.uint8).reshape(dims)


@loader("mnist")
def _mnist(path, *, seed, test_fraction):
    if path is None or not os.path.isdir(path):
        raise DatasetError(f"'mnist' needs {_PATH} the directory holding the four IDX files; got {path!r}")
    parts = []
    for prefix in ("train", "t10k"):
        images = read_idx(_find(path, f"{prefix}-images-idx3-ubyte"), 2051, 3)
        labels = read_idx(_find(path, f"{prefix}-labels-idx1-ubyte"), 2049, 1)
        if len(images) != len(labels):
            raise DatasetError(f"{path}: {prefix} has {len(images)} images but {len(labels)} labels")
        parts += [images.reshape(-1, 1, 28, 28) / 255.0, labels]
    return tuple(parts)


def _cifar_batch(path):
    try:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
    except FileNotFoundError:
        raise DatasetError(f"expected the CIFAR-10 batch {path!r}; it is not there") from None
    except Exception as e:
        raise DatasetError(f"{path}: not a CIFAR-10 python batch ({type(e).__name__}: {e})") from None
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise DatasetError(f"{path}: a CIFAR-10 batch needs the keys b'data' and b'labels'")
    data, labels = np.asarray(batch[b"data"]), np.asarray(batch[b"labels"])
    if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
        raise DatasetError(f"{path}: data {data.shape} and {len(labels)} labels do not form N x 3072 images")
    return data.reshape(-1, 3, 32, 32) / 255.0, labels


@loader("cifar10")
def _cifar10(path, *, seed, test_fraction):
    if path is None or not os.path.isdir(path):
        raise DatasetError(f"'cifar10' needs {_PATH} the directory of the python batches; got {path!r}")
    nested = os.path.join(path, "cifar-10-batches-py")
    path = nested if os.path.isdir(nested) else path
    train = [_cifar_batch(os.path.join(path, f"data_batch_{i}")) for i in range(1, 6)]
    x_test, y_test = _cifar_batch(os.path.join(path, "test_batch"))
    return np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train]), x_test, y_test


@loader("npz")
def _npz(path, *, seed, test_fraction):
    if path is None or not os.path.isfile(path):
        raise DatasetError(f"'npz' needs {_PATH} an .npz file; got {path!r}")
    try:
        f = np.load(path)
    except (OSError, ValueError) as e:
        raise DatasetError(f"{path}: cannot be read as an .npz file ({e})") from None
    if not hasattr(f, "files"):
        raise DatasetError(f"{path}: holds a single array (.npy), not the named arrays of an .npz (np.savez)")
    with f:
        keys = set(f.files)
        if {"x_train", "y_train", "x_test", "y_test"} <= keys:
            x_train, y_train, x_test, y_test = (_read(f, path, k) for k in ("x_train", "y_train", "x_test", "y_test"))
            check_samples(path, "x_train", "y_train", x_train, y_train)
            check_samples(path, "x_test", "y_test", x_test, y_test)
            if x_train.shape[1:] != x_test.shape[1:]:
                raise DatasetError(f"{path}: x_train samples are {x_train.shape[1:]} but x_test samples are "
                                   f"{x_test.shape[1:]}")
            return x_train, y_train, x_test, y_test
        if {"x", "y"} <= keys:
            x, y = _read(f, path, "x"), _read(f, path, "y")
            check_samples(path, "x", "y", x, y)
            return split(x, y, test_fraction, seed)
    raise DatasetError(f"{path}: needs arrays x_train, y_train, x_test, y_test (or x, y); has {sorted(keys)}")


def _read(f, path, key):
    try:
        return f[key]
    except ValueError as e:   # an object array, refused without allow_pickle
        raise DatasetError(f"{path}: array {key!r} cannot be read ({e}); save numbers, not Python objects") from None


def check_samples(path, x_name, y_name, x, y):
    """Inputs and labels as training needs them, or a DatasetError naming the file and the array: caught when
    loading rather than as a failed bind at the first batch holding the bad sample."""
    if x.dtype.kind not in "biuf":
        raise DatasetError(f"{path}: {x_name} has dtype {x.dtype}; inputs must be numbers")
    if x.ndim not in (2, 4):
        raise DatasetError(f"{path}: {x_name} has shape {x.shape}; expected (N, features) or images (N, C, H, W)"
                           + (" (add a channel axis: x[:, None])" if x.ndim == 3 else ""))
    if y.ndim != 1:
        raise DatasetError(f"{path}: {y_name} has shape {y.shape}; labels are one class index per sample, (N,)")
    if len(x) != len(y):
        raise DatasetError(f"{path}: {x_name} has {len(x)} samples but {y_name} has {len(y)} labels")
    if len(y) == 0:
        raise DatasetError(f"{path}: {x_name} and {y_name} hold no samples")
    bad = np.flatnonzero(~np.isfinite(x.reshape(len(x), -1)).all(axis=1)) if x.dtype.kind == "f" else []
    if len(bad):
        raise DatasetError(f"{path}: {x_name} holds non-finite values (NaN or inf) in {len(bad)} of {len(x)} "
                           f"samples, the first at index {bad[0]}")
    whole = y.dtype.kind in "biu" or (y.dtype.kind == "f" and np.all(np.isfinite(y)) and np.all(y == np.round(y)))
    if not whole or y.min() < 0:
        raise DatasetError(f"{path}: {y_name} must hold class indices 0, 1, ..., K-1 (whole numbers >= 0); "
                           f"it has dtype {y.dtype}" + (f" and holds {y.min()}" if whole else ""))


def num_batches(n, batch_size, drop_last=False):
    return n // batch_size if drop_last else -(-n // batch_size)


def batches(x, y, batch_size, *, shuffle=True, seed=0, epoch=0, drop_last=False, start=0):
    """Mini-batches ``{"x", "y"}`` of one epoch; the order depends only on (seed, epoch), so a run can
    resume at batch ``start`` on the same trajectory."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    order = np.random.default_rng([seed, epoch]).permutation(len(x)) if shuffle else np.arange(len(x))
    for k in range(start, num_batches(len(x), batch_size, drop_last)):
        idx = order[k * batch_size:(k + 1) * batch_size]
        yield {"x": x[idx], "y": y[idx]}
