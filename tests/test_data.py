"""Datasets: the real MNIST IDX and CIFAR-10 formats written here, corrupt files rejected, batching."""
import gzip
import pickle
import struct

import numpy as np
import pytest

from rgraph import data
from rgraph.data import DatasetError

rng = np.random.default_rng(0)


def _idx(path, array, magic, compress=False):
    header = struct.pack(">i", magic) + struct.pack(f">{array.ndim}i", *array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    with (gzip.open(path, "wb") if compress else open(path, "wb")) as f:
        f.write(raw)


def _mnist_dir(tmp_path, compress=False, n_train=6, n_test=4):
    suffix = ".gz" if compress else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        _idx(tmp_path / f"{prefix}-images-idx3-ubyte{suffix}", rng.integers(0, 256, (n, 28, 28)), 2051, compress)
        _idx(tmp_path / f"{prefix}-labels-idx1-ubyte{suffix}", rng.integers(0, 10, n), 2049, compress)
    return tmp_path


@pytest.mark.parametrize("compress", [False, True])
def test_mnist_idx_files_load(tmp_path, compress):
    ds = data.load("mnist", _mnist_dir(tmp_path, compress), normalize=False)
    assert ds.x_train.shape == (6, 1, 28, 28) and ds.x_test.shape == (4, 1, 28, 28)
    assert ds.x_train.max() <= 1.0 and ds.y_train.dtype == np.int64
    raw = np.frombuffer(open(tmp_path / ("train-images-idx3-ubyte" + (".gz" if compress else "")), "rb").read()
                        if not compress else gzip.open(tmp_path / "train-images-idx3-ubyte.gz").read(), np.uint8)
    np.testing.assert_allclose(ds.x_train.ravel(), raw[16:] / 255.0)


def test_mnist_corrupt_files_are_rejected(tmp_path):
    d = _mnist_dir(tmp_path)
    _idx(d / "train-labels-idx1-ubyte", rng.integers(0, 10, 6), 2051)
    with pytest.raises(DatasetError, match="wrong magic number 2051, expected 2049"):
        data.load("mnist", d)
    _idx(d / "train-labels-idx1-ubyte", rng.integers(0, 10, 5), 2049)
    with pytest.raises(DatasetError, match="6 images but 5 labels"):
        data.load("mnist", d)
    raw = open(d / "t10k-images-idx3-ubyte", "rb").read()
    open(d / "t10k-images-idx3-ubyte", "wb").write(raw[:-7])
    _idx(d / "train-labels-idx1-ubyte", rng.integers(0, 10, 6), 2049)
    with pytest.raises(DatasetError, match="header says .* file holds"):
        data.load("mnist", d)
    open(d / "t10k-images-idx3-ubyte", "wb").write(raw)
    (d / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DatasetError, match="expected t10k-labels-idx1-ubyte"):
        data.load("mnist", d)
    with pytest.raises(DatasetError, match="needs --data-path"):
        data.load("mnist", None)


def _cifar_dir(tmp_path, bad=None):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (3, 3072), dtype=np.uint8), b"labels": list(rng.integers(0, 10, 3))}
        if bad == name:
            batch = {b"data": batch[b"data"][:, :100], b"labels": batch[b"labels"]}
        with open(root / name, "wb") as f:
            pickle.dump(batch, f)
    return tmp_path


def test_cifar10_batches_load(tmp_path):
    ds = data.load("cifar10", _cifar_dir(tmp_path), normalize=True)
    assert ds.x_train.shape == (15, 3, 32, 32) and ds.x_test.shape == (3, 3, 32, 32)
    np.testing.assert_allclose(ds.x_train.mean(axis=(0, 2, 3)), 0, atol=1e-12)   # train statistics only


def test_cifar10_corrupt_batches_are_rejected(tmp_path):
    with pytest.raises(DatasetError, match="do not form N x 3072"):
        data.load("cifar10", _cifar_dir(tmp_path, bad="data_batch_3"))
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(b"not a pickle")
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DatasetError, match="data_batch_3"):
        data.load("cifar10", tmp_path)


def test_npz_and_unknown(tmp_path):
    np.savez(tmp_path / "d.npz", x=rng.standard_normal((10, 3)), y=rng.integers(0, 2, 10))
    ds = data.load("npz", tmp_path / "d.npz", test_fraction=0.3)
    assert len(ds.x_train) == 7 and len(ds.x_test) == 3
    np.savez(tmp_path / "e.npz", a=np.zeros(3))
    with pytest.raises(DatasetError, match="needs arrays"):
        data.load("npz", tmp_path / "e.npz")
    with pytest.raises(DatasetError, match="unknown dataset 'imagenet'; known"):
        data.load("imagenet")


def test_npz_that_training_cannot_use_is_refused_naming_the_file_and_the_array(tmp_path):
    x, y = rng.standard_normal((10, 3)), np.arange(10) % 2
    with_nan = x.copy()
    with_nan[[2, 5], 1] = np.nan
    cases = {
        "nan": (dict(x=with_nan, y=y), "x holds non-finite values (NaN or inf) in 2 of 10 samples, the first at index 2"),
        "short": (dict(x=x, y=y[:9]), "x has 10 samples but y has 9 labels"),
        "nhw": (dict(x=rng.standard_normal((10, 4, 4)), y=y), "add a channel axis"),
        "negative": (dict(x=x, y=y - 1), "class indices 0, 1, ..., K-1"),
        "fraction": (dict(x=x, y=y + 0.5), "class indices"),
        "text": (dict(x=x, y=y.astype(str)), "y must hold class indices"),
        "onehot": (dict(x=x, y=np.eye(2)[y]), "y has shape (10, 2)"),
        "empty": (dict(x=x[:0], y=y[:0]), "hold no samples"),
        "test nan": (dict(x_train=x, y_train=y, x_test=np.full((2, 3), np.inf), y_test=y[:2]),
                     "x_test holds non-finite"),
        "test shape": (dict(x_train=x, y_train=y, x_test=x[:4, :2], y_test=y[:4]), "x_train samples are (3,)"),
    }
    for name, (arrays, message) in cases.items():
        path = tmp_path / f"{name}.npz"
        np.savez(path, **arrays)
        with pytest.raises(DatasetError) as error:
            data.load("npz", path)
        assert str(error.value).startswith(f"{path}: ") and message in str(error.value), name
    np.save(tmp_path / "one.npy", x)
    with pytest.raises(DatasetError, match="single array"):
        data.load("npz", tmp_path / "one.npy")
    (tmp_path / "garbage.npz").write_bytes(b"not a zip file")
    with pytest.raises(DatasetError, match="cannot be read as an .npz"):
        data.load("npz", tmp_path / "garbage.npz")
    with pytest.raises(DatasetError, match="needs --data-path"):
        data.load("npz", None)


def test_npz_accepts_whole_float_labels_and_integer_images(tmp_path):
    images = rng.integers(0, 256, (10, 1, 4, 4), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", x=images, y=(np.arange(10) % 3).astype(np.float32))
    ds = data.load("npz", tmp_path / "d.npz")
    assert ds.input_shape == (1, 4, 4) and ds.num_classes == 3 and ds.y_train.dtype == np.int64


def test_digits_split_is_fixed_and_normalised_with_train_statistics():
    a, b = data.load("digits", seed=3), data.load("digits", seed=3)
    assert a.x_train.shape[1:] == (1, 8, 8) and a.num_classes == 10
    np.testing.assert_array_equal(a.y_test, b.y_test)
    assert abs(a.x_train.mean()) < 1e-12 and abs(a.x_test.mean()) > 1e-6
    assert a.flat().x_train.shape == (len(a.x_train), 64)
    assert not np.array_equal(data.load("digits", seed=4).y_test, a.y_test)


def test_batches_cover_each_sample_once_and_depend_only_on_seed_and_epoch():
    x, y = np.arange(10.0)[:, None], np.arange(10)
    first = [b["y"] for b in data.batches(x, y, 3, seed=1, epoch=0)]
    assert [len(b) for b in first] == [3, 3, 3, 1] and sorted(np.concatenate(first)) == list(range(10))
    again = [b["y"] for b in data.batches(x, y, 3, seed=1, epoch=0)]
    assert all(np.array_equal(p, q) for p, q in zip(first, again))
    other = np.concatenate([b["y"] for b in data.batches(x, y, 3, seed=1, epoch=1)])
    assert not np.array_equal(np.concatenate(first), other)
    resumed = [b["y"] for b in data.batches(x, y, 3, seed=1, epoch=0, start=2)]
    assert all(np.array_equal(p, q) for p, q in zip(first[2:], resumed))
    assert len(list(data.batches(x, y, 3, drop_last=True))) == 3


def test_digits_refuses_a_path_it_would_ignore():
    with pytest.raises(DatasetError, match="'digits' is bundled with scikit-learn and reads no --data-path"):
        data.load("digits", "/tmp/my_data.npz")
