"""TFLite (LiteRT) export of a trained classifier, quantized, checked on real data.

:func:`to_tflite` converts a Keras classifier to a ``.tflite`` file, builtin
ops only (unless ``allow_flex``); :func:`verify` runs it with the LiteRT
interpreter (``ai_edge_litert``) on real examples against the Keras model;
:func:`export_verified` (used by the main job and ``keras-kd export``) does
both and moves the files into place only if the check passes. The rules for
their settings, shared with the job's flags, are :func:`check_settings`'s.

Quantization modes (``w`` a float weight, ``q`` its integer code):

- ``"none"``: float32 weights and activations; the reference.
- ``"float16"``: float16 weights (half the size), dequantized to float32 at load.
- ``"dynamic"``: matmul/convolution weights as int8, ``w ≈ s·q``, ``s = max|w| / 127``
  (per output channel for convolutions); float32 activations, quantized on the
  fly for the int8 kernels. About 4× smaller; no calibration data.
- ``"int8"``: full integer. Weights as in ``dynamic``; activations int8,
  ``r = s·(q − z)``, ``(s, z)`` from the ranges seen on ``representative_data``
  (at most :data:`REPRESENTATIVE_LIMIT` real training examples). The input
  and output tensors stay float32 (quantize and dequantize ops) unless
  ``int8_io=True``: the app then feeds ``q = round(x / s) + z`` and reads
  ``r = s·(q − z)``, each ``(s, z)`` in the metadata (for raw 0–255 pixels
  typically ``s = 1, z = −128``, i.e. ``q = pixel − 128``).

What is written for ``path = "student.tflite"``, each file atomically (a
failed conversion or check writes nothing and leaves earlier files untouched):

- ``student.tflite``: one signature (``serving_default``), one input
  ``[1, H, W, C]`` (NHWC) of raw pixel values in ``input_range`` (default
  0–255: keras_kd models normalise inside), float32 (int8 with ``int8_io``);
  one output ``[1, K]``: logits, or probabilities with ``probabilities=True``;
  a metadata entry ``"keras_kd"`` holding the JSON below (:func:`read_metadata`).
- ``student.json`` (:func:`metadata_path`): the same JSON, plus
  ``"verification"`` (:func:`verify`'s figures) from :func:`export_verified`::

      {"format": "keras_kd.tflite/1", "model_file": "student.tflite", "quantization": "int8",
       "input": {"name": "pixels", "shape": [1, 28, 28, 1], "layout": "NHWC",
                 "dtype": "float32", "value_range": [0, 255],
                 "quantization": null},        # or {"scale": s, "zero_point": z}
       "output": {"name": "output_0", "shape": [1, 10], "dtype": "float32",
                  "kind": "logits", "quantization": null},
       "class_names": ["0", ..., "9"], "labels_file": "student.labels.txt",
       "flex_ops": [], "representative_examples": 300,   # int8 calibration
       "source": {"model": "student", "keras_kd": "0.1.0", "tensorflow": "2.21.0"}}

- ``student.labels.txt`` (:func:`labels_path`): class names, one per line, in
  output order (when ``class_names`` is given).

Temporary folders: everything an export writes before its files are in
place (the staging folder of :func:`export_verified`, the SavedModel and
calibration files the converter writes) goes into a hidden folder beside the
output, ``.keras_kd-tmp-<host>-<pid>-<random>``, removed when the export ends,
also by an error or Ctrl-C. A process killed outright (SIGKILL) cannot remove
it: the next export into that folder on the same host removes every such
folder whose process is gone (:func:`keras_kd._io.sweep_stale`).

Console: the converter's and LiteRT's INFO lines are kept off the console
(:func:`keras_kd._console.quiet_tensorflow`); their errors still show.

Why ``TFLiteConverter.from_keras_model``: converting a Keras 3 model's
concrete function (``from_concrete_functions``) produced a file whose outputs
were NaN/inf on TF 2.21 (see BUILD_NOTES.md), which is also why every export
here is followed by a check on real data.
"""

import contextlib
import io
import os
import re
import shutil
import warnings

import keras
import numpy as np
import tensorflow as tf

from keras_kd import _console, _io, data, litert, modelfiles, models, teachers, views
from keras_kd._version import __version__

# the LiteRT side, part of this module's API: running a file, checking it, its metadata
from keras_kd.litert import RuntimeCheckError, read_metadata, verify

__all__ = ["QUANTIZATIONS", "AUTO_ORDER", "AUTO_MIN_AGREEMENT", "REPRESENTATIVE_LIMIT",
           "AgreementError", "RuntimeCheckError", "check_settings", "to_tflite", "verify",
           "export_verified", "read_metadata", "labels_path", "metadata_path", "summary",
           "export_saved_model"]

QUANTIZATIONS = ("none", "float16", "dynamic", "int8")
# quantization="auto" tries these in order, smallest and fastest first (export_verified).
AUTO_ORDER = ("int8", "dynamic", "float16", "none")
AUTO_MIN_AGREEMENT = 0.99
REPRESENTATIVE_LIMIT = 300
FORMAT = "keras_kd.tflite/1"


class AgreementError(ValueError):
    """The exported file agrees with the Keras model less often than required."""


def labels_path(tflite_path):
    """The class-names file written beside ``tflite_path``."""
    return os.path.splitext(tflite_path)[0] + ".labels.txt"


def metadata_path(tflite_path):
    """The JSON description written beside ``tflite_path`` (``x.tflite`` → ``x.json``)."""
    return os.path.splitext(tflite_path)[0] + ".json"


def _check_model(model):
    if not isinstance(model, keras.Model):
        raise ValueError(
            f"to_tflite needs a keras.Model, got {type(model).__name__}. Fix: "
            "load it first with keras.saving.load_model('model.keras').")
    shape = tuple(model.inputs[0].shape[1:]) if getattr(model, "inputs", None) else None
    if shape is None or any(d is None for d in shape):
        raise ValueError(
            f"the model's input shape {shape} is not fully fixed; a phone "
            "runtime needs fixed height, width and channels. Fix: build the "
            "model with keras.Input(shape=(H, W, C)), or wrap it: "
            "inp = keras.Input((H, W, C)); keras.Model(inp, model(inp)).")
    return shape


def _check_path(path):
    """Checks the destination before the (slow) conversion; returns its folder."""
    if not str(path).endswith(".tflite"):
        raise ValueError(f"the export path must end in .tflite, got {path!r}.")
    return _io.ensure_dir(os.path.dirname(os.path.abspath(path)),
                          f"the folder of the export path {str(path)!r}")


def check_settings(quantization, min_agreement=None, int8_io=False, flag="--quantization",
                   *, auto=True):
    """Raises ValueError for export settings that cannot work (the one home of these rules).

    ``quantization`` is a mode of :data:`QUANTIZATIONS`, or ``"auto"`` where ``auto``
    (not for :func:`to_tflite`, which writes the one mode given); ``int8_io`` needs
    ``"int8"``; ``min_agreement`` is None or a fraction in [0, 1]. ``flag`` names the
    quantization setting in the messages: a command-line flag (``"--export_quantization"``:
    the others are then ``--int8_io``, ``--min_agreement``) or an argument (``"quantization"``).
    """
    dashes = "--" if flag.startswith("--") else ""
    valid = ("auto", *QUANTIZATIONS) if auto else QUANTIZATIONS
    if quantization not in valid:
        raise ValueError(
            f"unknown {flag}={quantization!r}; valid: {', '.join(valid)}."
            + ("" if auto else " ('auto', which tries several, is export_verified's.)"))
    if int8_io and quantization != "int8":
        raise ValueError(
            f"{dashes}int8_io needs {flag}=int8, got {quantization!r}: only a fully integer "
            "model has int8 input and output tensors ('auto' may choose a float mode).")
    if min_agreement is not None and not 0.0 <= min_agreement <= 1.0:
        raise ValueError(
            f"{dashes}min_agreement must be a fraction in [0, 1] (e.g. 0.99), got {min_agreement}.")


def _representative_examples(data, input_shape, limit=REPRESENTATIVE_LIMIT):
    """Up to ``limit`` float32 examples ``[n, H, W, C]`` from ``data``: an array
    ``[N, H, W, C]``, an ``(images, labels)`` tuple, or a dataset (any iterable)
    of image batches, of ``(images, labels)`` batches or of single examples."""
    input_shape = tuple(input_shape)
    if isinstance(data, tuple) and data and np.ndim(data[0]) == len(input_shape) + 1:
        data = data[0]  # (images, labels)
    if isinstance(data, (np.ndarray, tf.Tensor)):
        data = [data]
    examples, seen = [], 0
    for element in data:
        images = element[0] if isinstance(element, (tuple, list)) else element
        images = np.asarray(images, dtype=np.float32)
        if images.shape == input_shape:
            images = images[None]
        if images.shape[1:] != input_shape:
            raise ValueError(
                f"representative_data holds examples of shape {images.shape[1:]}, "
                f"but the model takes {input_shape}. Fix: pass training images "
                "of the model's input shape (raw pixels, as the model takes them).")
        examples.append(images[: limit - seen])
        seen += len(examples[-1])
        if seen >= limit:
            break
    if not seen:
        raise ValueError(
            "representative_data is empty. Fix: pass a few hundred real "
            "training examples, e.g. train_ds.take(5) or x_train[:300].")
    return np.concatenate(examples)


def _converter(model, quantization, examples, allow_flex, int8_io):
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    builtins = tf.lite.OpsSet.TFLITE_BUILTINS
    if quantization != "none":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantization == "float16":
        converter.target_spec.supported_types = [tf.float16]
    elif quantization == "int8":
        converter.representative_dataset = lambda: ([x[None]] for x in examples)
        builtins = tf.lite.OpsSet.TFLITE_BUILTINS_INT8
        if int8_io:
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
    ops = [builtins]
    if allow_flex:
        ops.append(tf.lite.OpsSet.SELECT_TF_OPS)
    converter.target_spec.supported_ops = ops
    return converter


def _ops_in_message(message, label):
    """The op names after ``label`` (e.g. ``"TF Select ops:"``) in a converter error."""
    names = []
    for found in re.findall(re.escape(label) + r"\s*([^\n]*)", message):
        names += [n.strip() for n in found.split(",") if n.strip()]
    return sorted(set(names))


def _convert(model, quantization, examples, allow_flex, int8_io):
    """The converted flatbuffer, made quietly, with clear errors for unsupported ops."""
    try:
        # The converter prints its SavedModel and warns about int8 input
        # statistics it does not need (the calibration gives them).
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings(), \
                _console.quiet_tensorflow():
            warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
            return _converter(model, quantization, examples, allow_flex, int8_io).convert()
    except Exception as err:
        message = str(err)
        flex = _ops_in_message(message, "TF Select ops:")
        custom = _ops_in_message(message, "Custom ops:")
        if flex and not allow_flex:
            raise _unsupported(
                "needs TensorFlow ops that LiteRT's builtin kernels do not have", flex, message,
                "Only the Flex delegate runs them: the app must link "
                "tensorflow-lite-select-tf-ops (several MB), and ai-edge-litert's interpreter "
                "cannot check the file. Fix: replace the layers that use them with builtin ones, "
                "or accept Flex ops with allow_flex=True (keras-kd export --allow_flex).") from err
        if custom:
            raise _unsupported(
                "uses ops that neither LiteRT's builtins nor the Flex delegate have", custom,
                message, "Fix: replace the layers that use them with builtin ops.") from err
        raise


def _unsupported(what, ops, message, fix):
    """The error for ``ops``, with their graph locations in the converter's ``message``."""
    places = []
    for op, place in re.findall(r'fused\["(\w+):", "([^"@]+)@', message):
        if op in ops and place not in places:
            places.append(place)
    return ValueError(f"the model {what}: {', '.join(ops)}"
                      + (f" (at {', '.join(places)})" if places else "") + f". {fix}")


def to_tflite(model, path, quantization="none", representative_data=None,
              probabilities=False, allow_flex=False, *, int8_io=False,
              class_names=None, input_range=(0, 255)):
    """Converts ``model`` to a TFLite file at ``path``; returns ``path``.

    The file (builtin LiteRT ops only) is run once in LiteRT before anything
    is written; ``metadata_path(path)`` and ``labels_path(path)`` are written
    beside it (the module docstring has the modes and the format).

    ``model``: a ``keras.Model`` with a fixed input shape that outputs logits
    (one trained under a mixed-precision policy is exported in float32).
    ``representative_data`` (int8 only): real training examples, raw pixels
    as the model takes them, to calibrate the activation ranges: an array
    ``[N, H, W, C]``, or a dataset / iterable of ``(images, labels)`` or image
    batches; the first :data:`REPRESENTATIVE_LIMIT` are used.
    ``probabilities``: a softmax appended (never twice); by default the file
    outputs logits, also for a model that ends in softmax. ``allow_flex``:
    accept TensorFlow ops that LiteRT's builtins lack (Select TF ops, run by
    the Flex delegate); by default they are refused, named. ``int8_io`` (int8
    only): int8 input and output tensors. ``class_names``: written one per
    line to ``labels_path(path)`` and into the metadata. ``input_range``: the
    input values the model expects, recorded in the metadata.

    Raises ValueError (not a Keras model, an input shape that is not fixed, a path
    not ending in ``.tflite``, bad settings, ``int8`` without ``representative_data``,
    ops outside the builtins), RuntimeCheckError (the file does not run in LiteRT)
    or OSError (the folder cannot be created or written).
    """
    input_shape = _check_model(model)
    check_settings(quantization, int8_io=int8_io, flag="quantization", auto=False)
    folder = _check_path(path)
    examples = None
    if quantization == "int8":
        if representative_data is None:
            raise ValueError(
                "quantization='int8' needs representative_data: a few hundred real training "
                "examples (raw pixels, e.g. train_ds.take(5) or x_train[:300]) to calibrate the "
                "int8 activation ranges. Fix: pass representative_data=..., or use "
                "quantization='dynamic' (int8 weights, float activations), which needs none.")
        examples = _representative_examples(representative_data, input_shape)
    source_name = model.name
    # TFLite's builtin kernels take no float16 (a model trained under mixed_float16).
    model = views.with_compute_dtype(model, "float32")
    logits, ends_in_softmax = views.logits_model(model, "model")
    if probabilities:
        outputs = keras.layers.Softmax(name="probabilities")(logits.outputs[0])
        model = keras.Model(views.model_inputs(logits), outputs, name=f"{model.name}_probs")
    elif ends_in_softmax:
        model = logits  # the app gets logits unless it asks for probabilities
    with _io.scratch_tempdir(folder):
        flatbuffer = _convert(model, quantization, examples, allow_flex, int8_io)

    def describe(inp, out, flex_ops):
        return {
            "format": FORMAT,
            "model_file": os.path.basename(path),
            "quantization": quantization,
            "input": {**inp, "layout": "NHWC",
                      "value_range": [float(v) for v in input_range]},
            "output": {**out, "kind": "probabilities" if probabilities else "logits"},
            "class_names": None if class_names is None else [str(c) for c in class_names],
            "labels_file": None if class_names is None else os.path.basename(labels_path(path)),
            "flex_ops": flex_ops,
            "representative_examples": None if examples is None else int(len(examples)),
            "source": {"model": source_name, "keras_kd": __version__,
                       "tensorflow": tf.__version__},
        }

    flatbuffer, metadata = litert.with_metadata(flatbuffer, describe)
    if not metadata["flex_ops"]:  # ai-edge-litert has no Flex delegate
        litert.check_runs(flatbuffer, f"the {quantization} file")  # before anything is written
    # Nothing was written so far; the .tflite goes last, so it always has current sidecars.
    if class_names is not None:
        _io.write_text(labels_path(path), "".join(f"{c}\n" for c in class_names))
    _io.write_json(metadata_path(path), metadata)
    _io.write_bytes(path, flatbuffer)
    return path


def export_verified(model, path, validation_data, *, quantization="auto",
                    representative_data=None, min_agreement=None, probabilities=False,
                    allow_flex=False, int8_io=False, class_names=None,
                    input_range=(0, 255), max_examples=1000, log=None):
    """Exports ``model``, checks the file on real data, then puts it at ``path``.

    Each candidate is written (:func:`to_tflite`) into a hidden staging folder
    beside ``path`` and checked (:func:`verify`) on ``validation_data`` against
    ``model``; only the chosen one is moved to ``path`` (with its sidecars), so
    a file that fails the check never replaces an existing one.

    ``quantization="auto"`` tries :data:`AUTO_ORDER` (int8 only with
    ``representative_data``) and keeps the first mode whose agreement reaches
    ``min_agreement`` (default :data:`AUTO_MIN_AGREEMENT`); an explicit mode
    fails below ``min_agreement`` (None: no bar). ``log``: an optional
    ``print``-like function for progress lines. The others are :func:`to_tflite`'s
    and :func:`verify`'s.

    Returns :func:`verify`'s dict plus ``quantization`` (the mode written)
    and, for ``"auto"``, ``candidates`` (the figures of every mode tried).
    With Flex ops (``allow_flex``) the file cannot be run here: the dict then
    has ``verified: False`` and ``flex_ops``. Raises AgreementError (no
    candidate reached the bar; nothing is written), else as :func:`to_tflite`.
    """
    check_settings(quantization, min_agreement, int8_io, flag="quantization")
    log = log or (lambda *_: None)
    auto = quantization == "auto"
    if auto:
        modes = [m for m in AUTO_ORDER if m != "int8" or representative_data is not None]
        bar = AUTO_MIN_AGREEMENT if min_agreement is None else min_agreement
    else:
        modes, bar = [quantization], min_agreement
    _check_model(model)
    folder = _check_path(path)
    base = os.path.basename(path)
    staging = _io.temp_folder(folder)
    try:
        tried, chosen = [], None
        for mode in modes:
            staged = os.path.join(staging, mode, base)
            try:
                to_tflite(model, staged, mode, representative_data, probabilities, allow_flex,
                          int8_io=int8_io, class_names=class_names, input_range=input_range)
            except RuntimeCheckError as err:
                if not auto or mode == modes[-1]:
                    raise
                tried.append({"quantization": mode, "error": str(err)})
                log(f"export: the {mode} file does not run in LiteRT; trying the next mode")
                continue
            flex_ops = read_metadata(staged)["flex_ops"]
            if flex_ops:
                if auto or bar is not None:
                    raise AgreementError(
                        f"the {mode} file uses Flex ops ({', '.join(flex_ops)}), which "
                        "ai-edge-litert cannot run, so its agreement with Keras cannot be "
                        "measured here. Fix: pass an explicit quantization and no "
                        "min_agreement to export it unchecked.")
                figures = {"quantization": mode, "verified": False, "flex_ops": flex_ops,
                           "size_bytes": os.path.getsize(staged)}
                log(f"export: {base} uses Flex ops {', '.join(flex_ops)}; not verified.")
            else:
                figures = {"quantization": mode, **verify(
                    staged, validation_data, model, probabilities=probabilities,
                    max_examples=max_examples)}
            tried.append(figures)
            if bar is None or figures.get("agreement", 1.0) >= bar:
                chosen = (mode, staged, figures)
                break
            log(f"export: {mode} agrees with Keras on {figures['agreement']:.2%} of "
                f"{figures['examples']} examples (< {bar:.2%})"
                + ("; trying the next mode" if mode != modes[-1] else ""))
        if chosen is None:
            seen = ", ".join(f"{t['quantization']} " + (
                f"{t['agreement']:.2%}" if "agreement" in t else "does not run") for t in tried)
            raise AgreementError(
                f"the exported model agrees with the Keras model on fewer than {bar:.2%} of the "
                f"validation examples ({seen}); nothing was written. Fix: a milder quantization "
                "(float16 or none), a lower min_agreement, or a better trained model.")
        mode, staged, figures = chosen
        if auto:
            figures = {**figures, "candidates": tried}
        meta = {**read_metadata(staged), "verification": {
            k: v for k, v in figures.items() if k != "candidates"}}
        _io.write_json(metadata_path(staged), meta)
        # Each file is replaced atomically; the model file goes last.
        if class_names is not None:
            os.replace(labels_path(staged), labels_path(path))
        os.replace(metadata_path(staged), metadata_path(path))
        os.replace(staged, path)
        return figures
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def summary(path, figures):
    """One line on an exported file: mode, size, agreement, accuracy, latency."""
    head = (f"export: {os.path.basename(path)} ({figures['quantization']}, "
            f"{figures['size_bytes'] / 1024:.1f} KiB)")
    if "agreement" not in figures:
        return head + ": not verified (Flex ops)."
    return (
        f"{head}: agrees with the Keras model on {100 * figures['agreement']:.2f}% of "
        f"{figures['examples']} validation images, accuracy "
        f"{100 * figures['accuracy']:.2f}%, max |Δ| {figures['max_abs_diff']:.3g}, "
        f"{figures['latency_ms_median']:.3f} ms/image "
        f"({figures['num_threads']} thread{'s' if figures['num_threads'] != 1 else ''})"
    )


def export_saved_model(model_path, *, dataset, data_dir=None, image_size=None,
                       output=None, quantization="auto", min_agreement=None,
                       probabilities=False, allow_flex=False, int8_io=False, log=print):
    """``keras-kd export``: a saved Keras classifier → a verified ``.tflite``.

    Loads ``model_path`` (:func:`keras_kd.modelfiles.load_model`: .keras, .h5 or a
    SavedModel folder) and ``dataset`` (:func:`keras_kd.data.load`), then
    :func:`export_verified`: the validation split checks the file, the first
    :data:`REPRESENTATIVE_LIMIT` training images calibrate int8, the class names
    come from the dataset. ``output`` defaults to ``model_path`` with
    ``.tflite``. Returns :func:`verify`'s figures plus ``path``.
    """
    check_settings(quantization, min_agreement, int8_io, flag="--quantization")
    output = output or os.path.splitext(os.path.normpath(model_path))[0] + ".tflite"
    if not output.endswith(".tflite"):
        raise ValueError(f"--output must end in .tflite, got {output!r}.")
    _io.ensure_dir(os.path.dirname(os.path.abspath(output)), f"the folder of --output={output!r}")
    model = modelfiles.load_model(model_path, "--model")
    train, val, info = data.load(dataset, batch_size=64, seed=0, data_dir=data_dir,
                                 image_size=image_size)
    teachers.check_fits(model, info, "model")
    log(f"export: {model_path} ({models.count_params(model):,} params) on {info.name}, "
        f"quantization {quantization}")
    figures = export_verified(
        model, output, val, quantization=quantization, representative_data=train,
        min_agreement=min_agreement, probabilities=probabilities, allow_flex=allow_flex,
        int8_io=int8_io, class_names=info.class_names, log=log)
    log(summary(output, figures))
    log(f"wrote {output}, {metadata_path(output)}, {labels_path(output)}")
    return {**figures, "path": output}
