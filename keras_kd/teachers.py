"""The teacher as an input: loading it, checking it fits, and its view for the students.

    teacher = teachers.load("teacher.keras", info)   # or .h5, or a SavedModel folder
    view, _ = teachers.logits_view(teacher, preprocessing="unit")  # raw pixels -> logits

A teacher file is read by :func:`keras_kd.modelfiles.load_model` (as is every
model keras_kd reads from disk), so a missing or unreadable file gets one clear
error that names the flag.

A teacher trained elsewhere often expects other inputs than keras_kd's raw
0-255 pixels, or another image size: :func:`logits_view` applies its
preprocessing and resizing (:mod:`keras_kd.preprocessing`) inside the view
only, so the student and its export keep taking raw pixels; an ensemble's view
averages the members' soft targets. :mod:`keras_kd.diagnostics` says whether a
teacher is worth distilling.
"""

import math

import keras
import numpy as np
import tensorflow as tf

from keras_kd import checks, losses, modelfiles, shapes, views
from keras_kd import preprocessing as prep

__all__ = ["load", "check_fits", "logits_view", "check_logits",
           "teacher_list", "check_teacher_settings", "EnsembleLogits"]


def check_fits(model, info, role, resize_ok=False):
    """Raises ValueError if ``model``'s input or classes do not fit ``info``.

    The input must have the images' rank and channels, and (unless
    ``resize_ok``, when the images are resized for the model) their height and
    width where the model fixes them; the output, ``info.num_classes`` classes.
    """
    in_shape, want = tuple(model.inputs[0].shape[1:]), tuple(info.input_shape)
    hw_only = shapes.resizable(in_shape, want)
    if not shapes.shapes_compatible([in_shape], [want]) and not (resize_ok and hw_only):
        if hw_only:
            fix = f"use the dataset the {role} was trained on, or --image_size to resize the images."
        else:
            fix = (f"use a {role} that takes images of rank {len(want)} with {want[-1]} "
                   "channel(s), or the dataset it was trained on (resizing changes height and "
                   "width, never the channels).")
        raise ValueError(
            f"the {role} takes inputs of shape {in_shape}, but {info.name!r} has "
            f"images of shape {want}. Fix: {fix}")
    classes = model.outputs[0].shape[-1]
    if classes != info.num_classes:
        raise ValueError(
            f"the {role} outputs {classes} classes, but {info.name!r} has "
            f"{info.num_classes}. Fix: use a {role} trained on this dataset."
        )


def load(path, info, flag="--teacher", resize_ok=False):
    """Loads a saved classifier (:func:`keras_kd.modelfiles.load_model`; ``flag`` names it in errors) and
    checks it fits ``info`` (:func:`check_fits`)."""
    model = modelfiles.load_model(path, flag)
    check_fits(model, info, "teacher", resize_ok)
    return model


def logits_view(teacher, dtype="float32", *, preprocessing=None, weights=None,
                temperature=None, input_shape=None, role="teacher"):
    """The frozen teacher's (or ensemble's) inference view: ``(view, recovered)``.

    The one place a teacher's view is built: the Distiller, the cache and the
    job call it. Call the view with ``training=False``; it outputs logits.

    ``teacher``: a model, or a list of models (an ensemble). Each member runs in
    ``dtype`` (float32, bfloat16 or float16: :func:`keras_kd.views.with_compute_dtype`,
    a copy for a reduced dtype), frozen (``trainable = False``), and stops
    before a final softmax (:func:`keras_kd.views.logits_model`; ``recovered``
    is True when any member's was). ``preprocessing``: a spec
    (:func:`parse_preprocessing`) for all members, or a list of one per member.
    ``weights``: None (equal) or one number ≥ 0 per member, normalised to sum
    1 (a member of weight 0 is not run). ``input_shape``: the shape (without
    the batch axis) of the batches the view reads, e.g. the student's; None:
    the teacher's own. ``role``: what errors call a single teacher (e.g. the
    job's ``teacher_2``); an ensemble's members are ``teacher i (name)``.

    Each member's logits view is probed once (:func:`check_logits`, eagerly, on
    a few seeded 0-255 images of its input shape, or of ``input_shape`` where
    its own leaves height or width open): a teacher whose outputs are
    probabilities (a softmax keras_kd could not cut, e.g. in a ``Lambda``) is
    refused here, before any student trains on them.

    - One model (or a one-member list), preprocessing ``"none"`` and batches of
      its own size: today's view, bit for bit (no wrapper: for float32 and a
      float32 teacher ending in logits, ``teacher`` itself).
    - Otherwise a functional view ``input → [resize to the member's own height
      and width] → [preprocessing] → member's logits``
      (:func:`keras_kd.preprocessing.resize_images`: a no-op for a batch of its size;
      image views then read any height and width).
    - An ensemble of ``M ≥ 2`` members with logits ``t_i`` and weights ``w_i``:
      the soft target is the weighted mean of the members' softened
      probabilities (Hinton et al. 2015, §2), ``p = Σ_i w_i softmax(t_i / T)``,
      returned as logits ``z = T · log p`` — computed in float32 as ``T ·
      logsumexp_i(log w_i + log_softmax(t_i / T))`` (:class:`EnsembleLogits`),
      so ``softmax(z / T) = p`` exactly in exact arithmetic. ``temperature``
      (``T``, the Distiller's) is required.

    Raises:
      ValueError: not a model (or an empty list), an unknown ``dtype`` or
        preprocessing, a wrong number of specs or weights, negative or all-zero
        weights, an ensemble without ``temperature``, members that disagree on
        classes or channels, a subclassed teacher with a reduced ``dtype`` or
        ending in a softmax, one that needs a wrapper and has no known input, or
        one that outputs probabilities (:func:`check_logits`).
    """
    members = teacher_list(teacher)
    specs, weights = check_teacher_settings(len(members), preprocessing, weights)
    if len(members) > 1:
        if temperature is None:
            raise ValueError(f"an ensemble of {len(members)} teachers needs the temperature T of "
                             "its soft targets. Fix: pass temperature= (the Distiller's).")
        temperature = losses.check_temperature(temperature)
    specs = specs if isinstance(specs, tuple) else (specs,) * len(members)
    weights = weights or (1.0 / len(members),) * len(members)
    runs, recovered = [], False
    for i, (member, spec, weight) in enumerate(zip(members, specs, weights)):
        who = role if len(members) == 1 else f"teacher {i + 1} ({member.name!r})"
        runner = views.with_compute_dtype(member, dtype)
        runner.trainable = False
        member.trainable = False
        if i:
            shapes.check_same_io(runner, members[0], (who, "teacher 1"))
        if weight > 0:
            view, found = views.logits_model(runner, who)
            check_logits(view, who if i or len(members) > 1 else f"{who} ({member.name!r})",
                         input_shape)
            runs.append((runner, view, spec, weight))
            recovered = recovered or found
    if len(runs) == 1:
        runner, view, spec, _ = runs[0]
        own = shapes.static_io(runner)[0]
        if spec == "none" and (input_shape is None or own is None
                               or shapes.shapes_compatible(own, [tuple(input_shape)])):
            return view, recovered
    inputs = prep.any_size_input(runs[0][0])
    outputs = [_member_graph(runner, view, spec, i)(inputs)
               for i, (runner, view, spec, _) in enumerate(runs)]
    if len(runs) > 1:
        outputs = [EnsembleLogits([w for *_, w in runs], temperature)(outputs)]
    name = members[0].name if len(members) == 1 else "teacher_ensemble"
    wrapped = keras.Model(inputs, outputs[0], name=f"{name}_view")
    wrapped.trainable = False
    return wrapped, recovered


# ---------------------------------------------------------------------------
# Ensembles and wrapped views (logits_view's parts).


#: Rows of the probe batch :func:`check_logits` feeds a teacher's logits view.
PROBE_ROWS = 3


def _known_inputs(model):
    """``model.inputs``, or None where Keras does not know them (subclassed models)."""
    try:
        return model.inputs or None
    except (AttributeError, TypeError, ValueError):
        return None


def _probe_shape(view, input_shape):
    """The input shape (batch first) to probe ``view`` with, or None if unknown."""
    inputs = _known_inputs(view)
    if not inputs:  # e.g. a subclassed model: it reads the batches it is given
        return None if input_shape is None else (PROBE_ROWS, *map(int, input_shape))
    if len(inputs) != 1:
        return None
    batch, *shape = inputs[0].shape
    if None in shape and input_shape is not None and len(input_shape) == len(shape):
        shape = [own if own is not None else int(x) for own, x in zip(shape, input_shape)]
    return None if None in shape else (batch or PROBE_ROWS, *shape)


def check_logits(view, role="teacher", input_shape=None):
    """Raises ValueError when ``view`` (a model meant to output logits) outputs
    class probabilities.

    ``view`` is run eagerly (``training=False``) on :data:`PROBE_ROWS` seeded
    images uniform in [0, 255] of its input shape (open height / width taken
    from ``input_shape``). A softmax output is a distribution on *any* input,
    so the probe needs no data: if every output is ≥ 0 and every row sums to 1
    (:func:`keras_kd.checks.are_probabilities`: within 1e-3; 3e-2 for 16-bit
    outputs), the view outputs probabilities. Logits pass: both conditions on
    every row of random inputs do not happen by chance (logits that are all ≥ 0,
    e.g. after a ReLU, do not sum to 1).

    Not probed (returns): a view whose input shape stays unknown (a subclassed
    model, unless ``input_shape`` is given), a call inside a ``tf.function``,
    a view with several outputs, or one that fails to run on the probe (its own
    error then comes at the first batch).
    """
    shape = _probe_shape(view, input_shape)
    if shape is None or not tf.executing_eagerly():
        return
    x = np.random.default_rng(0).uniform(0, 255, shape).astype(np.float32)
    try:
        inputs = _known_inputs(view)
        z = view(tf.cast(x, inputs[0].dtype) if inputs else x, training=False)
    except (tf.errors.OpError, ValueError, TypeError):
        return
    if isinstance(z, (list, tuple, dict)):
        return
    if checks.are_probabilities(keras.ops.convert_to_numpy(tf.cast(z, tf.float64)), z.dtype):
        raise ValueError(
            f"the {role} outputs probabilities, not logits: on {shape[0]} "
            "probe images its outputs are all >= 0 and every row sums to 1, so it ends in a "
            "softmax keras_kd cannot cut off (inside a Lambda or custom layer, a subclassed "
            "model's call(), or a SavedModel). Distilled as logits they would soften "
            "nothing (softmax(p / T) is nearly uniform). Fix: give keras_kd the model with "
            "that softmax as its own last layer, keras.layers.Softmax() or "
            "activation='softmax' on the last Dense (keras_kd cuts those off itself), or "
            "ending in logits (Dense(num_classes) without activation); for a SavedModel, "
            "re-export it from the layer before the softmax.")


def teacher_list(teacher):
    """``teacher`` as a list of models: ``[teacher]``, or the list / tuple of an
    ensemble. ValueError for anything else, or an empty list."""
    members = list(teacher) if isinstance(teacher, (list, tuple)) else [teacher]
    if not members:
        raise ValueError("teacher is an empty list. Fix: pass a keras.Model, or a list of "
                         "them (an ensemble).")
    for i, member in enumerate(members):
        if not isinstance(member, keras.Model):
            where = "teacher" if len(members) == 1 else f"teacher[{i}]"
            raise ValueError(f"{where} must be a keras.Model, got {type(member).__name__}.")
    return members


def _check_weights(weights, n, name):
    """``weights`` (one per teacher) normalised to sum 1, a tuple."""
    try:
        values = [float(w) for w in weights]
        if any(isinstance(w, (bool, str)) for w in weights):
            raise TypeError
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a list of numbers, one per teacher, got "
                         f"{weights!r}.") from None
    if len(values) != n:
        raise ValueError(f"{name} lists {len(values)} weight(s) for {n} teacher(s). Fix: one "
                         "weight per teacher, in the teachers' order (or none: equal).")
    if not all(math.isfinite(w) and w >= 0 for w in values):
        raise ValueError(f"{name} must be finite numbers >= 0, got {values}. Fix: weigh each "
                         "teacher by a non-negative number.")
    total = math.fsum(values)
    if total <= 0:
        raise ValueError(f"{name} are all zero ({values}): no teacher would teach. Fix: give "
                         "at least one teacher a weight > 0.")
    return tuple(w / total for w in values)


def check_teacher_settings(num_teachers, preprocessing=None, weights=None, prefix="", *,
                           dtype="float32", features=False):
    """``(preprocessing, weights)`` of ``num_teachers`` teachers, checked.

    ``preprocessing``: one spec (for all) → its canonical string
    (:func:`parse_preprocessing`); a list → a tuple of ``num_teachers``
    canonical strings (a one-item list applies to all). ``weights``: None, or
    ``num_teachers`` numbers ≥ 0, not all zero → a tuple normalised to sum 1.
    ``features``: feature terms are asked for; they read one float32 teacher's
    layers on the raw batch, so they are refused with a reduced ``dtype``
    (the teacher's compute dtype), an ensemble or a preprocessing.
    ValueErrors name ``{prefix}teacher_preprocessing``, ``{prefix}teacher_weights``,
    ``{prefix}teacher_dtype`` and ``{prefix}features``.
    """
    if features and dtype != "float32":
        raise ValueError(
            f"{prefix}teacher_dtype={dtype!r} cannot be combined with {prefix}features "
            "(feature terms): the feature views read the float32 teacher. Fix: drop "
            f"{prefix}teacher_dtype, or {prefix}features.")
    if features and num_teachers > 1:
        raise ValueError(
            f"{prefix}features (feature terms) read one teacher's layers; with an ensemble of "
            f"{num_teachers} teachers there is no one teacher to read them from. Fix: drop "
            f"{prefix}features, or distil from one teacher.")
    if isinstance(preprocessing, (list, tuple)):
        specs = tuple(prep.parse_preprocessing(s) for s in preprocessing)
        if len(specs) not in (1, num_teachers):
            raise ValueError(
                f"{prefix}teacher_preprocessing lists {len(specs)} specs for {num_teachers} "
                "teacher(s). Fix: one spec for all, or one per teacher, in their order.")
        specs = specs if len(specs) > 1 else specs * num_teachers
        preprocessing = specs[0] if num_teachers == 1 else specs
    else:
        preprocessing = prep.parse_preprocessing(preprocessing)
    if features and set(preprocessing if isinstance(preprocessing, tuple)
                        else [preprocessing]) != {"none"}:
        raise ValueError(
            f"{prefix}features (feature terms) read the teacher's layers on the raw batch, so "
            f"they cannot be combined with {prefix}teacher_preprocessing={preprocessing!r}. "
            "Fix: put the preprocessing inside the teacher (e.g. a Rescaling layer first) and "
            f"drop {prefix}teacher_preprocessing, or drop {prefix}features.")
    if weights is not None:
        weights = _check_weights(weights, num_teachers, f"{prefix}teacher_weights")
    return preprocessing, weights


def _member_graph(runner, view, spec, index):
    """One member's path: ``input → [resize to its size] → [preprocessing] → logits``."""
    inputs = prep.any_size_input(runner)
    x = inputs
    resize = prep.resize_layer(runner)
    if resize is not None:
        x = resize(x)
    layer = prep.preprocessing_layer(spec, inputs.shape[-1])
    if layer is not None:
        x = layer(x)
    return keras.Model(inputs, view(x), name=f"member_{index}_{runner.name}")


@keras.saving.register_keras_serializable(package="keras_kd")
class EnsembleLogits(keras.layers.Layer):
    """The ensemble's logits from its members' ``[t_1, ..., t_M]`` (each ``[B, N]``):
    ``T · logsumexp_i(log w_i + log_softmax(t_i / T))`` in float32, i.e. ``T · log
    Σ_i w_i softmax(t_i / T)`` (``member_weights`` sum to 1)."""

    def __init__(self, member_weights, temperature, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.member_weights = [float(w) for w in member_weights]
        self.temperature = float(temperature)

    def call(self, logits):
        t = self.temperature
        log_p = tf.stack([tf.nn.log_softmax(tf.cast(z, tf.float32) / t, axis=-1)
                          for z in logits])
        log_w = tf.math.log(tf.constant(self.member_weights, tf.float32))[:, None, None]
        z = t * tf.reduce_logsumexp(log_w + log_p, axis=0)
        # centred over the classes: the soft targets are unchanged, and a loss that
        # reads logits directly (mse_logits) gets zero-mean ones, like a model's
        return z - tf.reduce_mean(z, axis=-1, keepdims=True)

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        return {**super().get_config(), "member_weights": self.member_weights,
                "temperature": self.temperature}


