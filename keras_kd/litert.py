"""A ``.tflite`` file as the LiteRT interpreter (``ai_edge_litert``) sees it.

Its ``"keras_kd"`` metadata entry (:func:`with_metadata` writes it,
:func:`read_metadata` reads it), an interpreter for it, one run on a blank
image (:func:`check_runs`), and :func:`verify`: every example fed alone, as on
a phone, compared with the Keras model. :mod:`keras_kd.export` converts and
writes the files (and re-exports :func:`verify`, :func:`read_metadata` and
:class:`RuntimeCheckError`); the formats are described there.
"""

import json
import os
import time

import numpy as np
import tensorflow as tf

from keras_kd import _console, views

__all__ = ["METADATA_NAME", "RuntimeCheckError", "with_metadata", "read_metadata", "check_runs",
           "verify"]

#: The name of the metadata entry holding keras_kd's JSON description.
METADATA_NAME = "keras_kd"


class RuntimeCheckError(ValueError):
    """The converted file does not run in the LiteRT interpreter."""


def _text(value):
    """A flatbuffer string field (bytes or str) as str."""
    return value.decode() if isinstance(value, bytes) else value


def _tensor_info(model, index, signature_names):
    """The metadata of a tensor; its name is the signature's (what an app calls it)."""
    from ai_edge_litert import schema_py_generated as schema

    tensor = model.subgraphs[0].tensors[index]
    names = {int(t.tensorIndex): _text(t.name) for t in signature_names or []}
    q = tensor.quantization
    scale = [] if q is None or q.scale is None else list(q.scale)
    quant = None
    if len(scale) == 1 and scale[0] != 0:
        quant = {"scale": float(scale[0]), "zero_point": int(q.zeroPoint[0])}
    types = {v: k.lower() for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    return {"name": names.get(int(index), _text(tensor.name)),
            "shape": [int(d) for d in tensor.shape],
            "dtype": types[tensor.type], "quantization": quant}


def with_metadata(flatbuffer, describe):
    """``(flatbuffer with metadata, metadata)``: ``describe(inp, out, flex_ops)``'s
    dict, stored as UTF-8 JSON in a metadata entry named ``"keras_kd"``."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(flatbuffer))
    sig = model.signatureDefs[0] if model.signatureDefs else None
    subgraph = model.subgraphs[0]
    inp = _tensor_info(model, subgraph.inputs[0], sig and sig.inputs)
    out = _tensor_info(model, subgraph.outputs[0], sig and sig.outputs)
    codes = [_text(code.customCode) for code in model.operatorCodes or []]
    flex_ops = sorted({c[len("Flex"):] for c in codes if c and c.startswith("Flex")})
    metadata = describe(inp, out, flex_ops)
    buffer, entry = schema.BufferT(), schema.MetadataT()
    buffer.data = np.frombuffer(json.dumps(metadata).encode("utf-8"), dtype=np.uint8)
    model.buffers.append(buffer)
    entry.name, entry.buffer = METADATA_NAME, len(model.buffers) - 1
    model.metadata = [m for m in model.metadata or [] if m.name != METADATA_NAME.encode()]
    model.metadata.append(entry)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model)), metadata


def read_metadata(tflite_path):
    """The ``"keras_kd"`` metadata JSON inside a ``.tflite`` file, or ``None``."""
    from ai_edge_litert import schema_py_generated as schema

    with open(tflite_path, "rb") as f:
        content = f.read()
    try:
        model = schema.Model.GetRootAs(content, 0)
        for i in range(model.MetadataLength()):
            entry = model.Metadata(i)
            if entry.Name() == METADATA_NAME.encode():
                return json.loads(model.Buffers(entry.Buffer()).DataAsNumpy().tobytes())
    except Exception as err:  # not a flatbuffer at all
        raise ValueError(
            f"{tflite_path!r} is not a readable .tflite file ({err}). Fix: pass a "
            "file written by keras_kd.export.to_tflite.") from err
    return None


def _interpreter(model, num_threads):
    """A LiteRT interpreter for a file path or flatbuffer bytes, tensors allocated."""
    from ai_edge_litert.interpreter import Interpreter

    source = {"model_content": model} if isinstance(model, bytes) else {"model_path": str(model)}
    try:
        with _console.quiet_tensorflow():  # "Created TensorFlow Lite XNNPACK delegate"
            interpreter = Interpreter(**source, num_threads=num_threads)
            interpreter.allocate_tensors()
    except (RuntimeError, ValueError) as err:
        if "Select TensorFlow op" in str(err):
            raise ValueError(
                f"{source.get('model_path', 'the file')} uses Select TF (Flex) ops, "
                "which ai-edge-litert's interpreter cannot run (it has no Flex "
                "delegate), so it cannot be verified here. Fix: export without Flex "
                "ops, or check it in an app that links tensorflow-lite-select-tf-ops.") from err
        raise
    return interpreter


def check_runs(flatbuffer, what):
    """Runs ``flatbuffer`` once in LiteRT on a blank image: delegates (XNNPACK)
    are prepared at the first ``invoke``, so loading alone shows nothing."""
    interpreter = _interpreter(flatbuffer, 1)
    inp = interpreter.get_input_details()[0]
    _invoke(interpreter, inp, np.zeros(inp["shape"], np.float32), what)


def _invoke(interpreter, inp, x, what):
    """Feeds float ``x`` to the input ``inp`` and runs once; returns the invoke's seconds."""
    interpreter.set_tensor(inp["index"], _quantize(x, inp))
    start = time.perf_counter()
    try:
        interpreter.invoke()
    except RuntimeError as err:
        raise RuntimeCheckError(
            f"{what} does not run in the LiteRT interpreter ({' '.join(str(err).split())}). "
            "With int8 this happens when calibration sees an activation that is always "
            "zero (e.g. every ReLU of a layer dead on the representative data): its "
            "scale degenerates and LiteRT's default CPU delegate (XNNPACK) refuses it. "
            "Fix: calibrate on more varied real training images, train the model "
            "longer, or use quantization='dynamic'.") from err
    return time.perf_counter() - start


def _quantize(x, detail):
    """Float values → an int8/uint8 tensor's codes, round(x/s) + z; floats pass."""
    if not np.issubdtype(detail["dtype"], np.integer):
        return x
    scale, zero_point = detail["quantization"]
    info = np.iinfo(detail["dtype"])
    q = np.round(x / scale) + zero_point
    return np.clip(q, info.min, info.max).astype(detail["dtype"])


def _dequantize(q, detail):
    """Integer codes → float values: s·(q − z); float tensors pass through."""
    if not np.issubdtype(detail["dtype"], np.integer):
        return q.astype(np.float32)
    scale, zero_point = detail["quantization"]
    return (q.astype(np.float32) - zero_point) * np.float32(scale)


def verify(tflite_path, dataset, reference_model=None, *, probabilities=None,
           max_examples=1000, num_threads=1, warmup=5):
    """Runs the ``.tflite`` file on ``dataset`` and compares it with Keras.

    Each example is fed alone (batch 1, as on a phone); int8 input and output
    tensors are (de)quantized as the module docstring says, before any
    comparison. ``dataset``: batches of ``(images, labels)`` (sparse ids), raw
    pixels as the Keras model takes them, read up to ``max_examples``.
    ``reference_model`` (optional): the Keras model it was exported from.
    ``probabilities``: the file outputs probabilities, so the reference's
    logits are softmaxed (default: what the file's metadata says, else logits).
    ``num_threads``: LiteRT CPU threads; ``warmup``: untimed first invokes.

    Returns a dict with ``examples``, ``accuracy`` (top-1 against the labels),
    with ``reference_model`` also ``agreement`` (top-1 equal to the reference's)
    and ``max_abs_diff`` (of the dequantized outputs, logits or probabilities),
    ``latency_ms_median`` (one ``invoke`` of one example, after ``warmup``
    calls, input quantization untimed), ``size_bytes``, ``quantization``,
    ``input_dtype``, ``output_kind`` and ``num_threads``.
    """
    metadata = read_metadata(tflite_path) or {}
    if probabilities is None:
        probabilities = (metadata.get("output") or {}).get("kind") == "probabilities"
    if reference_model is not None:
        reference_model, _ = views.logits_model(reference_model, "reference model")
    interpreter = _interpreter(tflite_path, num_threads)
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]
    outputs, labels, refs, timings = [], [], [], []
    seen = 0
    for batch in dataset:
        images, y = np.asarray(batch[0], dtype=np.float32), batch[1]
        if images.shape[1:] != tuple(inp["shape"][1:]):
            raise ValueError(
                f"the dataset has images of shape {images.shape[1:]}, but {tflite_path!r} "
                f"takes {tuple(int(d) for d in inp['shape'][1:])}. Fix: verify on the dataset "
                "the model was trained on (or pass image_size to data.load).")
        if reference_model is not None:
            ref = tf.cast(reference_model(images, training=False), tf.float32)
            if probabilities:
                ref = tf.nn.softmax(ref, axis=-1)
            refs.append(np.asarray(ref))
        for image in images:
            timings.append(_invoke(interpreter, inp, image[None], repr(str(tflite_path))))
            outputs.append(_dequantize(interpreter.get_tensor(out["index"])[0], out))
        labels.append(np.asarray(y).reshape(-1))
        seen += len(images)
        if seen >= max_examples:
            break
    if not outputs:
        raise ValueError("verify() got an empty dataset; pass a few real examples.")
    outputs, labels = np.stack(outputs)[:max_examples], np.concatenate(labels)[:max_examples]
    result = {
        "examples": int(len(outputs)),
        "accuracy": float(np.mean(outputs.argmax(-1) == labels)),
        "latency_ms_median": float(np.median(timings[warmup:] or timings) * 1000.0),
        "size_bytes": int(os.path.getsize(tflite_path)),
        "quantization": metadata.get("quantization"),
        "input_dtype": np.dtype(inp["dtype"]).name,
        "output_kind": "probabilities" if probabilities else "logits",
        "num_threads": num_threads,
    }
    if reference_model is not None:
        refs = np.concatenate(refs)[: len(outputs)]
        result["agreement"] = float(np.mean(outputs.argmax(-1) == refs.argmax(-1)))
        result["max_abs_diff"] = float(np.max(np.abs(outputs - refs)))
    return result
