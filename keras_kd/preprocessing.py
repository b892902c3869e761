"""What happens to a batch before a model reads it: the teacher's preprocessing and resizing.

keras_kd feeds raw 0-255 pixels. A teacher trained elsewhere often expects
something else (0-1 inputs, an ImageNet convention): its *preprocessing*
(:data:`PREPROCESSING`, :func:`preprocess`) is applied inside the teacher's
view only (:func:`keras_kd.teachers.logits_view`), so the student and its
export keep taking raw pixels. Teacher and student may also read images of
different sizes: each model gets each batch at its own size
(:func:`resize_images`: bilinear, antialiased when shrinking).
"""

import math

import keras
import tensorflow as tf

from keras_kd.shapes import static_io

__all__ = ["PREPROCESSING", "parse_preprocessing", "preprocess", "Preprocessing",
           "preprocessing_layer", "input_shape", "image_size", "sizes_differ", "resize_images",
           "ResizeTo", "resize_layer", "any_size_input", "at_sizes_of", "at_own_size"]


# ---------------------------------------------------------------------------
# Preprocessing: how the teacher expects its input.

#: Named teacher preprocessings (the conventions of
#: ``keras.applications.imagenet_utils.preprocess_input(mode=...)`` for
#: tf / torch / caffe), besides the affine form ``scale=S,offset=O``.
PREPROCESSING = ("none", "unit", "tf", "torch", "caffe")

_DESCRIBED = ("none (raw 0-255), unit (x/255), tf (x/127.5 - 1), torch (x/255, ImageNet "
              "mean/std), caffe (RGB->BGR, ImageNet mean subtracted), or scale=S,offset=O")
_TORCH_MEAN, _TORCH_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


def _bad_spec(spec, why=""):
    return ValueError(f"unknown teacher preprocessing {spec!r}{why}; valid: {_DESCRIBED}.")


def _number(text, spec):
    """A finite float from ``text`` (``a/b`` allowed, e.g. ``1/255``)."""
    try:
        num, _, den = text.partition("/")
        value = float(num) / float(den) if den else float(num)
    except (ValueError, ZeroDivisionError):
        raise _bad_spec(spec, f" ({text!r} is not a number)") from None
    if not math.isfinite(value):
        raise _bad_spec(spec, f" ({text!r} is not finite)")
    return value


def parse_preprocessing(spec):
    """The canonical form of a teacher preprocessing ``spec``.

    One of :data:`PREPROCESSING` (None or "" → ``"none"``, case and spaces
    ignored), or the affine ``x·S + O`` written ``scale=S,offset=O`` (either key
    optional: S defaults to 1, O to 0; a number may be a fraction ``1/255``),
    canonically ``"scale=S,offset=O"`` with 9 significant digits (the identity
    is ``"none"``). ValueError naming the valid forms otherwise, or for S = 0.
    """
    if spec is None:
        return "none"
    if not isinstance(spec, str):
        raise _bad_spec(spec)
    text = "".join(spec.split()).lower()
    if not text:
        return "none"
    if text in PREPROCESSING:
        return text
    if "=" not in text:
        raise _bad_spec(spec)
    values = {}
    for part in text.split(","):
        key, eq, value = part.partition("=")
        if not eq or key not in ("scale", "offset") or key in values:
            raise _bad_spec(spec, f" (in {part!r})")
        values[key] = _number(value, spec)
    scale, offset = values.get("scale", 1.0), values.get("offset", 0.0)
    if scale == 0:
        raise _bad_spec(spec, " (scale=0 maps every image to the same input)")
    if scale == 1 and offset == 0:
        return "none"
    return f"scale={scale:.9g},offset={offset:.9g}"


def _affine(spec):
    """(scale, offset) of a canonical affine spec."""
    scale, offset = (float(part.partition("=")[2]) for part in spec.split(","))
    return scale, offset


def _check_channels(spec, channels):
    if spec in ("torch", "caffe") and channels is not None and channels != 3:
        raise ValueError(
            f"teacher preprocessing {spec!r} needs 3 (RGB) channels, the images have "
            f"{channels}. Fix: use none, unit, tf or scale=S,offset=O for these images, or "
            "a teacher (and dataset) with RGB images.")


def preprocess(x, spec):
    """``x`` (raw 0-255 pixels, channels last) as the teacher expects it, float32.

    none: x; unit: x/255; tf: x/127.5 - 1; torch: x/255, then (x - mean)/std per
    channel with the ImageNet mean (0.485, 0.456, 0.406) and std (0.229, 0.224,
    0.225); caffe: channels reversed (RGB → BGR), then the ImageNet mean
    (103.939, 116.779, 123.68) in BGR order subtracted; ``scale=S,offset=O``:
    x·S + O. torch and caffe need 3 channels (ValueError otherwise).
    """
    spec = parse_preprocessing(spec)
    x = tf.cast(x, tf.float32)
    _check_channels(spec, x.shape[-1])
    if spec == "none":
        return x
    if spec == "unit":
        return x / 255.0
    if spec == "tf":
        return x / 127.5 - 1.0
    if spec == "torch":
        return (x / 255.0 - tf.constant(_TORCH_MEAN)) / tf.constant(_TORCH_STD)
    if spec == "caffe":
        return tf.reverse(x, axis=[-1]) - tf.constant(_CAFFE_MEAN_BGR)
    scale, offset = _affine(spec)
    return x * scale + offset


@keras.saving.register_keras_serializable(package="keras_kd")
class Preprocessing(keras.layers.Layer):
    """A layer applying :func:`preprocess` with ``spec`` (in float32 by default)."""

    def __init__(self, spec="none", **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.spec = parse_preprocessing(spec)

    def call(self, inputs):
        return preprocess(inputs, self.spec)

    def compute_output_shape(self, input_shape):
        _check_channels(self.spec, input_shape[-1])
        return input_shape

    def get_config(self):
        return {**super().get_config(), "spec": self.spec}


def preprocessing_layer(spec, channels=None):
    """A :class:`Preprocessing` layer for ``spec``, or None for ``"none"`` (the
    default path adds nothing). ``channels`` (if known) is checked at once."""
    spec = parse_preprocessing(spec)
    _check_channels(spec, channels)
    return None if spec == "none" else Preprocessing(spec)


# ---------------------------------------------------------------------------
# Each model at its own resolution.


def input_shape(model):
    """The shape (without the batch axis) of ``model``'s one input, or None
    (several inputs, or not known statically)."""
    inputs = static_io(model)[0]
    return inputs[0] if inputs and len(inputs) == 1 else None


def image_size(model):
    """``(height, width)`` of a model with one image input ``[B, H, W, C]``
    (either may be None: any size), or None (not an image model, or unknown)."""
    inputs = static_io(model)[0]
    if not inputs or len(inputs) != 1 or len(inputs[0]) != 3:
        return None
    return tuple(inputs[0][:2])


def sizes_differ(a, b):
    """True when models ``a`` and ``b`` both fix their image height and width
    (:func:`image_size`) and these differ."""
    sa, sb = image_size(a), image_size(b)
    return (sa is not None and sb is not None and None not in sa + sb and sa != sb)


def _resize(images, size, antialias):
    out = tf.image.resize(images, size, method="bilinear", antialias=antialias)
    return tf.cast(out, images.dtype) if images.dtype.is_floating else out


def resize_images(images, size):
    """A batch ``[B, H, W, C]`` at ``size = (height, width)``, for a model of that size.

    ``tf.image.resize(method="bilinear")`` (half-pixel centres), with
    ``antialias=True`` when either side shrinks (a triangle filter as wide as
    the scale: without it, bilinear shrinking skips pixels and aliases fine
    detail); enlarging is plain bilinear interpolation (antialiasing changes
    nothing there). The batch itself (no op at all) when its height and width
    are already ``size``. Decided at trace time from the static shape; where
    height or width are unknown then (a graph traced for several sizes), the
    same rule runs as a ``tf.cond``. Floating images keep their dtype.
    """
    size = tuple(int(s) for s in size)
    static = tuple(images.shape[1:3])
    if None not in static:
        if static == size:
            return images
        return _resize(images, size, static[0] > size[0] or static[1] > size[1])
    hw = tf.shape(images)[1:3]
    target = tf.constant(size, hw.dtype)
    out = tf.cond(
        tf.reduce_all(tf.equal(hw, target)), lambda: images,
        lambda: tf.cond(tf.reduce_any(hw > target), lambda: _resize(images, size, True),
                        lambda: _resize(images, size, False)))
    return tf.ensure_shape(out, [images.shape[0], *size, images.shape[-1]])


@keras.saving.register_keras_serializable(package="keras_kd")
class ResizeTo(keras.layers.Layer):
    """A layer giving each batch :func:`resize_images` at ``(height, width)``
    (a no-op for batches of that size); float32 by default, no weights."""

    def __init__(self, height, width, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.height, self.width = int(height), int(width)

    def call(self, images):
        return resize_images(images, (self.height, self.width))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.height, self.width, input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "height": self.height, "width": self.width}


def resize_layer(model):
    """A :class:`ResizeTo` to ``model``'s fixed image size, or None (not an image
    model, or one that takes any height / width)."""
    size = image_size(model)
    if size is None or None in size:
        return None
    return ResizeTo(*size, name=f"resize_to_{size[0]}x{size[1]}")


def any_size_input(model):
    """A ``keras.Input`` for batches ``model`` can read: images of any height and
    width (its channels) for an image model, else its own input shape."""
    inputs = static_io(model)[0]
    if not inputs or len(inputs) != 1:
        raise ValueError(
            f"{model.name!r} has {len(inputs) if inputs else 'no known'} input(s); a resized, "
            "preprocessed or ensembled view needs one known input. Fix: use a model with a "
            "single input, built with keras.Input(shape) (or called once) before distilling.")
    shape = inputs[0]
    return keras.Input((None, None, shape[-1]) if len(shape) == 3 else shape)


def at_sizes_of(view, model, others, tapped=False):
    """``view`` (of ``model``) for batches the ``others`` read too: :func:`at_own_size`
    when the image size of any of them differs from ``model``'s (:func:`sizes_differ`),
    else ``view`` itself. ``tapped``: feature taps are read (both models' layers on
    one batch), so a size difference is a ValueError."""
    if not any(sizes_differ(other, model) for other in others):
        return view
    if tapped:
        raise ValueError(
            "feature terms read both models' layers on one batch, but the teacher takes "
            f"{image_size(others[0])} images and the student {image_size(model)}. Fix: build "
            "the student at the teacher's size, or drop features (distil the logits only).")
    return at_own_size(view)


def at_own_size(view, name=None):
    """``view`` reading images of any height and width: each batch is resized to
    its own size first (:class:`ResizeTo`: a no-op at that size). A functional
    model over ``view``'s layers (a new input, no new weights)."""
    inputs = any_size_input(view)
    layer = resize_layer(view)
    x = inputs if layer is None else layer(inputs)
    return keras.Model(inputs, view(x), name=name or f"{view.name}_any_size")
