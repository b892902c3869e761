"""Views of a model: its logits, a compute-dtype copy, its layers.

A *view* runs the layers and weights of the model it views (a dtype copy: the
same weight values), so keras_kd reads what it needs without changing the
user's model: :func:`logits_model` (the logits of a softmax-ending model),
:func:`with_compute_dtype` (a bfloat16 / float16 copy for a frozen teacher's
inference, or a float32 copy of a mixed-precision model for TFLite export),
:func:`feature_tensor` (a named layer's output, for feature
distillation).

This is the **only** module of keras_kd that uses private Keras / TensorFlow
APIs (``keras.src``, ``tensorflow.python``, underscored attributes); each use
says why and the versions it was checked on, and the wrappers at the end
(:func:`build_for_fit`, :func:`initial_epoch`, ...) give the rest of the
package public names for them. After a Keras or TensorFlow upgrade, re-check
this file.
"""

import difflib
import weakref

import keras

__all__ = [
    "is_graph_model",
    "model_inputs",
    "logits_model",
    "single_output",
    "COMPUTE_DTYPES",
    "check_compute_dtype",
    "with_compute_dtype",
    "refresh_dtype_copies",
    "feature_tensor",
    "tapped",
    "flatten_layers",
    "loss_tracker",
    "compile_metrics",
    "build_for_fit",
    "initial_epoch",
    "set_initial_epoch",
    "op_determinism_enabled",
    "disable_op_determinism",
]


# ---------------------------------------------------------------------------
# What kind of model, and its inputs and outputs.


def is_graph_model(model):
    """True for a functional or Sequential model (a graph of layers that can be
    cut or read), False for a subclassed one (its ``call()`` is opaque)."""
    try:
        # Private: Keras 3 exports no public name for the class that
        # keras.Model(inputs, outputs) returns. Checked on Keras 3.15.1 / TF 2.21.0.
        from keras.src.models.functional import Functional
    except ImportError:  # pragma: no cover - Keras moved it
        return isinstance(model, keras.Sequential)
    return isinstance(model, (Functional, keras.Sequential))


def model_inputs(model):
    """``model.inputs``, unwrapped when there is one (calling with a tensor then
    matches the model's input structure without a Keras warning)."""
    return model.inputs[0] if len(model.inputs) == 1 else model.inputs


def single_output(view):
    """The one symbolic output of ``view``; ValueError if it has several."""
    outputs = view.outputs
    if len(outputs) != 1:
        raise ValueError(f"{view.name!r} has {len(outputs)} outputs; the Distiller needs one "
                         "logits output.")
    return outputs[0]


# ---------------------------------------------------------------------------
# The logits of a model that ends in a softmax.


def _is_softmax(fn):
    return getattr(fn, "__name__", None) == "softmax"


class _PreActivation(keras.layers.Layer):
    """Calls a wrapped layer with its activation switched off (shared weights)."""

    def __init__(self, layer, **kwargs):
        super().__init__(name=f"{layer.name}_logits", **kwargs)
        self.inner = layer

    def call(self, inputs):
        saved = self.inner.activation
        self.inner.activation = keras.activations.linear
        try:
            return self.inner(inputs)
        finally:
            self.inner.activation = saved

    def compute_output_spec(self, inputs):
        return self.inner.compute_output_spec(inputs)


def _output_producer(model):
    """(operation, its input tensor) that produced the single output, or None."""
    outputs = getattr(model, "outputs", None)
    if not outputs or len(outputs) != 1:
        return None
    try:
        # Private: a symbolic tensor's _keras_history names the operation and
        # call (node) that produced it; Keras has no public graph walk.
        # Checked on Keras 3.15.1 / TF 2.21.0.
        history = outputs[0]._keras_history
        node = history.operation._inbound_nodes[history.node_index]
        inputs = node.input_tensors
    except (AttributeError, IndexError, TypeError):
        return None
    if len(inputs) != 1:
        return None
    return history.operation, inputs[0]


def _pre_softmax(op, tensor):
    """The pre-softmax output of ``op`` applied to ``tensor``, or None."""
    if isinstance(op, keras.layers.Softmax) or (
        isinstance(op, keras.layers.Activation) and _is_softmax(op.activation)
    ):
        return tensor
    if type(op).__name__ == "Softmax" and type(op).__module__.startswith("keras"):
        return tensor  # keras.ops.softmax(...) in a functional model
    if isinstance(op, keras.layers.Layer) and _is_softmax(getattr(op, "activation", None)):
        return _PreActivation(op)(tensor)
    if isinstance(op, keras.Model) and is_graph_model(op):
        inner_view, recovered = logits_model(op)
        if recovered:
            return inner_view(tensor)
    return None


def logits_model(model, role="model"):
    """Returns ``(view, recovered)``: a model computing ``model``'s logits.

    keras_kd distils logits, never probabilities. If ``model``'s output is
    produced by a softmax — a ``Softmax`` or ``Activation("softmax")`` layer,
    a layer with ``activation="softmax"`` (e.g. ``Dense``), ``keras.ops.softmax``
    in a functional model, or a nested functional/Sequential model that ends
    in one of these — ``view`` is a functional model over the same layers and
    weights that stops before the softmax, and ``recovered`` is True.
    Otherwise ``view`` is ``model`` itself and ``recovered`` is False.

    Raises ValueError for a subclassed model whose last tracked layer applies
    softmax (its graph cannot be cut: its ``call()`` must return logits; one
    that applies softmax in ``call()`` without such a layer goes undetected).
    """
    if not is_graph_model(model):
        layers = getattr(model, "layers", None) or []
        last = layers[-1] if layers else None
        if last is not None and (
            isinstance(last, keras.layers.Softmax)
            or _is_softmax(getattr(last, "activation", None))
        ):
            raise ValueError(
                f"the {role} {model.name!r} appears to end in a softmax, and it is a subclassed "
                "model whose graph keras_kd cannot cut. keras_kd distils logits, never "
                "probabilities. Fix: make its call() return the pre-softmax logits (e.g. "
                "Dense(num_classes) with no activation)."
            )
        return model, False
    producer = _output_producer(model)
    if producer is None:
        return model, False
    logits = _pre_softmax(*producer)
    if logits is None:
        return model, False
    return keras.Model(model_inputs(model), logits, name=f"{model.name}_logits"), True


# ---------------------------------------------------------------------------
# A copy of a model that computes in another dtype.

#: Compute dtypes :func:`with_compute_dtype` accepts, and the Keras policy
#: (float32 variables, reduced-precision math) each one maps to.
COMPUTE_DTYPES = {
    "float32": "float32",
    "bfloat16": "mixed_bfloat16",
    "float16": "mixed_float16",
}


def check_compute_dtype(dtype, name="teacher_dtype"):
    """Returns ``dtype`` if it is one of :data:`COMPUTE_DTYPES`, else a ValueError.
    The one rule for a compute dtype; ``name`` is what the error calls it."""
    if not isinstance(dtype, str) or dtype not in COMPUTE_DTYPES:
        raise ValueError(f"{name} must be one of {', '.join(COMPUTE_DTYPES)}, got {dtype!r}.")
    return dtype


def with_compute_dtype(model, dtype):
    """A copy of a functional/Sequential ``model`` that computes in ``dtype``.

    Every layer of the copy (nested models included) gets the Keras policy
    ``COMPUTE_DTYPES[dtype]``: for bfloat16 / float16 the variables stay
    float32 (the weights are copied, never rounded in storage) and are cast to
    ``dtype`` for the math, as are the inputs and outputs. For a frozen
    teacher's inference (``Distiller(teacher_dtype="bfloat16")``, which casts
    the logits to float32); bfloat16 suits CPUs and TPUs, float16 GPUs.

    ``dtype="float32"`` returns ``model`` itself when every layer computes
    and stores in float32 (a subclassed model: always), else a float32 copy
    with the same weights, e.g. of a model trained under ``mixed_float16``
    for TFLite export (whose builtin kernels take no float16). The copy's
    ``trainable`` is ``model``'s. ValueError for an unknown ``dtype``, or a
    subclassed model and a reduced ``dtype`` (its layers cannot be rebuilt).
    """
    check_compute_dtype(dtype, "dtype")
    if dtype == "float32" and (not is_graph_model(model) or all(
        layer.dtype_policy.compute_dtype == layer.dtype_policy.variable_dtype == "float32"
        for layer in flatten_layers(model)
    )):
        return model  # (a subclassed model computes as it was built)
    if not is_graph_model(model):
        raise ValueError(
            f"{model.name!r} is a subclassed model: its layers cannot be rebuilt in {dtype}. Fix: "
            "use a functional or Sequential model, or leave the teacher in float32.")
    policy = COMPUTE_DTYPES[dtype]

    def clone(layer):
        config = layer.get_config()
        config["dtype"] = policy
        copied = layer.__class__.from_config(config)
        _SOURCE_LAYERS[copied] = layer
        return copied

    copy = keras.models.clone_model(model, clone_function=clone, recursive=True)
    copy.set_weights(model.get_weights())
    copy.trainable = model.trainable
    return copy


#: Each layer :func:`with_compute_dtype` made → the layer it copies (for
#: :func:`refresh_dtype_copies`); weak, so a dropped copy is forgotten.
_SOURCE_LAYERS = weakref.WeakKeyDictionary()


def refresh_dtype_copies(model):
    """Copies into every layer of ``model`` (nested ones included) that
    :func:`with_compute_dtype` made the *current* weights of the layer it
    copies; returns how many layers it refreshed (0: ``model`` holds no copy).

    A dtype copy has its own variables, filled when it was made: weights loaded
    into the original later (``teacher.load_weights(...)``) reach the copy only
    through this call (the Distiller makes it before every ``fit`` and
    ``evaluate``). The copy's variables are float32 like the original's, so the
    values are copied exactly. RuntimeError if a copy no longer matches its
    original's variables (the original was rebuilt).
    """
    refreshed, seen = 0, set()
    for layer in flatten_layers(model):
        source = _SOURCE_LAYERS.get(layer)
        if source is None or id(layer) in seen:
            continue
        seen.add(id(layer))
        if len(layer.weights) != len(source.weights):
            raise RuntimeError(
                f"the compute-dtype copy of layer {source.name!r} has {len(layer.weights)} "
                f"variables, the layer itself now {len(source.weights)}. Fix: build the "
                "Distiller again after changing the teacher.")
        for copied, original in zip(layer.weights, source.weights):
            copied.assign(original.value)
        refreshed += 1
    return refreshed


# ---------------------------------------------------------------------------
# Feature taps: the output of a named layer in a model's graph.


def _nested_paths(model, name, prefix=""):
    """Paths ``outer/inner`` of layers called ``name`` inside nested models."""
    found = []
    for layer in getattr(model, "layers", []) or []:
        if isinstance(layer, keras.Model):
            for inner in getattr(layer, "layers", []) or []:
                if inner.name == name:
                    found.append(f"{prefix}{layer.name}/{name}")
            found += _nested_paths(layer, name, f"{prefix}{layer.name}/")
    return found


def _no_such_layer(model, layer_name, role, names):
    message = f"the {role} {model.name!r} has no layer named {layer_name!r}."
    close = difflib.get_close_matches(layer_name, names, n=5, cutoff=0.5)
    if close:
        message += f" Did you mean {', '.join(repr(c) for c in close)}?"
    nested = _nested_paths(model, layer_name)
    if nested:
        message += (
            f" A layer of that name is inside a nested model ({', '.join(nested)}); keras_kd reads "
            "top-level layers only. Fix: pair the nested model's own output (its name), or build "
            "the model flat."
        )
    message += (
        f" List the names with [l.name for l in {role}.layers]; they are: "
        f"{names if len(names) <= 40 else names[:40] + ['...']}."
    )
    return ValueError(message)


def _calls_in_graph(model, layer):
    """The nodes (calls) of ``layer`` that belong to ``model``'s own graph."""
    # Private: a layer shared with another model also lists that model's calls
    # in _inbound_nodes; the functional graph's _nodes holds the keys
    # (make_node_key) of its own. Keras has no public equivalent.
    # Checked on Keras 3.15.1 / TF 2.21.0.
    from keras.src.ops.function import make_node_key

    graph = getattr(getattr(model, "_functional", model), "_nodes", None)
    return [
        node for index, node in enumerate(layer._inbound_nodes)
        if graph is None or make_node_key(layer, index) in graph
    ]


def feature_tensor(model, layer_name, role):
    """The symbolic output of ``model``'s top-level layer ``layer_name``, an
    output for a new ``keras.Model`` over ``model``'s inputs (sharing weights).

    ``role`` ("teacher", "student") names the model in errors. ValueError for
    a subclassed or input-less model, no such layer (with near matches), or a
    layer called more than once (shared) or with several output tensors.
    """
    if not is_graph_model(model):
        raise ValueError(
            f"the {role} {model.name!r} is a subclassed model: keras_kd reads intermediate layers "
            "from the graph of functional or Sequential models, and a subclassed call() has none. "
            f"Fix: build the {role} with the functional API (keras.Model(inputs, outputs)) or "
            "keras.Sequential, or distil logits only (features=None)."
        )
    try:
        model.inputs  # noqa: B018  (raises for an unbuilt Sequential)
    except (AttributeError, ValueError):
        raise ValueError(f"the {role} {model.name!r} has no defined inputs yet, so its layers "
                         "have no outputs to read. Fix: start the Sequential model with "
                         "keras.Input(shape), or build it before creating the Distiller.") from None
    layers = list(model.layers)
    matches = [layer for layer in layers if layer.name == layer_name]
    if not matches:
        raise _no_such_layer(model, layer_name, role, [layer.name for layer in layers])
    nodes = _calls_in_graph(model, matches[0])
    if len(nodes) != 1:
        raise ValueError(f"the {role} layer {layer_name!r} is called {len(nodes)} times in "
                         f"{model.name!r} (a shared layer), so its output is ambiguous. Fix: "
                         "pair a layer that runs once (e.g. the one right after it).")
    outputs = nodes[0].output_tensors
    if len(outputs) != 1:
        raise ValueError(f"the {role} layer {layer_name!r} returns {len(outputs)} tensors; a "
                         "feature term needs a layer with a single tensor output. Fix: pair "
                         "a layer that consumes them (e.g. the Add/Concatenate after it).")
    return outputs[0]


def tapped(view, model, layer_names, role):
    """``(multi, taps)``: the tap tensors of ``model``'s layers ``layer_names``
    (:func:`feature_tensor`) and ``multi``, a model ``inputs → [view's output,
    taps...]`` over the graph ``view`` shares with ``model`` (one forward pass)."""
    taps = [feature_tensor(model, name, role) for name in layer_names]
    multi = keras.Model(model_inputs(view), [single_output(view)] + taps,
                        name=f"{model.name}_features")
    return multi, taps


# ---------------------------------------------------------------------------
# Public names for the other private APIs keras_kd needs.


def flatten_layers(model):
    """Every layer of ``model``, nested ones included, and ``model`` itself."""
    # Private: Layer._flatten_layers is Keras's own recursive walk (model.layers
    # is one level deep). Checked on Keras 3.15.1 / TF 2.21.0.
    return list(model._flatten_layers())


def loss_tracker(model):
    """The ``loss`` metric ``keras.Model`` keeps and logs (a model with its own
    ``train_step`` updates it). Keras 3 keeps it private (``_loss_tracker``);
    checked on Keras 3.15.1 / TF 2.21.0."""
    return model._loss_tracker


def compile_metrics(model):
    """The container of the metrics passed to ``compile`` (``_compile_metrics``,
    private in Keras 3; checked on Keras 3.15.1 / TF 2.21.0), or None."""
    return getattr(model, "_compile_metrics", None)


def build_for_fit(model, batch):
    """Builds ``model``'s optimizer and compiled metrics from one data batch, as
    ``fit`` does before its first step (for a custom fit loop)."""
    # Private: Trainer._symbolic_build is what Model.fit calls for this; there
    # is no public equivalent. tests/test_distribute.py's two-worker run fails
    # if it changes. Checked on Keras 3.15.1 / TF 2.21.0.
    model._symbolic_build(data_batch=batch)


def initial_epoch(model):
    """The epoch a backup callback asked ``fit`` to resume from, or None."""
    # Private: Model.fit reads model._initial_epoch (set by Keras's own
    # BackupAndRestore) in preference to its initial_epoch argument.
    # Checked on Keras 3.15.1 / TF 2.21.0.
    return getattr(model, "_initial_epoch", None)


def set_initial_epoch(model, epoch):
    """Makes the next ``fit`` start at ``epoch`` (None: at its own argument)."""
    # Private: see initial_epoch. Checked on Keras 3.15.1 / TF 2.21.0.
    model._initial_epoch = epoch


def op_determinism_enabled():
    """True while TensorFlow's op determinism is on."""
    # Private: TF exports enable_op_determinism only; the query lives in
    # tensorflow.python.framework.config. Checked on Keras 3.15.1 / TF 2.21.0.
    from tensorflow.python.framework import config as tf_config

    return tf_config.is_op_determinism_enabled()


def disable_op_determinism():
    """Turns TensorFlow's op determinism off (TF 2.21 has no public call)."""
    # Private: see op_determinism_enabled. Checked on Keras 3.15.1 / TF 2.21.0.
    from tensorflow.python.framework import config as tf_config

    tf_config.disable_op_determinism()
