"""Offline distillation: the teacher's logits computed once, stored, reused.

:func:`build` runs the frozen teacher once over an *unbatched, ordered*
training split ``(x, y)`` and stores its logits; :func:`attach` pairs every
example with them again, in order, as ``(x, {"teacher_logits": t, "labels":
y})`` for :class:`keras_kd.Distiller`, which then never runs the teacher
(README.md shows the pipeline). Zip the cache in *before* shuffling
(:func:`keras_kd.data.finish`): the shuffled order depends only on the seed,
so training from a full cache equals online distillation without
augmentation (tested to 1e-5). The targets are fixed, the clean images'
logits, so some runs cannot use a cache (:func:`check_usable`).

On-disk format (:data:`FORMAT_VERSION` 2), a folder ``DIR`` holding

    ``meta.json``      what the cache holds and for what (below)
    ``logits.npy``     float32 ``[n, N]``: every logit (``top_k`` None), or
                       float32 ``[n, k]``: the k largest, in descending order
    ``indices.npy``    int32 ``[n, k]``: their class ids (``top_k`` only)
    ``rest_mean.npy``  float32 ``[n]``: the mean of the other N − k logits
                       (``top_k`` only)

Row ``i`` belongs to the ``i``-th example of the dataset. The ``.npy`` files
are plain NumPy arrays, read with ``allow_pickle=False`` (memory-mapped when
large). ``meta.json`` holds the format and its version, n, N, k (or null),
the fingerprints (:func:`teacher_fingerprint`, :func:`dataset_fingerprint`),
each file's sha256 (``files``: checked on every load, so a file changed after
the build, even to valid arrays of the same shape, is refused, never
distilled from), and for people the teacher's name, ``dataset_id``, when and
by which version it was built, how long it took and each array's shape and
dtype. The folder is written atomically (:func:`keras_kd._io.atomic_dir`).
Version 1 (no checksums) is refused: rebuild it.

Top-k (``top_k=k``): per example the k largest logits, their classes and
*one* float, the mean of the other N − k logits, which :func:`reconstruct`
gives every unstored class. Under ``softmax(z / T)`` the stored classes'
relative probabilities are exact at every T; the rest's mass
``Σ_rest exp(z_j / T)`` becomes ``(N − k) · exp(mean / T)``, exact for a flat
rest, else a little low (Jensen). One float keeps the cache independent of T
(a stored log-sum-exp is exact at one T only). The error is the tail's
spread, large for a confident teacher: keep k well above the number of
plausible classes (BUILD_NOTES.md has the cost). Top-k is for many classes
(1000 at k = 50: 404 bytes an example instead of 4,000; 10 classes: store all).
"""

import contextlib
import datetime
import hashlib
import json
import os
import time

import numpy as np
import tensorflow as tf

from keras_kd import _io, teachers
from keras_kd import augment as augment_lib
from keras_kd import features as features_lib
from keras_kd._version import __version__
from keras_kd.distiller import LABELS, TEACHER_LOGITS
from keras_kd.shapes import static_io

__all__ = ["FORMAT_VERSION", "CacheError", "CacheMismatchError", "build", "attach",
           "get_or_build", "read_meta", "teacher_fingerprint", "dataset_fingerprint",
           "check_usable", "check_no_augmentation", "reconstruct", "precheck"]

#: Version of the on-disk format this module writes and reads (2: with each file's sha256).
FORMAT_VERSION = 2
_FORMAT = "keras_kd.teacher_cache"
META = "meta.json"
LOGITS_FILE, INDICES_FILE, REST_FILE = "logits.npy", "indices.npy", "rest_mean.npy"

# Arrays up to this many bytes are placed in the tf.data graph as constants;
# larger ones are streamed from a memory map (a graph constant is limited to 2 GB).
_IN_GRAPH_BYTES = 256 * 1024 * 1024
_STREAM_ROWS = 4096

_REBUILD = ("Fix: delete the folder and build it again (keras_kd.cache.build or "
            "get_or_build), or point --teacher_cache at a new folder.")


class CacheError(ValueError):
    """A teacher cache that cannot be used: missing, corrupt, or for other data."""


class CacheMismatchError(CacheError):
    """A valid cache built for another teacher, dataset or ``top_k``."""


def check_usable(*, directory=True, top_k=None, augment="none", multi_worker=False,
                 features=None, teacher_dtype="float32"):
    """Raises ValueError for a run that cannot use a teacher cache: the one home
    of these rules, whose messages name the command-line flags and the reasons.

    ``directory`` is the folder or whether one is given (without one, only a
    ``top_k`` is refused). ``top_k`` must be None or ≥ 1 (:func:`precheck`
    checks it against the classes); the others must be off (their defaults).
    """
    if top_k is not None and not directory:
        raise ValueError(f"--teacher_cache_top_k={top_k} needs --teacher_cache=DIR (the folder "
                         "that stores the teacher's logits). Fix: pass both, or neither.")
    if not directory:
        return
    _check_top_k(top_k, name="--teacher_cache_top_k")
    check_no_augmentation(augment)
    if multi_worker:
        raise ValueError(
            "--teacher_cache cannot be used with --strategy=multi_worker: every worker would "
            "build or check the cache at once, and only one may write it. Fix: drop "
            "--teacher_cache (online distillation) for multi-worker training, or train on "
            "one machine (any other --strategy) with the cache.")
    if features_lib.normalize(features):
        raise ValueError(
            "--features needs the teacher's feature maps, which the teacher cache does not "
            "store. Fix: drop --teacher_cache (online distillation) or --features.")
    if teacher_dtype != "float32":
        raise ValueError(
            f"--teacher_dtype={teacher_dtype} has no effect with --teacher_cache: the cache "
            "stores the teacher's logits, computed once. Fix: drop --teacher_dtype (the "
            "cache already removes the teacher's cost per step).")


def check_no_augmentation(policy_spec, flag="--augment"):
    """Raises ValueError unless ``policy_spec`` is no augmentation (None/"none")."""
    if augment_lib.parse(policy_spec):
        raise ValueError(
            f"{flag}={policy_spec!r} cannot be used with a teacher cache: the cache holds the "
            "teacher's logits for the clean training images, computed once, while "
            "augmentation shows the student a new view every epoch. Fixed targets of clean "
            "images on augmented views are inconsistent and the student overfits to them "
            "(Beyer et al. 2022: the teacher must see the same augmented view as the "
            "student). Fix: pass --augment=none (augment=\"none\") to train from the cache, "
            "or drop --teacher_cache for online distillation with augmentation.")


def teacher_fingerprint(model):
    """sha256 (hex) of a model's weights: what its logits are a function of.

    Hashes every variable of ``model.weights`` in order (batch-norm statistics
    too): its name within its layer (``kernel``, not the auto-numbered layer
    path, so the model reloaded in another session matches), shape, dtype and
    bytes. The architecture counts only through the weights' shapes and order.
    """
    h = hashlib.sha256(b"keras_kd.teacher.v1\n")
    for v in model.weights:
        value = np.ascontiguousarray(np.asarray(v.numpy()))
        h.update(json.dumps([str(getattr(v, "name", "")), list(value.shape),
                             value.dtype.str]).encode())
        h.update(value.tobytes())
    return h.hexdigest()


def _check_pairs(dataset, teacher=None):
    """Checks ``dataset`` yields unbatched ``(x, y)`` pairs; raises ValueError."""
    if not isinstance(dataset, tf.data.Dataset):
        raise ValueError(
            f"the dataset must be a tf.data.Dataset of (x, y) examples, got "
            f"{type(dataset).__name__}. Fix: e.g. keras_kd.data.load_unbatched(...)[0]"
            " or tf.data.Dataset.from_tensor_slices((x, y)).")
    spec = dataset.element_spec
    if not isinstance(spec, tuple) or len(spec) != 2:
        raise ValueError(
            f"the dataset must yield (x, y) pairs: the cache stores the teacher's "
            "logits and pairs them with the labels again, but its elements are "
            f"{spec}. Fix: pass an (images, labels) dataset, e.g. "
            "keras_kd.data.load_unbatched(...)[0] (no sample weights).")
    x_spec = tf.nest.flatten(spec[0])[0]
    inputs = getattr(teacher, "inputs", None)
    if inputs and len(inputs) == 1 and x_spec.shape.rank == len(inputs[0].shape):
        raise ValueError(
            f"the dataset looks batched: its x has shape {tuple(x_spec.shape)}, "
            f"the teacher takes {tuple(inputs[0].shape[1:])} per example. "
            "The cache stores one row per example in the dataset's order. "
            "Fix: pass the unbatched, unshuffled split (keras_kd.data."
            "load_unbatched), or call .unbatch() on it; shuffle and batch "
            "after attach (keras_kd.data.finish).")


def _scan(dataset, batch_size, on_batch=None):
    """One ordered pass: ``(fingerprint, n)``; ``on_batch(batch)`` per batch."""
    hashers = [hashlib.sha256() for _ in tf.nest.flatten(dataset.element_spec)]
    shapes, n = None, 0
    try:
        for batch in dataset.batch(batch_size):
            arrays = [np.ascontiguousarray(t.numpy()) for t in tf.nest.flatten(batch)]
            if any(a.dtype == object for a in arrays):
                raise ValueError("the dataset holds strings; the cache needs numeric (x, y) "
                                 "examples. Fix: decode the images first.")
            got = [[a.dtype.str, list(a.shape[1:])] for a in arrays]
            if shapes is None:
                shapes = got
            elif got != shapes:
                raise ValueError(f"the dataset's examples differ in shape ({shapes} then "
                                 f"{got}). Fix: resize the images to one size (image_size=).")
            for h, a in zip(hashers, arrays):
                h.update(a.tobytes())
            n += len(arrays[0])
            if on_batch is not None:
                on_batch(batch)
    except tf.errors.InvalidArgumentError as err:
        raise ValueError(
            "the dataset's examples cannot be stacked (they differ in shape: "
            f"{str(err).splitlines()[0][:200]}). Fix: resize the images to one "
            "size (image_size=).") from err
    header = json.dumps({"num_examples": n, "components": shapes}).encode()
    final = hashlib.sha256(b"keras_kd.dataset.v1\n" + header)
    for h in hashers:
        final.update(h.digest())
    return final.hexdigest(), n


def dataset_fingerprint(dataset, batch_size=256):
    """sha256 (hex) of a dataset's examples, in order: one pass, no model.

    Covers every component's bytes (x then y), the number of examples and each
    one's dtype and per-example shape: any changed, added, removed or reordered
    example changes it. Elements must stack; ``batch_size`` changes nothing.
    """
    return _scan(dataset, batch_size)[0]


def _check_dir_path(directory):
    directory = os.fspath(directory)
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise CacheError(
            f"the teacher cache {directory!r} is a file, not a folder. Fix: pass "
            "a folder path (it is created), or move the file away.")
    return directory


def _is_empty(directory):
    return not os.path.exists(directory) or (os.path.isdir(directory)
                                              and not os.listdir(directory))


def _logits_view(teacher):
    """``(float32 logits view, N)``; N None when not known statically."""
    view, _ = teachers.logits_view(teacher, dtype="float32")
    return view, static_io(view)[1]


def _check_top_k(top_k, num_classes=None, name="top_k"):
    """``top_k`` as an int or None; ValueError unless in [1, N − 1] (N if known)."""
    if top_k is None:
        return None
    if (isinstance(top_k, (int, np.integer)) and not isinstance(top_k, bool)
            and top_k >= 1 and not (num_classes and top_k >= num_classes)):
        return int(top_k)
    valid = (f"in [1, {num_classes - 1}] for this {num_classes}-class teacher"
             if num_classes else "≥ 1 (below the number of classes)")
    raise ValueError(f"{name} must be an integer {valid}; leave it unset (None) to "
                     f"store every logit. Got {top_k!r}.")


def _check_same_top_k(meta, top_k, directory):
    if meta["top_k"] == top_k:
        return

    def text(k):
        return "all logits (top_k None)" if k is None else f"top_k={k}"

    raise CacheMismatchError(
        f"the teacher cache {directory!r} holds {text(meta['top_k'])}, but "
        f"{text(top_k)} was asked for: top_k changed. Fix: pass "
        f"top_k={meta['top_k']} (--teacher_cache_top_k) to reuse it, or delete "
        "the folder (or choose a new one) to build it again.")


def precheck(directory, top_k=None, num_classes=None):
    """Fails early, before any teacher runs, on what :func:`get_or_build` would
    refuse anyway: ``directory`` a file, ``top_k`` outside ``[1, N − 1]``, a
    non-empty ``directory`` that holds no cache or one of another ``top_k``."""
    directory = _check_dir_path(directory)
    _check_top_k(top_k, num_classes)
    if not _is_empty(directory):
        _check_same_top_k(read_meta(directory), top_k, directory)


def build(teacher, dataset, directory, *, top_k=None, batch_size=256,
          dataset_id=None, teacher_id=None, log=print):
    """Runs ``teacher`` once over ``dataset`` and writes the cache to ``directory``.

    ``teacher``'s logits (:func:`keras_kd.teachers.logits_view`) are computed
    with ``training=False``, in float32, ``batch_size`` examples a call, over
    the unbatched, ordered ``(x, y)`` ``dataset``, into an absent or empty
    ``directory``. ``top_k``: None stores all N logits, k in [1, N − 1] the
    top k. ``dataset_id``: free text naming the data, stored, not checked.
    ``teacher_id``: the teacher's settings that are not weights (e.g. its
    preprocessing, an ensemble's weights and T), stored and checked on load.
    ``log``: ``print``-like, for one summary line (None: silent).

    Returns the ``meta.json`` dict. Raises CacheError (``directory`` a file or
    a non-empty folder), ValueError (a bad ``top_k`` or dataset, non-finite
    teacher logits) or OSError (the folder cannot be written).
    """
    started = time.perf_counter()
    directory = _check_dir_path(directory)
    if not _is_empty(directory):
        raise CacheError(
            f"the teacher cache {directory!r} already exists and is not empty; "
            "build never overwrites it. Fix: use keras_kd.cache.get_or_build or "
            "attach to reuse it, or delete the folder (or choose a new one) to "
            "build again.")
    _io.ensure_dir(os.path.dirname(os.path.abspath(directory)),
                   f"the folder of the teacher cache {directory!r}")
    _check_pairs(dataset, teacher)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}.")
    view, num_classes = _logits_view(teacher)
    top_k = _check_top_k(top_k, num_classes)

    forward = tf.function(lambda x: tf.cast(view(x, training=False), tf.float32),
                          reduce_retracing=True)
    seen = [0]
    with _io.atomic_dir(directory) as tmp, contextlib.ExitStack() as files:
        # Each batch's rows are appended to raw files as they come, so the
        # memory held is one batch, whatever the dataset's size.
        raw = {}

        def write(name, array):
            if name not in raw:
                handle = files.enter_context(open(os.path.join(tmp, name), "wb"))
                handle.write(_npy_header(array.dtype, (0, *array.shape[1:])))
                raw[name] = [handle, array.dtype, array.shape[1:]]
            np.ascontiguousarray(array).tofile(raw[name][0])

        def on_batch(batch):
            nonlocal num_classes, top_k
            logits = forward(batch[0])
            if num_classes is None:  # a model without static outputs
                num_classes = int(logits.shape[-1])
                top_k = _check_top_k(top_k, num_classes)
            full = logits.numpy()
            bad = ~np.isfinite(full).all(axis=-1)
            if bad.any():
                raise ValueError(
                    f"the teacher's logits are NaN or infinite for example "
                    f"{seen[0] + int(np.argmax(bad))}; nothing was written. Fix: "
                    "check the teacher (a diverged training?) and the data.")
            seen[0] += len(full)
            if top_k is None:
                write(LOGITS_FILE, full)
                return
            values, indices = tf.math.top_k(logits, k=top_k)
            values = values.numpy()
            rest = (full.sum(axis=-1, dtype=np.float64)
                    - values.sum(axis=-1, dtype=np.float64)) / (num_classes - top_k)
            write(LOGITS_FILE, values)
            write(INDICES_FILE, indices.numpy().astype(np.int32))
            write(REST_FILE, rest.astype(np.float32))

        fingerprint, n = _scan(dataset, batch_size, on_batch)
        if n == 0:
            raise ValueError("the dataset is empty: there is nothing to cache.")
        shapes = {}
        for name, (handle, dtype, row_shape) in raw.items():
            shapes[name] = (int(n), *row_shape)
            _finish_npy(handle, dtype, shapes[name])
            handle.close()
        meta = {
            "format": _FORMAT, "format_version": FORMAT_VERSION,
            "num_examples": int(n), "num_classes": int(num_classes), "top_k": top_k,
            "teacher_fingerprint": teacher_fingerprint(teacher),
            "dataset_fingerprint": fingerprint,
            "teacher_name": teacher.name, "dataset_id": dataset_id, "teacher_id": teacher_id,
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "keras_kd_version": __version__,
            "build_seconds": round(time.perf_counter() - started, 3),
            "files": {name: {"shape": list(shapes[name]), "dtype": raw[name][1].str,
                             "sha256": _io.sha256_file(os.path.join(tmp, name))}
                      for name in raw},
        }
        _io.write_json(os.path.join(tmp, META), meta)
    if log:
        stored = "all" if top_k is None else f"top-{top_k} of"
        log(f"teacher cache: built {directory} ({n} examples, {stored} {num_classes} "
            f"logits, {meta['build_seconds']:.1f}s)")
    return meta


# Bytes of the .npy header build writes: fixed (and 64-byte aligned, as np.save
# aligns), so the real shape can be written over the placeholder at the end.
_NPY_HEADER_BYTES = 256


def _npy_header(dtype, shape):
    """A ``.npy`` version 1.0 header of exactly :data:`_NPY_HEADER_BYTES` bytes."""
    descr = np.lib.format.dtype_to_descr(np.dtype(dtype))
    dims = tuple(int(d) for d in shape)
    text = f"{{'descr': {descr!r}, 'fortran_order': False, 'shape': {dims!r}, }}"
    length = _NPY_HEADER_BYTES - 10  # magic (6) + version (2) + length (2)
    if len(text) >= length:  # shapes of ~200 digits
        raise ValueError(f"array shape {shape} too large for the cache header")
    return (b"\x93NUMPY\x01\x00" + length.to_bytes(2, "little")
            + (text.ljust(length - 1) + "\n").encode("latin1"))


def _finish_npy(handle, dtype, shape):
    """Writes the real header (``shape``) over the placeholder of ``handle``,
    whose rows were appended as they came: each file is written once."""
    handle.seek(0)
    handle.write(_npy_header(dtype, shape))
    handle.seek(0, os.SEEK_END)


def read_meta(directory):
    """The ``meta.json`` dict of the cache in ``directory``; CacheError (with the
    fix) for no cache there, a missing or corrupt ``meta.json`` or another format."""
    directory = _check_dir_path(directory)
    path = os.path.join(directory, META)
    if not os.path.isdir(directory):
        raise CacheError(
            f"there is no teacher cache in {directory!r} (no such folder). Fix: "
            "build one with keras_kd.cache.build or get_or_build.")
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except FileNotFoundError as err:
        raise CacheError(f"{directory!r} is not a teacher cache: it has no {META}. "
                         f"{_REBUILD}") from err
    except (OSError, ValueError) as err:
        raise CacheError(f"the teacher cache {directory!r} has an unreadable {META} "
                         f"({err}). {_REBUILD}") from err
    required = ("format", "format_version", "num_examples", "num_classes", "top_k",
                "teacher_fingerprint", "dataset_fingerprint")
    missing = [k for k in required if k not in (meta if isinstance(meta, dict) else {})]
    if missing or meta["format"] != _FORMAT:
        raise CacheError(f"{path!r} does not describe a keras_kd teacher cache (missing "
                         f"{missing}). {_REBUILD}")
    if meta["format_version"] != FORMAT_VERSION:
        raise CacheError(
            f"the teacher cache {directory!r} has format version "
            f"{meta['format_version']}; this keras_kd reads version {FORMAT_VERSION}. "
            f"{_REBUILD}")
    return meta


def _expected_files(meta):
    n, classes, k = meta["num_examples"], meta["num_classes"], meta["top_k"]
    if k is None:
        return {LOGITS_FILE: ((n, classes), np.float32)}
    return {LOGITS_FILE: ((n, k), np.float32), INDICES_FILE: ((n, k), np.int32),
            REST_FILE: ((n,), np.float32)}


def _check_sha256(directory, meta, name):
    """Raises CacheError unless the file ``name`` has the sha256 that ``meta.json`` records."""
    path = os.path.join(directory, name)
    files = meta.get("files")
    entry = files.get(name) if isinstance(files, dict) else None
    recorded = entry.get("sha256") if isinstance(entry, dict) else None
    try:
        _io.check_sha256(path, recorded)
    except _io.ChecksumError as err:
        if err.reason == "unrecorded":
            message = (f"the teacher cache {directory!r} records no sha256 of {name} in "
                       f"{META}, so {path!r} cannot be checked")
        elif err.reason == "missing":
            message = f"the teacher cache {directory!r} is incomplete: {name} is missing"
        elif err.reason == "unreadable":
            message = (f"the teacher cache {directory!r} is corrupt: {name} cannot be read "
                       f"({err.__cause__})")
        else:
            message = (f"the teacher cache {directory!r} is corrupt: {name} changed after the "
                       f"cache was built (its sha256 is {_fp_short(err.found)}, {META} records "
                       f"{_fp_short(recorded)}), so its soft targets are not the teacher's")
        raise CacheError(f"{message}. {_REBUILD}") from err


def _read_arrays(directory, meta, verify=True):
    """The cache's arrays, checked against meta (memory-mapped if large); ``verify``:
    each file's sha256 too (False only for a cache this process has just written)."""
    arrays = []
    for name, (shape, dtype) in _expected_files(meta).items():
        path = os.path.join(directory, name)
        if verify:
            _check_sha256(directory, meta, name)
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except FileNotFoundError as err:
            raise CacheError(f"the teacher cache {directory!r} is incomplete: {name} is "
                             f"missing. {_REBUILD}") from err
        except (OSError, ValueError, EOFError) as err:
            raise CacheError(f"the teacher cache {directory!r} is corrupt: {name} cannot "
                             f"be read ({str(err)[:200]}). {_REBUILD}") from err
        if tuple(array.shape) != tuple(shape) or array.dtype != np.dtype(dtype):
            raise CacheError(
                f"the teacher cache {directory!r} is corrupt: {name} holds "
                f"{array.dtype}{list(array.shape)}, {META} says "
                f"{np.dtype(dtype)}{list(shape)}. {_REBUILD}")
        arrays.append(array)
    return arrays


def reconstruct(values, indices, rest_mean, num_classes):
    """Full ``[..., num_classes]`` logits from a top-k row (tf, float32).

    ``out[c] = values[j]`` where ``indices[j] == c``, else ``rest_mean``.
    """
    values = tf.convert_to_tensor(values, tf.float32)
    indices = tf.cast(indices, tf.int32)
    rest = tf.convert_to_tensor(rest_mean, tf.float32)
    full = tf.broadcast_to(rest[..., None], tf.concat(
        [tf.shape(rest), [num_classes]], axis=0))
    # A mask (rather than a scatter) works for any batch rank.
    hit = tf.one_hot(indices, num_classes, dtype=tf.float32)  # [..., k, N]
    placed = tf.reduce_sum(hit * values[..., None], axis=-2)
    return tf.where(tf.reduce_sum(hit, axis=-2) > 0, placed, full)


def _rows(arrays):
    """A dataset of the cache's rows, in order."""
    if sum(a.nbytes for a in arrays) <= _IN_GRAPH_BYTES:
        return tf.data.Dataset.from_tensor_slices(tuple(np.array(a) for a in arrays))
    n = len(arrays[0])

    def chunks():
        for start in range(0, n, _STREAM_ROWS):
            yield tuple(np.array(a[start:start + _STREAM_ROWS]) for a in arrays)

    signature = tuple(tf.TensorSpec((None,) + a.shape[1:], tf.as_dtype(a.dtype))
                      for a in arrays)
    return tf.data.Dataset.from_generator(chunks, output_signature=signature).unbatch()


def _attach_checked(dataset, directory, meta, verify=True):
    """Zips the cache's rows into ``dataset`` (already checked against meta); ``verify``:
    check the files' sha256 (False only for a cache this process has just written)."""
    classes, top_k = meta["num_classes"], meta["top_k"]
    rows = _rows(_read_arrays(directory, meta, verify))

    def pair(example, row):
        x, y = example
        logits = row[0] if top_k is None else reconstruct(*row, classes)
        return x, {TEACHER_LOGITS: logits, LABELS: y}

    return tf.data.Dataset.zip((dataset, rows)).map(pair, num_parallel_calls=tf.data.AUTOTUNE)


def _fp_short(fingerprint):
    return f"{fingerprint[:12]}…" if fingerprint else "?"


def _verify(meta, teacher, dataset, directory):
    """Raises CacheMismatchError if the cache is not for this teacher and data."""
    made = (f"(built {meta.get('created', '?')} for teacher "
            f"{meta.get('teacher_name')!r} on {meta.get('dataset_id') or 'its dataset'!r})")
    classes = _logits_view(teacher)[1]
    if classes is not None and classes != meta["num_classes"]:
        raise CacheMismatchError(
            f"the teacher cache {directory!r} holds {meta['num_classes']}-class logits, but "
            f"this teacher outputs {classes} classes {made}: it is another teacher's. {_REBUILD}")
    theirs = teacher_fingerprint(teacher)
    if theirs != meta["teacher_fingerprint"]:
        raise CacheMismatchError(
            f"the teacher cache {directory!r} was built for another teacher {made}: its "
            f"teacher fingerprint is {_fp_short(meta['teacher_fingerprint'])}, this teacher "
            f"{teacher.name!r}'s is {_fp_short(theirs)} (its weights differ), so the stored "
            f"soft targets are not this teacher's. {_REBUILD}")
    fingerprint, n = _scan(dataset, 256)
    if n != meta["num_examples"]:
        raise CacheMismatchError(
            f"the teacher cache {directory!r} holds {meta['num_examples']} examples, but the "
            f"dataset has {n} {made}: it was built on another dataset. The dataset must be "
            "the same examples in the same order (the unshuffled, un-augmented training "
            f"split). {_REBUILD}")
    if fingerprint != meta["dataset_fingerprint"]:
        raise CacheMismatchError(
            f"the teacher cache {directory!r} was built on another dataset {made}: same size "
            f"({n} examples) but another dataset fingerprint ({_fp_short(fingerprint)}, the "
            f"cache's {_fp_short(meta['dataset_fingerprint'])}): some examples, labels or "
            "their order differ. The dataset must be the unshuffled, un-augmented training "
            f"split the cache was built on. {_REBUILD}")


def attach(dataset, directory, teacher=None, *, check=True, teacher_id=None):
    """``dataset``'s ``(x, y)`` → ``(x, {"teacher_logits": t, "labels": y})``.

    ``dataset`` is the unbatched, ordered ``(x, y)`` dataset the cache in
    ``directory`` was built on; ``t`` the example's float32 ``[num_classes]``
    logits (top-k rows through :func:`reconstruct`). The result is unbatched
    and in ``dataset``'s order: shuffle and batch it afterwards
    (:func:`keras_kd.data.finish`), never before.

    ``check`` verifies (one pass over ``dataset``, one hash of ``teacher``'s
    weights) that the cache is this teacher's, for these examples;
    ``check=False`` skips the pass (you vouch for it). Each file's sha256 is
    checked against ``meta.json`` either way. Raises CacheMismatchError
    (another teacher or dataset), CacheError (no cache, or a missing, corrupt
    or changed file) or ValueError (a batched or unlabelled dataset).
    """
    directory = _check_dir_path(directory)
    meta = read_meta(directory)
    _check_pairs(dataset, teacher)
    if check:
        if teacher is None:
            raise ValueError(
                "attach(check=True) needs the teacher, to check the cache is "
                "its own. Fix: pass teacher=, or check=False to skip the check.")
        _verify(meta, teacher, dataset, directory)
        _check_teacher_id(meta, teacher_id, directory)
    else:
        count = int(dataset.cardinality().numpy())
        if count >= 0 and count != meta["num_examples"]:
            raise CacheMismatchError(
                f"the teacher cache {directory!r} holds {meta['num_examples']} examples, but "
                f"the dataset has {count}: it was built on another dataset. {_REBUILD}")
    return _attach_checked(dataset, directory, meta)


def _check_teacher_id(meta, teacher_id, directory):
    """The teacher's settings besides its weights (preprocessing, an ensemble's weights
    and T) must be the cache's: the fingerprint covers only the weights."""
    if meta.get("teacher_id") != teacher_id:
        raise CacheMismatchError(
            f"the teacher cache {directory!r} was built with other teacher settings "
            f"({meta.get('teacher_id') or 'defaults'}; now {teacher_id or 'defaults'}), "
            f"so its soft targets are not this run's. {_REBUILD}")


def get_or_build(teacher, dataset, directory, top_k=None, *, batch_size=256,
                 dataset_id=None, teacher_id=None, log=print):
    """The attached dataset, from the cache in ``directory`` or a new one.

    Loads and checks (:func:`attach`) the cache in ``directory``, or builds it
    (:func:`build`) if the folder is absent or empty. A cache there for another
    teacher, dataset or ``top_k`` is an error naming what changed, never
    overwritten or silently reused.

    Returns ``(dataset, report)``: the :func:`attach` ed dataset and
    ``{"dir", "status": "built" | "loaded", "top_k", "num_examples", "seconds"}``.
    """
    started = time.perf_counter()
    directory = _check_dir_path(directory)
    if _is_empty(directory):
        meta = build(teacher, dataset, directory, top_k=top_k, batch_size=batch_size,
                     dataset_id=dataset_id, teacher_id=teacher_id, log=log)
        attached, status = _attach_checked(dataset, directory, meta, verify=False), "built"
    else:
        meta = read_meta(directory)
        _check_same_top_k(meta, top_k, directory)
        _check_teacher_id(meta, teacher_id, directory)
        attached, status = attach(dataset, directory, teacher, teacher_id=teacher_id), "loaded"
        if log:
            log(f"teacher cache: loaded {directory} ({meta['num_examples']} examples, "
                f"built {meta.get('created', '?')})")
    return attached, {"dir": os.path.abspath(directory), "status": status,
                      "top_k": meta["top_k"], "num_examples": meta["num_examples"],
                      "seconds": round(time.perf_counter() - started, 3)}
