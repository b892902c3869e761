"""Teacher and student builders, by name, that end in logits.

Every model built here is a functional :class:`keras.Model` that

* takes **raw pixel values** (``float32`` in ``[0, 255]``) of shape
  ``input_shape`` (height, width, channels; channels-last),
* carries its own normalisation as its first layer, named ``"normalize"``
  (and, where the architecture needs a larger image, a ``"resize"`` layer right
  after it), so an exported model needs no preprocessing code on a phone,
* ends in ``keras.layers.Dense(num_classes, name="logits")`` with a linear
  activation: it returns **logits**, never probabilities (``keras_kd.losses``
  applies the temperature-softened softmax itself).

A model is named by a *spec* string: an architecture name optionally followed
by ``:`` and comma-separated ``key=value`` options::

    "cnn"                          "cnn:width=2"
    "mlp:hidden=1200x1200,dropout=0.2"
    "resnet_cifar:depth=20,width=1"
    "mobilenet_v2:alpha=0.35"      "resnet50"

Architectures (see :data:`ARCHITECTURES`, and :func:`describe` for one line
about a spec):

``mlp``  (options ``hidden``, default ``1200x1200``; ``dropout``, default 0)
    ``Rescaling(1/255) → Flatten → [Dense(h, relu) (→ Dropout)] per h →
    Dense(num_classes)``. The default is the MNIST teacher shape of Hinton,
    Vinyals & Dean (2015); their student is ``mlp:hidden=800x800``.
``cnn``  (options ``width``, default 1; ``dropout``, default 0; ``batchnorm``, default 0; ``gap``, default 0)
    A small VGG-style CNN: ``Rescaling(1/255)``, then three blocks of
    ``Conv2D(3×3, same) → ReLU`` with ``max(4, round(f·width))`` filters for
    f = 32, 64, 128 and a 2×2 max-pool (``same`` padding) after each block,
    then ``Flatten`` (or, with ``gap=1``, global average pooling — use it for
    large images), optional dropout and the logits. ``batchnorm=1`` inserts
    ``BatchNormalization`` before each ReLU. It is off by default: on the
    short schedules of small data sets (mnist5k, 6 epochs) BatchNorm's moving
    averages (momentum 0.99) lag the weights, and the model in inference mode
    scored 26 % where the same network without BatchNorm scored 97 %
    (BUILD_NOTES.md). Works for any image size ≥ 8×8 and any channel count.
``resnet_cifar``  (options ``depth``, default 20; ``width``, default 1)
    He et al. (2016, §4.2): a 3×3 stem conv, then 3 stages of n basic blocks
    (depth = 6n + 2) with ``b, 2b, 4b`` filters, b = ``max(1, round(16·width))``,
    stride-2 at the start of stages 2 and 3, identity shortcuts with
    zero-padded channels where the shape changes (the paper's "option A",
    parameter-free), global average pooling and the logits. ResNet-20 at
    32×32×3, 10 classes has 0.27 M parameters, as in the paper's Table 6.
``resnet50``, ``resnet101``, ``resnet152``  (no options)
    ``keras.applications.ResNet{50,101,152}(weights=None, include_top=False,
    pooling="avg")`` behind a ``Normalization`` that subtracts the ImageNet
    per-channel means (the Caffe-style range these networks were designed
    for; no RGB→BGR flip, which only matters for ImageNet weights, never
    loaded here; for channel counts other than 3 the mean of the three means
    is used for every channel).
``mobilenet_v2``, ``mobilenet_v3_small``  (option ``alpha``, default 1.0)
    ``keras.applications.MobileNetV2`` / ``MobileNetV3Small`` (weights=None,
    include_top=False, pooling="avg") behind ``Rescaling(1/127.5, offset=-1)``
    (raw pixels → [-1, 1], what both expect). MobileNetV3's own
    ``include_preprocessing`` layer does the same rescaling, so it is turned
    off here and the rescaling is done once, by the ``"normalize"`` layer.

keras.applications refuses images smaller than 32×32 (even with
``weights=None``), so for the ``resnet*`` (ImageNet ones) and ``mobilenet*``
architectures a ``keras.layers.Resizing`` (bilinear) named ``"resize"``
upsamples each spatial side that is below 32 to 32 (e.g. 28×28 MNIST →
32×32). With ``weights=None`` any channel count is accepted (1-channel MNIST
works; keras prints a warning for counts other than 1 and 3).

The keras.applications layers are built directly on the normalised tensor
(``input_tensor=...``), so the model is flat: its layers (e.g.
``"conv4_block6_out"``) are reachable with ``model.get_layer`` for feature
distillation.
"""

from __future__ import annotations

import contextlib
import random as _python_random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import keras

__all__ = [
    "ARCHITECTURES",
    "logits_model",
    "build",
    "parse_spec",
    "count_params",
    "describe",
]

#: Minimum spatial size keras.applications accepts (weights=None included).
_APPLICATIONS_MIN_SIZE = 32

#: ImageNet RGB channel means on the 0-255 scale (Caffe-style preprocessing).
_IMAGENET_MEAN_RGB = (123.68, 116.779, 103.939)


# --------------------------------------------------------------------------
# Option parsing
# --------------------------------------------------------------------------


def _parse_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"expected an integer, got {text!r}") from None


def _parse_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"expected a number, got {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"expected a finite number, got {text!r}")
    return value


def _parse_int_list(text: str) -> tuple:
    parts = text.lower().split("x")
    try:
        return tuple(int(p) for p in parts)
    except ValueError:
        raise ValueError(
            f"expected integers separated by 'x' (e.g. 1200x1200), got {text!r}"
        ) from None


def _positive(value):
    if value <= 0:
        raise ValueError(f"must be > 0, got {value}")


def _dropout_rate(value):
    if not 0.0 <= value < 1.0:
        raise ValueError(f"must be in [0, 1), got {value}")


def _zero_or_one(value):
    if value not in (0, 1):
        raise ValueError(f"must be 0 or 1, got {value}")


def _hidden_sizes(value):
    if not value or any(h <= 0 for h in value):
        raise ValueError(
            f"every hidden size must be a positive integer, got "
            f"{'x'.join(str(h) for h in value)}"
        )


def _resnet_depth(value):
    if value < 8 or (value - 2) % 6 != 0:
        raise ValueError(
            f"must be of the form 6n+2 with n >= 1 (8, 14, 20, 32, 44, 56, "
            f"110, ...), got {value}"
        )


@dataclass(frozen=True)
class _Option:
    parse: Callable[[str], Any]
    default: Any
    check: Callable[[Any], None]
    help: str


_OPTIONS: dict = {
    "mlp": {
        "hidden": _Option(
            _parse_int_list, (1200, 1200), _hidden_sizes,
            "hidden layer sizes, e.g. 1200x1200"),
        "dropout": _Option(
            _parse_float, 0.0, _dropout_rate, "dropout rate after each hidden layer"),
    },
    "cnn": {
        "width": _Option(
            _parse_float, 1.0, _positive, "filter multiplier on 32/64/128"),
        "dropout": _Option(
            _parse_float, 0.0, _dropout_rate, "dropout rate before the logits"),
        "batchnorm": _Option(
            _parse_int, 0, _zero_or_one, "1 adds BatchNormalization to each block"),
        "gap": _Option(
            _parse_int, 0, _zero_or_one,
            "1 ends in global average pooling instead of Flatten"),
    },
    "resnet_cifar": {
        "depth": _Option(
            _parse_int, 20, _resnet_depth, "total depth 6n+2"),
        "width": _Option(
            _parse_float, 1.0, _positive, "filter multiplier on 16/32/64"),
    },
    "resnet50": {},
    "resnet101": {},
    "resnet152": {},
    "mobilenet_v2": {
        "alpha": _Option(
            _parse_float, 1.0, _positive, "width multiplier"),
    },
    "mobilenet_v3_small": {
        "alpha": _Option(
            _parse_float, 1.0, _positive, "width multiplier"),
    },
}

#: The architecture names :func:`build` accepts.
ARCHITECTURES = tuple(_OPTIONS)


def _valid_options_text(arch: str) -> str:
    options = _OPTIONS[arch]
    if not options:
        return f"{arch!r} takes no options"
    listed = ", ".join(
        f"{key} (default {_format_value(opt.default)}: {opt.help})"
        for key, opt in options.items()
    )
    return f"valid options for {arch!r}: {listed}"


def _format_value(value) -> str:
    if isinstance(value, tuple):
        return "x".join(str(v) for v in value)
    return str(value)


def parse_spec(spec):
    """Splits a model spec into its architecture name and its full options.

    Args:
      spec: ``"arch"`` or ``"arch:key=value,key=value"``. The architecture
        name is case-insensitive and surrounding spaces are ignored. Values
        are parsed per option: integers (``depth``), numbers (``width``,
        ``alpha``, ``dropout``) or ``AxB...`` integer lists (``hidden``).

    Returns:
      ``(arch, options)``: ``arch`` is one of :data:`ARCHITECTURES`;
      ``options`` is a new dict holding **every** option of that
      architecture, the given ones parsed and the others at their defaults
      (e.g. ``parse_spec("cnn:width=2") == ("cnn", {"width": 2.0,
      "dropout": 0.0})``; list values are tuples).

    Raises:
      ValueError: the spec is not a non-empty string; the architecture is
        unknown (the message lists :data:`ARCHITECTURES`); an option is
        unknown, repeated, malformed (not ``key=value``) or has a bad value
        (the message names the option and lists the architecture's valid
        options).
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(
            f"A model spec must be a non-empty string like 'cnn:width=2', "
            f"got {spec!r}. Valid architectures: {', '.join(ARCHITECTURES)}."
        )
    arch, sep, rest = spec.strip().partition(":")
    arch = arch.strip().lower()
    if arch not in _OPTIONS:
        raise ValueError(
            f"Unknown architecture {arch!r} in model spec {spec!r}. "
            f"Valid architectures: {', '.join(ARCHITECTURES)}."
        )
    schema = _OPTIONS[arch]
    options = {key: opt.default for key, opt in schema.items()}
    if not sep:
        return arch, options
    seen = set()
    for item in rest.split(","):
        key, eq, text = item.partition("=")
        key, text = key.strip().lower(), text.strip()
        if not eq or not key or not text:
            raise ValueError(
                f"Malformed option {item.strip()!r} in model spec {spec!r}: "
                f"expected key=value. {_valid_options_text(arch)}."
            )
        if key not in schema:
            raise ValueError(
                f"Unknown option {key!r} for architecture {arch!r} in model "
                f"spec {spec!r}. {_valid_options_text(arch)}."
            )
        if key in seen:
            raise ValueError(
                f"Option {key!r} given twice in model spec {spec!r}."
            )
        seen.add(key)
        opt = schema[key]
        try:
            value = opt.parse(text)
            opt.check(value)
        except ValueError as err:
            raise ValueError(
                f"Bad value for option {key!r} of {arch!r} in model spec "
                f"{spec!r}: {err}. {_valid_options_text(arch)}."
            ) from None
        options[key] = value
    return arch, options


def describe(spec) -> str:
    """Returns a one-line human description of ``spec`` (validated).

    E.g. ``describe("cnn:width=0.5")`` →
    ``"cnn: 3-block VGG-style CNN, filters 16/32/64 (width 0.5), dropout 0.0"``.
    Raises the same ``ValueError`` as :func:`parse_spec` for a bad spec.
    """
    arch, o = parse_spec(spec)
    if arch == "mlp":
        return (
            f"mlp: MLP, hidden {'x'.join(str(h) for h in o['hidden'])} ReLU, "
            f"dropout {o['dropout']}"
        )
    if arch == "cnn":
        f = "/".join(str(n) for n in _cnn_filters(o["width"]))
        return (
            f"cnn: 3-block VGG-style CNN, filters {f} (width {o['width']}), "
            f"dropout {o['dropout']}, batchnorm {o['batchnorm']}, "
            f"{'global average pooling' if o['gap'] else 'flatten'} head"
        )
    if arch == "resnet_cifar":
        b = _resnet_cifar_base(o["width"])
        n = (o["depth"] - 2) // 6
        return (
            f"resnet_cifar: ResNet-{o['depth']} (CIFAR, He et al. 2016), "
            f"3 stages x {n} basic blocks, filters {b}/{2 * b}/{4 * b}"
        )
    if arch.startswith("resnet"):
        return (
            f"{arch}: keras.applications.{_RESNETS[arch].__name__}, random init, "
            f"ImageNet-mean normalisation, min input 32x32"
        )
    app = "MobileNetV2" if arch == "mobilenet_v2" else "MobileNetV3Small"
    return (
        f"{arch}: keras.applications.{app} (alpha {o['alpha']}), random init, "
        f"inputs scaled to [-1, 1], min input 32x32"
    )


# --------------------------------------------------------------------------
# Builders
# --------------------------------------------------------------------------


def _logits(x, num_classes):
    # float32 logits even under a mixed-precision policy.
    return keras.layers.Dense(
        num_classes, activation=None, name="logits", dtype="float32")(x)


def _rescale_255(x):
    return keras.layers.Rescaling(1.0 / 255.0, name="normalize")(x)


def _build_mlp(inputs, num_classes, hidden, dropout):
    x = _rescale_255(inputs)
    x = keras.layers.Flatten(name="flatten")(x)
    for i, units in enumerate(hidden, start=1):
        x = keras.layers.Dense(units, activation="relu", name=f"dense_{i}")(x)
        if dropout > 0:
            x = keras.layers.Dropout(dropout, name=f"dropout_{i}")(x)
    return _logits(x, num_classes)


def _cnn_filters(width):
    return tuple(max(4, int(round(f * width))) for f in (32, 64, 128))


def _build_cnn(inputs, num_classes, width, dropout, batchnorm=0, gap=0):
    x = _rescale_255(inputs)
    for i, filters in enumerate(_cnn_filters(width), start=1):
        x = keras.layers.Conv2D(
            filters, 3, padding="same", use_bias=not batchnorm,
            name=f"block{i}_conv")(x)
        if batchnorm:
            x = keras.layers.BatchNormalization(name=f"block{i}_bn")(x)
        x = keras.layers.ReLU(name=f"block{i}_relu")(x)
        if not (gap and i == 3):
            x = keras.layers.MaxPooling2D(2, padding="same", name=f"pool{i}")(x)
    if gap:
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    else:
        x = keras.layers.Flatten(name="flatten")(x)
    if dropout > 0:
        x = keras.layers.Dropout(dropout, name="dropout")(x)
    return _logits(x, num_classes)


def _resnet_cifar_base(width):
    return max(1, int(round(16 * width)))


def _conv_bn(x, filters, strides, name, relu=True):
    x = keras.layers.Conv2D(
        filters, 3, strides=strides, padding="same", use_bias=False,
        kernel_initializer="he_normal", name=f"{name}_conv")(x)
    x = keras.layers.BatchNormalization(name=f"{name}_bn")(x)
    if relu:
        x = keras.layers.ReLU(name=f"{name}_relu")(x)
    return x


def _build_resnet_cifar(inputs, num_classes, depth, width):
    n = (depth - 2) // 6
    base = _resnet_cifar_base(width)
    x = _rescale_255(inputs)
    x = _conv_bn(x, base, 1, "stem")
    for stage in range(3):
        filters = base * 2 ** stage
        for block in range(n):
            name = f"stage{stage + 1}_block{block + 1}"
            strides = 2 if (stage > 0 and block == 0) else 1
            shortcut = x
            y = _conv_bn(x, filters, strides, f"{name}_1")
            y = _conv_bn(y, filters, 1, f"{name}_2", relu=False)
            if strides != 1:
                # Option A: subsample, then pad the channels with zeros.
                # (Rescaling(0) yields zeros of the same shape; channels
                # exactly double, as filters are base, 2·base, 4·base.)
                shortcut = keras.layers.MaxPooling2D(
                    1, strides=2, name=f"{name}_subsample")(shortcut)
                zeros = keras.layers.Rescaling(
                    0.0, name=f"{name}_zeros")(shortcut)
                shortcut = keras.layers.Concatenate(
                    name=f"{name}_pad")([shortcut, zeros])
            x = keras.layers.Add(name=f"{name}_add")([shortcut, y])
            x = keras.layers.ReLU(name=f"{name}_out")(x)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    return _logits(x, num_classes)


def _resize_if_small(x, input_shape):
    height, width = input_shape[0], input_shape[1]
    if height >= _APPLICATIONS_MIN_SIZE and width >= _APPLICATIONS_MIN_SIZE:
        return x
    return keras.layers.Resizing(
        max(height, _APPLICATIONS_MIN_SIZE),
        max(width, _APPLICATIONS_MIN_SIZE),
        interpolation="bilinear",
        name="resize",
    )(x)


_RESNETS = {
    "resnet50": keras.applications.ResNet50,
    "resnet101": keras.applications.ResNet101,
    "resnet152": keras.applications.ResNet152,
}


def _build_resnet_imagenet(arch, inputs, input_shape, num_classes):
    channels = input_shape[-1]
    if channels == 3:
        mean = list(_IMAGENET_MEAN_RGB)
    else:
        mean = [sum(_IMAGENET_MEAN_RGB) / 3.0] * channels
    x = keras.layers.Normalization(
        axis=-1, mean=mean, variance=[1.0] * channels, name="normalize")(inputs)
    x = _resize_if_small(x, input_shape)
    base = _RESNETS[arch](
        weights=None, include_top=False, input_tensor=x, pooling="avg")
    return _logits(base.output, num_classes)


def _build_mobilenet(arch, inputs, input_shape, num_classes, alpha):
    x = keras.layers.Rescaling(
        1.0 / 127.5, offset=-1.0, name="normalize")(inputs)
    x = _resize_if_small(x, input_shape)
    if arch == "mobilenet_v2":
        base = keras.applications.MobileNetV2(
            weights=None, include_top=False, input_tensor=x, pooling="avg",
            alpha=alpha)
    else:
        base = keras.applications.MobileNetV3Small(
            weights=None, include_top=False, input_tensor=x, pooling="avg",
            alpha=alpha, include_preprocessing=False)
    return _logits(base.output, num_classes)


@contextlib.contextmanager
def _seeded(seed):
    """Seeds Keras's default initializer seeds, restoring Python's RNG after.

    Keras 3 initializers (and Dropout seed generators) built without an
    explicit seed draw one from Python's ``random`` module
    (``keras.random.make_default_seed``), so seeding ``random`` fixes every
    initial weight. The state of ``random`` is restored on exit; NumPy and
    TensorFlow global seeds are never touched.
    """
    if seed is None:
        yield
        return
    state = _python_random.getstate()
    _python_random.seed(seed)
    try:
        yield
    finally:
        _python_random.setstate(state)


def _check_input_shape(input_shape):
    try:
        dims = tuple(input_shape)
    except TypeError:
        dims = None
    ok = (
        dims is not None
        and len(dims) == 3
        and all(
            not isinstance(d, bool) and hasattr(d, "__index__") and int(d) > 0
            for d in dims
        )
    )
    if not ok:
        raise ValueError(
            f"input_shape must be (height, width, channels) with three "
            f"positive integers, e.g. (28, 28, 1) or (32, 32, 3); got "
            f"{input_shape!r}. (Do not include the batch dimension.)"
        )
    return tuple(int(d) for d in dims)


def _check_num_classes(num_classes):
    if (
        isinstance(num_classes, bool)
        or not hasattr(num_classes, "__index__")
        or int(num_classes) < 2
    ):
        raise ValueError(
            f"num_classes must be an integer >= 2 (the number of logits), "
            f"got {num_classes!r}."
        )
    return int(num_classes)


def build(spec, input_shape, num_classes, *, name=None, seed=None):
    """Builds the model named by ``spec``; it maps raw pixels to logits.

    Args:
      spec: a model spec, see :func:`parse_spec` (e.g. ``"cnn:width=0.5"``).
      input_shape: ``(height, width, channels)`` of one raw image, three
        positive integers, no batch dimension. Inputs are float32 pixel
        values in [0, 255]; the model normalises them itself.
      num_classes: number of logits, an integer >= 2.
      name: the model's name; defaults to the architecture name.
      seed: optional int. When given, the initial weights (and the default
        seeds of any Dropout layers) are a function of ``seed`` alone: the
        builder seeds Python's ``random`` module, which Keras 3 uses to pick
        every unseeded initializer's seed, and restores its previous state
        afterwards (NumPy / TensorFlow global seeds are not touched). When
        ``None``, weights come from the current global Python random state
        (e.g. ``keras.utils.set_random_seed``).

    Returns:
      An uncompiled functional ``keras.Model`` with input shape
      ``(None, *input_shape)`` whose layer after the input is named
      ``"normalize"`` and whose last layer is
      ``Dense(num_classes, activation=None, name="logits")`` (float32).

    Raises:
      ValueError: bad ``spec`` (see :func:`parse_spec`), ``input_shape`` or
        ``num_classes``, or a ``seed`` that is not an int.
    """
    arch, options = parse_spec(spec)
    input_shape = _check_input_shape(input_shape)
    num_classes = _check_num_classes(num_classes)
    if seed is not None and (isinstance(seed, bool) or not hasattr(seed, "__index__")):
        raise ValueError(f"seed must be an int or None, got {seed!r}.")
    seed = None if seed is None else int(seed)

    with _seeded(seed):
        inputs = keras.Input(shape=input_shape, name="pixels")
        if arch == "mlp":
            outputs = _build_mlp(inputs, num_classes, **options)
        elif arch == "cnn":
            outputs = _build_cnn(inputs, num_classes, **options)
        elif arch == "resnet_cifar":
            outputs = _build_resnet_cifar(inputs, num_classes, **options)
        elif arch in _RESNETS:
            outputs = _build_resnet_imagenet(
                arch, inputs, input_shape, num_classes)
        elif arch in ("mobilenet_v2", "mobilenet_v3_small"):
            outputs = _build_mobilenet(
                arch, inputs, input_shape, num_classes, **options)
        else:  # pragma: no cover - ARCHITECTURES and this switch agree
            raise AssertionError(arch)
        return keras.Model(inputs, outputs, name=name or arch)


def count_params(model) -> int:
    """Total number of weights of a built model: trainable + non-trainable.

    Counts every element of every variable in ``model.weights`` (so
    BatchNormalization's moving mean and variance are included), each
    variable once.
    """
    seen = set()
    total = 0
    for w in model.weights:
        key = id(w)
        if key in seen:
            continue
        seen.add(key)
        n = 1
        for d in w.shape:
            n *= int(d)
        total += n
    return total


# --------------------------------------------------------------------------
# Logits views of models that end in softmax
# --------------------------------------------------------------------------


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


def _is_functional(model):
    try:
        from keras.src.models.functional import Functional
    except ImportError:  # pragma: no cover - Keras moved it
        return isinstance(model, keras.Sequential)
    return isinstance(model, (Functional, keras.Sequential))


def _output_producer(model):
    """(operation, its input tensor) that produced the single output, or None."""
    outputs = getattr(model, "outputs", None)
    if not outputs or len(outputs) != 1:
        return None
    try:
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
    if isinstance(op, keras.Model) and _is_functional(op):
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

    Raises:
      ValueError: a subclassed model whose last tracked layer applies softmax:
        its graph cannot be cut, so its ``call()`` must return logits. (A
        subclassed model that applies softmax inside ``call()`` without such a
        layer cannot be detected.)
    """
    if not _is_functional(model):
        layers = getattr(model, "layers", None) or []
        last = layers[-1] if layers else None
        if last is not None and (
            isinstance(last, keras.layers.Softmax)
            or _is_softmax(getattr(last, "activation", None))
        ):
            raise ValueError(
                f"the {role} {model.name!r} appears to end in a softmax, and it "
                "is a subclassed model whose graph keras_kd cannot cut. keras_kd "
                "distils logits, never probabilities. Fix: make its call() "
                "return the pre-softmax logits (e.g. Dense(num_classes) with no "
                "activation)."
            )
        return model, False
    producer = _output_producer(model)
    if producer is None:
        return model, False
    logits = _pre_softmax(*producer)
    if logits is None:
        return model, False
    return keras.Model(model_inputs(model), logits, name=f"{model.name}_logits"), True


def model_inputs(model):
    """``model.inputs``, unwrapped when there is one (calling with a tensor then
    matches the model's input structure without a Keras warning)."""
    inputs = model.inputs
    return inputs[0] if len(inputs) == 1 else inputs


# --------------------------------------------------------------------------
# A frozen model computing in reduced precision
# --------------------------------------------------------------------------

#: Compute dtypes :func:`with_compute_dtype` accepts, and the Keras policy
#: (float32 variables, reduced-precision math) each one maps to.
COMPUTE_DTYPES = {
    "float32": "float32",
    "bfloat16": "mixed_bfloat16",
    "float16": "mixed_float16",
}


def with_compute_dtype(model, dtype):
    """A copy of a functional/Sequential ``model`` that computes in ``dtype``.

    Every layer of the copy gets the Keras policy ``mixed_<dtype>``: its
    variables stay float32 (the same values: the weights are copied, never
    rounded in storage) and are cast to ``dtype`` for the math, as are the
    inputs. Meant for a frozen teacher's inference (``Distiller(...,
    teacher_dtype="bfloat16")``); the outputs are ``dtype`` and the Distiller
    casts them to float32 before the softmax. ``dtype="float32"`` returns
    ``model`` itself when all its layers compute in float32, and otherwise a
    float32 copy (a teacher built under a mixed policy).

    Raises:
      ValueError: an unknown ``dtype`` (the message lists the valid ones), or
        a subclassed model (its layers cannot be re-created from config).
    """
    if dtype not in COMPUTE_DTYPES:
        raise ValueError(
            f"unknown compute dtype {dtype!r}; valid: {', '.join(COMPUTE_DTYPES)} "
            "(bfloat16 suits CPUs and TPUs, float16 GPUs)."
        )
    if dtype == "float32" and (not _is_functional(model) or all(
        layer.dtype_policy.name == "float32" for layer in model._flatten_layers()
    )):
        return model  # (a subclassed model computes as it was built)
    if not _is_functional(model):
        raise ValueError(
            f"{model.name!r} is a subclassed model: its layers cannot be rebuilt "
            f"in {dtype}. Fix: use a functional or Sequential model, or leave "
            "the teacher in float32."
        )
    policy = COMPUTE_DTYPES[dtype]

    def clone(layer):
        config = layer.get_config()
        config["dtype"] = policy
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=clone, recursive=True)
    copy.set_weights(model.get_weights())
    copy.trainable = model.trainable
    return copy
