"""TFLite (LiteRT) export of a trained student, and a check that it behaves.

``to_tflite`` converts a Keras classifier to a float32 ``.tflite`` file,
written atomically, with a ``<name>.labels.txt`` file beside it (one class
name per line, in logit order). ``verify`` runs the file with the LiteRT
interpreter (``ai_edge_litert``) on real examples and compares it with the
Keras model.

The exported model takes what the Keras model takes: float32 raw pixel values
(0–255) of shape ``[1, H, W, C]`` (the normalisation layer is inside the
model) and returns logits (or probabilities with ``probabilities=True``).

Why ``TFLiteConverter.from_keras_model``: converting a ``tf.function``'s
concrete function of a Keras 3 model (``from_concrete_functions``) produced
a file whose outputs were NaN/inf on TF 2.21 (see BUILD_NOTES.md), which is
why every export here is followed by a check on real data.
"""

import contextlib
import io
import os
import time

import keras
import numpy as np
import tensorflow as tf

from keras_kd import _io
from keras_kd.models import logits_model, model_inputs

__all__ = ["to_tflite", "verify", "labels_path"]


def labels_path(tflite_path):
    """The class-names file written beside ``tflite_path``."""
    root, _ = os.path.splitext(tflite_path)
    return root + ".labels.txt"


def _check_model(model):
    if not isinstance(model, keras.Model):
        raise ValueError(
            f"to_tflite needs a keras.Model, got {type(model).__name__}. Fix: "
            "load it first with keras.saving.load_model('model.keras')."
        )
    shape = tuple(model.inputs[0].shape[1:]) if getattr(model, "inputs", None) else None
    if shape is None or any(d is None for d in shape):
        raise ValueError(
            f"the model's input shape {shape} is not fully fixed; a phone "
            "runtime needs fixed height, width and channels. Fix: build the "
            "model with keras.Input(shape=(H, W, C))."
        )
    return shape


def _float32_copy(model):
    """``model`` itself if it computes in float32, else a float32 clone.

    A model trained under ``mixed_float16`` computes in float16, which the
    builtin TFLite kernels (e.g. ``MatMul``) do not take; its variables are
    float32, so a float32 clone with the same weights exports cleanly.
    """
    if all(layer.dtype_policy.compute_dtype == "float32" for layer in model._flatten_layers()):
        return model

    def float32_layer(layer):
        return layer.__class__.from_config({**layer.get_config(), "dtype": "float32"})

    clone = keras.models.clone_model(model, clone_function=float32_layer)
    clone.set_weights(model.get_weights())
    return clone


def to_tflite(model, path, *, probabilities=False, class_names=None):
    """Converts ``model`` to a float32 TFLite file at ``path``; returns ``path``.

    Args:
      model: a ``keras.Model`` with a fixed input shape that outputs logits
        (one trained under a mixed-precision policy is exported in float32).
      path: destination ``.tflite`` path. Written atomically: a failed
        conversion leaves no file behind and an existing file untouched.
      probabilities: the file outputs probabilities (a softmax is appended;
        a model that already ends in softmax is not softmaxed twice). By
        default it outputs logits, also for a model that ends in softmax.
      class_names: written one per line to ``labels_path(path)``.
    """
    _check_model(model)
    if not str(path).endswith(".tflite"):
        raise ValueError(f"the export path must end in .tflite, got {path!r}.")
    model = _float32_copy(model)
    logits, ends_in_softmax = logits_model(model, "model")
    if probabilities:
        outputs = keras.layers.Softmax(name="probabilities")(logits.outputs[0])
        model = keras.Model(model_inputs(logits), outputs, name=f"{model.name}_probs")
    elif ends_in_softmax:
        model = logits  # the app gets logits unless it asks for probabilities
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    with contextlib.redirect_stdout(io.StringIO()):  # the converter prints its SavedModel
        flatbuffer = converter.convert()
    # Convert first (in memory), then write: a failed conversion writes nothing.
    if class_names is not None:
        _io.write_text(labels_path(path), "".join(f"{c}\n" for c in class_names))
    _io.write_bytes(path, flatbuffer)
    return path


def _interpreter(tflite_path, num_threads):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(tflite_path), num_threads=num_threads)
    interpreter.allocate_tensors()
    return interpreter


def verify(tflite_path, dataset, reference_model=None, *, probabilities=False,
           max_examples=1000, num_threads=1, warmup=5):
    """Runs the ``.tflite`` file on ``dataset`` and compares it with Keras.

    Args:
      tflite_path: a file written by :func:`to_tflite`.
      dataset: batches of ``(images, labels)`` (labels sparse ids).
      reference_model: the Keras model it was exported from (for agreement
        and ``max_abs_diff``); optional.
      probabilities: the file was exported with ``probabilities=True``; the
        reference's logits are then turned into probabilities to compare.
      max_examples: stop after this many examples.

    Returns:
      dict with ``examples``, ``accuracy`` (top-1 against the labels),
      ``agreement`` (top-1 equal to the Keras model's), ``max_abs_diff``
      (largest absolute difference of the outputs), ``latency_ms_median``
      (single-example ``invoke``, after ``warmup`` calls) and ``size_bytes``.
    """
    if reference_model is not None:
        reference_model, _ = logits_model(reference_model, "reference model")
    interpreter = _interpreter(tflite_path, num_threads)
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]
    outputs, labels, refs, timings = [], [], [], []
    seen = 0
    for batch in dataset:
        images, y = batch[0], batch[1]
        images = np.asarray(images, dtype=np.float32)
        if reference_model is not None:
            ref = reference_model(images, training=False)
            if probabilities:
                ref = tf.nn.softmax(tf.cast(ref, tf.float32), axis=-1)
            refs.append(np.asarray(ref))
        for image in images:
            interpreter.set_tensor(inp["index"], image[None])
            start = time.perf_counter()
            interpreter.invoke()
            timings.append(time.perf_counter() - start)
            outputs.append(interpreter.get_tensor(out["index"])[0].copy())
        labels.append(np.asarray(y).reshape(-1))
        seen += len(images)
        if seen >= max_examples:
            break
    if not outputs:
        raise ValueError("verify() got an empty dataset; pass a few real examples.")
    outputs = np.stack(outputs)[:max_examples]
    labels = np.concatenate(labels)[:max_examples]
    result = {
        "examples": int(len(outputs)),
        "accuracy": float(np.mean(outputs.argmax(-1) == labels)),
        "latency_ms_median": float(np.median(timings[warmup:] or timings) * 1000.0),
        "size_bytes": int(os.path.getsize(tflite_path)),
    }
    if reference_model is not None:
        refs = np.concatenate(refs)[: len(outputs)]
        result["agreement"] = float(np.mean(outputs.argmax(-1) == refs.argmax(-1)))
        result["max_abs_diff"] = float(np.max(np.abs(outputs - refs)))
    return result
