"""Augmentation applied once per batch, seen by the teacher and the student alike.

Distillation transfers only what the teacher's outputs carry. On the images a
teacher was trained on, its outputs are nearly one-hot; on a randomly
jittered copy they are soft and informative. Hinton et al. (2015, §3)
jittered MNIST by up to two pixels; Beyer et al. (2022) showed the teacher and
student must see *the same* augmented view ("consistent teaching").

keras_kd therefore augments in the ``tf.data`` pipeline, once per batch,
before the :class:`~keras_kd.Distiller` sees the batch: the teacher's targets
are computed on exactly the images the student trains on. Evaluation data is
never augmented.

Policies are named by a spec string; ``+`` chains them::

    "none"                    no augmentation
    "jitter"                  random translation by up to 2 pixels
    "jitter:pixels=3"         ... by up to 3 pixels
    "jitter:pixels=2,rotation=10,zoom=0.1"   plus ±10° rotation, ±10 % zoom

keras-cv 0.9's vectorized layers ignore ``training=False`` and always
augment, so these layers must never be placed inside a model that is
evaluated or exported; keras_kd only maps them over the training dataset.

All policies take raw pixel values (0–255, the convention of
:mod:`keras_kd.data`) and return them in the same range. Every keras-cv
reference lives in this module.
"""

import keras
import tensorflow as tf

__all__ = ["POLICIES", "build", "apply", "parse"]

_JITTER_OPTIONS = {"pixels": 2.0, "rotation": 0.0, "zoom": 0.0}
POLICIES = {"none": {}, "jitter": _JITTER_OPTIONS}


def parse(spec):
    """``"jitter:pixels=3+none"`` → ``[("jitter", {"pixels": 3.0, ...}), ...]``.

    Raises:
      ValueError: an unknown policy (the message lists the valid ones), an
        unknown option, or a value that is not a non-negative number.
    """
    if spec is None:
        return []
    if not isinstance(spec, str):
        raise ValueError(f"an augmentation policy is a string, got {spec!r}.")
    parsed = []
    for part in filter(None, (p.strip() for p in spec.split("+"))):
        name, _, opts = part.partition(":")
        name = name.strip().lower()
        if name not in POLICIES:
            raise ValueError(
                f"unknown augmentation policy {name!r}. Valid policies: "
                f"{', '.join(sorted(POLICIES))} (chain them with '+', e.g. "
                "'jitter:pixels=2')."
            )
        options = dict(POLICIES[name])
        for item in filter(None, (o.strip() for o in opts.split(","))):
            key, eq, value = item.partition("=")
            key = key.strip()
            if not eq or key not in options:
                valid = ", ".join(sorted(options)) or "none"
                raise ValueError(
                    f"unknown option {item!r} for augmentation policy {name!r}; "
                    f"valid options: {valid}."
                )
            try:
                number = float(value)
            except ValueError:
                number = -1.0
            if not number >= 0:
                raise ValueError(
                    f"augmentation option {key}={value!r} must be a "
                    "non-negative number."
                )
            options[key] = number
        if name != "none":
            parsed.append((name, options))
    return parsed


def _jitter_layers(options, input_shape, seed):
    import keras_cv  # imported here: keras-cv is only needed to augment

    height, width = input_shape[0], input_shape[1]
    layers = []
    if options["pixels"] > 0:
        if options["pixels"] >= min(height, width) / 2:
            raise ValueError(
                f"jitter pixels={options['pixels']:g} is too large for "
                f"{height}x{width} images; use less than half the image size."
            )
        layers.append(
            keras_cv.layers.RandomTranslation(
                height_factor=options["pixels"] / height,
                width_factor=options["pixels"] / width,
                fill_mode="constant",
                seed=seed,
            )
        )
    if options["rotation"] > 0:
        layers.append(
            keras_cv.layers.RandomRotation(
                factor=options["rotation"] / 360.0, fill_mode="constant",
                seed=None if seed is None else seed + 1,
            )
        )
    if options["zoom"] > 0:
        layers.append(
            keras_cv.layers.RandomZoom(
                height_factor=options["zoom"], fill_mode="constant",
                seed=None if seed is None else seed + 2,
            )
        )
    return layers


def build(spec, input_shape, seed=None):
    """A ``keras.Sequential`` of keras-cv layers for ``spec``, or None for "none".

    Args:
      spec: a policy spec (see the module docstring).
      input_shape: ``(H, W, C)`` of the images.
      seed: makes the random transformations reproducible.
    """
    layers = []
    for name, options in parse(spec):
        if name == "jitter":
            layers.extend(_jitter_layers(options, input_shape, seed))
    if not layers:
        return None
    return keras.Sequential(layers, name="augment")


def apply(dataset, spec, input_shape=None, seed=None):
    """Maps ``dataset`` of ``(images, labels[, weights])`` batches through ``spec``.

    Runs once per batch in the input pipeline (parallel, before prefetch), so
    both models of a Distiller see the same augmented images. Returns
    ``dataset`` unchanged for ``"none"``.
    """
    if input_shape is None:
        input_shape = tuple(dataset.element_spec[0].shape[1:])
    layer = build(spec, input_shape, seed=seed)
    if layer is None:
        return dataset

    @tf.autograph.experimental.do_not_convert
    def augment(images, *rest):
        return (layer(images, training=True), *rest)

    return dataset.map(augment, num_parallel_calls=tf.data.AUTOTUNE).prefetch(
        tf.data.AUTOTUNE
    )
