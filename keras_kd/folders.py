"""A ``folder:<path>`` dataset: one sub-folder of images per class, checked at load time.

:func:`read` checks the layout (at least two non-empty class folders, image
files Keras reads), the images' sizes and channels (from up to
:data:`MAX_SCANNED_FILES` headers), decodes every image once (a truncated
file is named now, not met mid-training), and splits the files with
``keras.utils.image_dataset_from_directory``. :mod:`keras_kd.data` turns the
result into the package's datasets (``data.load("folder:<path>")``).
"""

import os
import re

import numpy as np
import tensorflow as tf

from keras_kd import errors

__all__ = ["IMAGE_EXTENSIONS", "MAX_SCANNED_FILES", "read"]

#: Image file extensions read from ``folder:`` datasets (those Keras reads).
IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png")

#: How many image headers are read to check sizes and channels of a folder.
MAX_SCANNED_FILES = 300


def _channels_of(pil_image):
    """1 (grayscale), 3 (rgb) or 4 (rgba) for a PIL image's mode."""
    mode = pil_image.mode
    if mode in ("1", "L", "I", "I;16", "I;16B", "I;16L", "F"):
        return 1
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P"
                                                      and "transparency" in pil_image.info):
        return 4
    return 3


def _scan(path, validation_split, image_size):
    """Checks the folder layout, reads up to MAX_SCANNED_FILES headers, and decodes
    every image once (:func:`_check_decodable`).

    Returns ``(class_names, n_images, n_validation, (H, W), channels)``;
    channels is the most any scanned image has (1, 3 or 4).
    """
    fix = ("Fix: arrange the images as <path>/<class_name>/<image> (one sub-folder per "
           f"class, at least 2 classes, files ending in {', '.join(IMAGE_EXTENSIONS)}).")
    if not os.path.exists(path):
        raise ValueError(f"Image folder {path!r} does not exist. {fix}")
    if not os.path.isdir(path):
        raise ValueError(f"{path!r} is a file, not a folder of class sub-folders. {fix}")
    # Same rules as keras: sorted, non-hidden sub-folders; files found by walking.
    classes = [d for d in sorted(os.listdir(path))
               if os.path.isdir(os.path.join(path, d)) and not d.startswith(".")]
    if not classes:
        raise ValueError(f"Image folder {path!r} has no class sub-folders. {fix}")
    files_per_class = {
        cls: [os.path.join(root, f)
              for root, _, files in sorted(os.walk(os.path.join(path, cls)))
              for f in sorted(files) if f.lower().endswith(IMAGE_EXTENSIONS)]
        for cls in classes}
    all_files = [f for cls in classes for f in files_per_class[cls]]
    if not all_files:
        raise ValueError(
            f"Image folder {path!r} has class sub-folders {classes[:10]} but no "
            f"images in them. {fix}")
    empty = [cls for cls in classes if not files_per_class[cls]]
    if empty:
        raise ValueError(
            f"Class sub-folder(s) {empty[:10]} of {path!r} hold no images, so "
            "those classes could never be learned. Fix: add images to them or "
            "remove the empty sub-folders.")
    if len(classes) < 2:
        raise ValueError(
            f"Image folder {path!r} has only one class sub-folder ({classes[0]!r}); "
            f"classification needs at least 2. {fix}")
    n = len(all_files)
    n_val = int(validation_split * n)  # how keras splits
    if n_val < 1 or n - n_val < 1:
        raise ValueError(
            f"validation_split={validation_split} of the {n} images in {path!r} "
            "leaves an empty training or validation split. Fix: add images or "
            "change validation_split.")

    from PIL import Image  # pillow: reads headers without decoding pixels

    sample = all_files
    if n > MAX_SCANNED_FILES:  # evenly spread over the sorted files: every class seen
        idx = np.linspace(0, n - 1, MAX_SCANNED_FILES).round().astype(int)
        sample = [all_files[i] for i in np.unique(idx)]
    first_size, first_file, channels = None, None, 1
    for f in sample:
        try:
            with Image.open(f) as im:
                w, h = im.size
                channels = max(channels, _channels_of(im))
        except Exception as err:
            raise ValueError(f"Cannot read image {f!r} ({err}). "
                             "Fix: remove or replace the file.") from err
        if first_size is None:
            first_size, first_file = (h, w), f
        elif (h, w) != first_size and image_size is None:
            raise ValueError(
                f"Images in {path!r} differ in size: {first_file!r} is "
                f"{first_size[0]}x{first_size[1]} (HxW) but {f!r} is {h}x{w}. "
                "Fix: pass image_size=(H, W) to resize them all (CLI: "
                "--image_size=H,W).")
    _check_decodable(path, all_files)
    size = tuple(image_size) if image_size is not None else first_size
    return classes, n, n_val, size, channels


def _undecodable(files):
    """The ``files`` that ``tf.io.decode_image`` (the loader's decoder) cannot read,
    in order: each file decoded once, in parallel, the pixels thrown away."""
    paths = tf.constant(files)

    def decode(i):
        image = tf.io.decode_image(tf.io.read_file(paths[i]), expand_animations=False)
        return i, tf.shape(image)  # (the shape keeps the decode in the graph)

    ds = tf.data.Dataset.range(len(files)).map(
        decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
    read = set()
    for index, _ in ds.ignore_errors().batch(1024).as_numpy_iterator():
        read.update(index.tolist())
    return [f for i, f in enumerate(files) if i not in read]


def _check_decodable(path, files):
    """ValueError naming the files of a ``folder:`` dataset that cannot be decoded
    (truncated, or not the image their name says), found at load time instead of
    as a nameless error in the middle of training."""
    bad = _undecodable(files)
    if not bad:
        return
    try:
        tf.io.decode_image(tf.io.read_file(bad[0]), expand_animations=False)
        why = "unreadable"
    except (tf.errors.OpError, ValueError) as err:
        why = re.sub(r"\s*\[Op:\w+\].*$", "", errors.short(err, 160))
    shown = ", ".join(repr(f) for f in bad[:5]) + (f" and {len(bad) - 5} more"
                                                    if len(bad) > 5 else "")
    raise ValueError(
        f"{len(bad)} of the {len(files)} images in {path!r} cannot be decoded: {shown} "
        f"({'the first: ' if len(bad) > 1 else ''}{why}). They are truncated or not the "
        "image format their name says; training would stop at the first of them mid-epoch. "
        "Fix: remove or replace these files (e.g. copy them again from their source).")


def _ordered_train(path, keras_train, classes, size, channels):
    """The training files of ``keras_train`` decoded in a fixed order.

    Keras's split dataset shuffles its files again at every pass; this reads
    the same files (``keras_train.file_paths``, in Keras's seeded order) with
    the same decoding (``decode_image`` + bilinear ``tf.image.resize``).
    """
    files = list(keras_train.file_paths)
    index = {c: i for i, c in enumerate(classes)}
    labels = [index[os.path.relpath(f, path).split(os.sep)[0]] for f in files]

    def read(file, label):
        image = tf.image.decode_image(tf.io.read_file(file), channels=channels,
                                      expand_animations=False)
        image = tf.image.resize(image, size, method="bilinear")
        image.set_shape(tuple(size) + (channels,))
        return image, label

    ds = tf.data.Dataset.from_tensor_slices((files, np.asarray(labels, np.int32)))
    return ds.map(read, num_parallel_calls=tf.data.AUTOTUNE)


def read(path, *, validation_split, image_size, ordered, split_seed):
    """The images of ``path`` as unbatched ``(train, val)`` datasets of ``(image, label)``.

    Returns ``(train, val, class_names, n_images, n_validation, (H, W), channels)``.
    The split is ``image_dataset_from_directory``'s, drawn with ``split_seed``
    (the same held-out files whatever the training seed); validation comes
    back in a fixed order, training in Keras's reshuffling order, or with
    ``ordered`` in one fixed order (the cache zips stored logits into it).
    ValueErrors name the problem and the fix.
    """
    import keras

    classes, n, n_val, size, channels = _scan(path, validation_split, image_size)
    # shuffle=True is required for a random (not last-classes-only) split; the
    # split and keras's own path shuffle use split_seed. Validation comes back
    # unshuffled.
    train, val = keras.utils.image_dataset_from_directory(
        path, labels="inferred", label_mode="int", class_names=None,
        color_mode={1: "grayscale", 3: "rgb", 4: "rgba"}[channels], batch_size=None,
        image_size=size, shuffle=True, seed=split_seed, validation_split=validation_split,
        subset="both", interpolation="bilinear", verbose=False)
    found = tuple(train.class_names)
    if found != tuple(classes):  # defensive: our scan must agree with keras
        raise RuntimeError(f"Class folders {found} differ from the scan {classes}.")
    if ordered:
        train = _ordered_train(path, train, classes, size, channels)
    return train, val, classes, n, n_val, size, channels
