"""Teacher and student builders, by name, that end in logits.

Every model built here is a functional :class:`keras.Model` that takes **raw
pixel values** (``float32`` in ``[0, 255]``, shape ``input_shape`` = (height,
width, channels), channels-last); carries its own normalisation as its first
layer, named ``"normalize"`` (and, where the architecture needs a larger image,
a ``"resize"`` layer right after it), so an exported model needs no
preprocessing code on a phone; and ends in ``Dense(num_classes,
name="logits")`` with a linear activation: it returns **logits**, never
probabilities (``keras_kd.losses`` applies the temperature-softened softmax).

A model is named by a *spec* string: an architecture name optionally followed
by ``:`` and comma-separated ``key=value`` options::

    "cnn"   "cnn:width=2"   "mlp:hidden=1200x1200,dropout=0.2"
    "resnet_cifar:depth=20,width=1"   "mobilenet_v2:alpha=0.35"   "resnet50"

Architectures (:data:`ARCHITECTURES`; :func:`describe` gives one line on a spec):

``mlp``  (``hidden``, default ``1200x1200``; ``dropout``, default 0)
    ``Rescaling(1/255) → Flatten → [Dense(h, relu) (→ Dropout)] per h →
    Dense(num_classes)``. The default is the MNIST teacher of Hinton, Vinyals
    & Dean (2015); their student is ``mlp:hidden=800x800``.
``cnn``  (``width``, default 1; ``dropout``, ``batchnorm``, ``gap``, default 0)
    A small VGG-style CNN: ``Rescaling(1/255)``, three blocks of ``Conv2D(3×3,
    same) → ReLU`` with ``max(4, round(f·width))`` filters for f = 32, 64, 128
    and a 2×2 max-pool (``same``) after each, then ``Flatten`` (``gap=1``:
    global average pooling, for large images), optional dropout, the logits.
    ``batchnorm=1`` puts ``BatchNormalization`` before each ReLU; it is off by
    default because on short schedules of small data its moving averages lag
    the weights (BUILD_NOTES.md has the figures). Any image ≥ 8×8, any channels.
``resnet_cifar``  (``depth``, default 20; ``width``, default 1)
    He et al. (2016, §4.2): a 3×3 stem conv, 3 stages of n basic blocks (depth
    = 6n + 2) with ``b, 2b, 4b`` filters, b = ``max(1, round(16·width))``,
    stride 2 at the start of stages 2 and 3, identity shortcuts zero-padded
    where the shape changes (the paper's parameter-free "option A"), global
    average pooling, the logits. ResNet-20 at 32×32×3, 10 classes has 0.27 M
    parameters, as in the paper's Table 6.
``resnet50``, ``resnet101``, ``resnet152``  (no options)
    ``keras.applications.ResNet{50,101,152}(weights=None, include_top=False,
    pooling="avg")`` behind a ``Normalization`` that subtracts the ImageNet
    per-channel means (Caffe-style; no RGB→BGR flip, which only matters for
    ImageNet weights, never loaded here; other channel counts than 3 use the
    mean of the three means).
``mobilenet_v2``, ``mobilenet_v3_small``  (``alpha``, default 1.0)
    ``keras.applications.MobileNetV2`` / ``MobileNetV3Small`` (weights=None,
    include_top=False, pooling="avg") behind ``Rescaling(1/127.5, offset=-1)``
    (raw pixels → [-1, 1]); MobileNetV3's own ``include_preprocessing`` is
    turned off, so the rescaling is done once, by ``"normalize"``.

keras.applications refuses images smaller than 32×32 (even with
``weights=None``), so for ``resnet50/101/152`` and ``mobilenet*`` a bilinear
``Resizing`` named ``"resize"`` upsamples each side below 32 to 32 (28×28 MNIST
→ 32×32). Any channel count is accepted (keras warns for counts other than 1
and 3). Their layers are built on the normalised tensor (``input_tensor=``), so
the model is flat: ``model.get_layer("conv4_block6_out")`` works for feature
distillation.

Several replicas: BatchNormalization normalises each batch by the batch's own
mean and variance. Under a ``tf.distribute`` strategy with N > 1 replicas an
ordinary ``BatchNormalization`` sees only its replica's 1/N of the global
batch, so 1 device and N replicas would train different weights (and keep
different moving statistics). Every model built here **inside** such a
strategy's scope (as the ``keras-kd`` job builds them) therefore has
*synchronized* BatchNormalization (``BatchNormalization(synchronized=True)``:
the mean and variance are all-reduced over the global batch, TensorFlow only);
1 device and N replicas then train the same weights up to float32 rounding.
:func:`build`'s ``synchronized_batchnorm`` argument overrides that choice, and
:func:`synchronize_batchnorm` converts a model of your own. At inference
(``training=False``, a ``.tflite`` export) synchronized BatchNormalization is
plain BatchNormalization: it uses the moving statistics and no replica.
"""
from __future__ import annotations

import contextlib
import math
import random as _python_random

import keras
import tensorflow as tf

from keras_kd.archs import ARCHITECTURES, format_value, parse_spec

__all__ = [
    "ARCHITECTURES",
    "build",
    "parse_spec",
    "count_params",
    "describe",
    "synchronize_batchnorm",
    "unsynchronized_batchnorm",
    "replicas_batchnorm_note",
]

#: Minimum spatial size keras.applications accepts (weights=None included).
_APPLICATIONS_MIN_SIZE = 32

#: ImageNet RGB channel means on the 0-255 scale (Caffe-style preprocessing).
_IMAGENET_MEAN_RGB = (123.68, 116.779, 103.939)


def describe(spec) -> str:
    """Returns a one-line human description of ``spec`` (validated).

    E.g. ``describe("cnn:width=0.5")`` →
    ``"cnn: 3-block VGG-style CNN, filters 16/32/64 (width 0.5), dropout 0.0"``.
    Raises the same ``ValueError`` as :func:`parse_spec` for a bad spec.
    """
    arch, o = parse_spec(spec)
    if arch == "mlp":
        return f"mlp: MLP, hidden {format_value(o['hidden'])} ReLU, dropout {o['dropout']}"
    if arch == "cnn":
        f = "/".join(str(n) for n in _cnn_filters(o["width"]))
        return (f"cnn: 3-block VGG-style CNN, filters {f} (width {o['width']}), "
                f"dropout {o['dropout']}, batchnorm {o['batchnorm']}, "
                f"{'global average pooling' if o['gap'] else 'flatten'} head")
    if arch == "resnet_cifar":
        b, n = _resnet_cifar_base(o["width"]), (o["depth"] - 2) // 6
        return (f"resnet_cifar: ResNet-{o['depth']} (CIFAR, He et al. 2016), "
                f"3 stages x {n} basic blocks, filters {b}/{2 * b}/{4 * b}")
    if arch.startswith("resnet"):
        return (f"{arch}: keras.applications.{_RESNETS[arch].__name__}, random init, "
                f"ImageNet-mean normalisation, min input 32x32")
    app = "MobileNetV2" if arch == "mobilenet_v2" else "MobileNetV3Small"
    return (f"{arch}: keras.applications.{app} (alpha {o['alpha']}), random init, "
            f"inputs scaled to [-1, 1], min input 32x32")


# --------------------------------------------------------------------------
# Builders


def _logits(x, num_classes):
    # float32 logits even under a mixed-precision policy.
    return keras.layers.Dense(num_classes, activation=None, name="logits", dtype="float32")(x)


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
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=not batchnorm,
                                name=f"block{i}_conv")(x)
        if batchnorm:
            x = keras.layers.BatchNormalization(name=f"block{i}_bn")(x)
        x = keras.layers.ReLU(name=f"block{i}_relu")(x)
        if not (gap and i == 3):
            x = keras.layers.MaxPooling2D(2, padding="same", name=f"pool{i}")(x)
    x = (keras.layers.GlobalAveragePooling2D(name="avg_pool") if gap
         else keras.layers.Flatten(name="flatten"))(x)
    if dropout > 0:
        x = keras.layers.Dropout(dropout, name="dropout")(x)
    return _logits(x, num_classes)


def _resnet_cifar_base(width):
    return max(1, int(round(16 * width)))


def _conv_bn(x, filters, strides, name, relu=True):
    x = keras.layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False,
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
                zeros = keras.layers.Rescaling(0.0, name=f"{name}_zeros")(shortcut)
                shortcut = keras.layers.Concatenate(name=f"{name}_pad")([shortcut, zeros])
            x = keras.layers.Add(name=f"{name}_add")([shortcut, y])
            x = keras.layers.ReLU(name=f"{name}_out")(x)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    return _logits(x, num_classes)


def _resize_if_small(x, input_shape):
    height, width = input_shape[0], input_shape[1]
    if height >= _APPLICATIONS_MIN_SIZE and width >= _APPLICATIONS_MIN_SIZE:
        return x
    return keras.layers.Resizing(
        max(height, _APPLICATIONS_MIN_SIZE), max(width, _APPLICATIONS_MIN_SIZE),
        interpolation="bilinear", name="resize")(x)


_RESNETS = {
    "resnet50": keras.applications.ResNet50,
    "resnet101": keras.applications.ResNet101,
    "resnet152": keras.applications.ResNet152,
}


def _build_resnet_imagenet(arch, inputs, input_shape, num_classes):
    channels = input_shape[-1]
    mean = (list(_IMAGENET_MEAN_RGB) if channels == 3
            else [sum(_IMAGENET_MEAN_RGB) / 3.0] * channels)
    x = keras.layers.Normalization(
        axis=-1, mean=mean, variance=[1.0] * channels, name="normalize")(inputs)
    x = _resize_if_small(x, input_shape)
    base = _RESNETS[arch](weights=None, include_top=False, input_tensor=x, pooling="avg")
    return _logits(base.output, num_classes)


def _build_mobilenet(arch, inputs, input_shape, num_classes, alpha):
    x = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="normalize")(inputs)
    x = _resize_if_small(x, input_shape)
    common = dict(weights=None, include_top=False, input_tensor=x, pooling="avg", alpha=alpha)
    if arch == "mobilenet_v2":
        base = keras.applications.MobileNetV2(**common)
    else:
        base = keras.applications.MobileNetV3Small(**common, include_preprocessing=False)
    return _logits(base.output, num_classes)


@contextlib.contextmanager
def _seeded(seed):
    """Seeds Python's ``random`` (where ``keras.random.make_default_seed`` draws
    from) for the body, then restores its state (see :func:`build`)."""
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
    if dims is None or len(dims) != 3 or not all(_is_int(d) and int(d) > 0 for d in dims):
        raise ValueError(f"input_shape must be (height, width, channels) with three positive "
                         f"integers, e.g. (28, 28, 1) or (32, 32, 3); got {input_shape!r}. (Do "
                         "not include the batch dimension.)")
    return tuple(int(d) for d in dims)


def _is_int(value):
    return not isinstance(value, bool) and hasattr(value, "__index__")


def _check_num_classes(num_classes):
    if not _is_int(num_classes) or int(num_classes) < 2:
        raise ValueError(f"num_classes must be an integer >= 2 (the number of logits), got "
                         f"{num_classes!r}.")
    return int(num_classes)


def build(spec, input_shape, num_classes, *, name=None, seed=None,
          synchronized_batchnorm=None):
    """Builds the uncompiled functional model named by ``spec`` (:func:`parse_spec`).

    It maps raw pixels of ``input_shape = (height, width, channels)`` (no
    batch axis) to ``num_classes >= 2`` float32 logits, as the module
    docstring says; ``name`` defaults to the architecture name. With an int
    ``seed`` the initial weights (and Dropout's default seeds) are a function
    of ``seed`` alone: the builder seeds Python's ``random``, from which Keras
    3 draws every unseeded initializer's seed, and restores its state (NumPy /
    TensorFlow seeds are untouched). With None, the current global Python
    random state decides (e.g. ``keras.utils.set_random_seed``). A bad
    argument is a ValueError.

    ``synchronized_batchnorm``: whether the model's BatchNormalization layers
    (``cnn:batchnorm=1``, ``resnet_cifar``, ``resnet*``, ``mobilenet*``)
    compute their batch statistics over the global batch of all replicas
    (module docstring). None (the default) decides by the strategy in scope:
    True when ``tf.distribute.get_strategy().num_replicas_in_sync > 1``. The
    choice changes no initial weight: the same ``seed`` gives the same
    weights either way.
    """
    arch, options = parse_spec(spec)
    input_shape = _check_input_shape(input_shape)
    num_classes = _check_num_classes(num_classes)
    if seed is not None and not _is_int(seed):
        raise ValueError(f"seed must be an int or None, got {seed!r}.")
    seed = None if seed is None else int(seed)
    if synchronized_batchnorm not in (None, True, False):
        raise ValueError(f"synchronized_batchnorm must be True, False or None (decided by the "
                         f"strategy in scope), got {synchronized_batchnorm!r}.")

    with _seeded(seed):
        inputs = keras.Input(shape=input_shape, name="pixels")
        if arch == "mlp":
            outputs = _build_mlp(inputs, num_classes, **options)
        elif arch == "cnn":
            outputs = _build_cnn(inputs, num_classes, **options)
        elif arch == "resnet_cifar":
            outputs = _build_resnet_cifar(inputs, num_classes, **options)
        elif arch in _RESNETS:
            outputs = _build_resnet_imagenet(arch, inputs, input_shape, num_classes)
        elif arch in ("mobilenet_v2", "mobilenet_v3_small"):
            outputs = _build_mobilenet(arch, inputs, input_shape, num_classes, **options)
        else:  # pragma: no cover - ARCHITECTURES and this switch agree
            raise AssertionError(arch)
        model = keras.Model(inputs, outputs, name=name or arch)
    if synchronized_batchnorm is None:
        synchronized_batchnorm = tf.distribute.get_strategy().num_replicas_in_sync > 1
    if synchronized_batchnorm and _batchnorm_layers(model):
        # keras.applications builds its own BatchNormalization layers: a copy
        # with synchronized ones (same names, same weights) serves every arch.
        model = synchronize_batchnorm(model)
    return model


def _batchnorm_layers(model):
    """Every BatchNormalization layer of ``model``, nested models included."""
    found, stack = [], [model]
    while stack:
        layer = stack.pop()
        if isinstance(layer, keras.layers.BatchNormalization):
            found.append(layer)
        elif isinstance(layer, keras.Model):
            stack.extend(reversed(layer.layers))
    return found


def unsynchronized_batchnorm(model):
    """The names of ``model``'s trainable BatchNormalization layers that are not
    synchronized (nested functional/Sequential models included).

    Under a strategy with N > 1 replicas each of them normalises by the
    statistics of its replica's 1/N of the batch, so the weights trained
    differ from one device's (:func:`synchronize_batchnorm` is the fix). A
    non-trainable BatchNormalization runs in inference mode (moving
    statistics) and is not listed.
    """
    return [layer.name for layer in _batchnorm_layers(model)
            if layer.trainable and not layer.synchronized]


def replicas_batchnorm_note(model, replicas, role="student"):
    """The warning owed when ``model`` trains over ``replicas`` replicas with
    unsynchronized BatchNormalization (:func:`unsynchronized_batchnorm`), or
    None when there is nothing to say (one replica, or none of them)."""
    names = unsynchronized_batchnorm(model) if replicas > 1 else []
    if not names:
        return None
    listed = ", ".join(repr(n) for n in names[:3]) + (f" and {len(names) - 3} more"
                                                      if len(names) > 3 else "")
    return (f"the {role} {model.name!r} trains over {replicas} replicas with "
            f"unsynchronized BatchNormalization ({listed}): each replica normalises by its "
            f"own 1/{replicas} of the batch, so the weights differ from one device's. Fix: "
            f"build it inside the strategy scope with keras_kd.models.build (synchronized by "
            f"default there), pass keras_kd.models.synchronize_batchnorm({role}), or use "
            f"keras.layers.BatchNormalization(synchronized=True).")


def synchronize_batchnorm(model):
    """A copy of the functional or Sequential ``model`` whose BatchNormalization
    layers are ``synchronized=True``: under ``tf.distribute`` their batch mean
    and variance are all-reduced over the global batch, so 1 device and N
    replicas train the same weights (up to float32 rounding). Layer names and
    all weights (moving statistics included) are copied; other layers are
    rebuilt from their configs, as ``keras.models.clone_model`` does. Call it
    inside the strategy's scope (its variables are created there). At
    inference it computes exactly what ``model`` computes. TensorFlow backend
    only. A subclassed model cannot be copied: ValueError naming the fix.
    """
    def clone(layer):
        config = layer.get_config()
        if isinstance(layer, keras.layers.BatchNormalization):
            config["synchronized"] = True
        return layer.__class__.from_config(config)

    try:
        copy = keras.models.clone_model(model, clone_function=clone, recursive=True)
    except ValueError as err:
        raise ValueError(
            f"cannot copy model {model.name!r} to synchronize its BatchNormalization "
            f"({str(err).splitlines()[0][:200]}). Fix: build its layers with "
            "keras.layers.BatchNormalization(synchronized=True), or make it a "
            "functional or Sequential model.") from None
    copy.set_weights(model.get_weights())
    return copy


def count_params(model) -> int:
    """Total number of weights of a built model: trainable + non-trainable.

    Counts every element of every variable in ``model.weights`` (so
    BatchNormalization's moving mean and variance are included), each
    variable once.
    """
    unique = {id(w): w for w in model.weights}.values()
    return sum(math.prod(int(d) for d in w.shape) for w in unique)
