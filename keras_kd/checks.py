"""Nothing silent: the checks of a batch, as assertions, or recorded under XLA.

A check is ``(ok, message)``: ``ok`` a scalar bool tensor, True when the batch
passes (one reduction over it, e.g. :func:`all_finite`), ``message`` the error
naming the fix. Messages start with ``"keras_kd: "``, end with the first
``"."`` that precedes a quote, bracket or line end, and are ASCII, so that
:func:`step_errors` can read them back out of TensorFlow's error text (the
label checks of :func:`label_checks` follow the same rule).

:class:`BatchChecks` applies them in a training or test step:

- without XLA, as graph assertions: the first failure stops the step before it
  changes a weight, and :func:`step_errors` turns TensorFlow's
  ``InvalidArgumentError`` into a :class:`DataError` whose text starts with the
  check's message;
- under ``jit_compile=True``, where XLA compiles assertions away, by recording
  the first check that failed in a variable, raised as a :class:`DataError`
  after the epoch (:meth:`BatchChecks.callback`) or the run
  (:meth:`BatchChecks.raise_recorded`).

Either way a bad batch is never passed over in silence.

Two rules of "nothing silent" outside the step live here too, each once: data
known to be empty (:func:`check_not_empty`, :class:`EmptyDataError`), and
model outputs that are probabilities rather than logits
(:func:`are_probabilities`).
"""

import contextlib
import re

import keras
import numpy as np
import tensorflow as tf

__all__ = ["DataError", "BatchChecks", "all_finite", "step_errors", "INPUTS_NOT_FINITE",
           "TEACHER_NOT_FINITE", "CACHED_NOT_FINITE", "EmptyDataError", "EMPTY_FIX",
           "describe_data", "is_known_empty", "check_not_empty", "PROBABILITY_SUM_TOLERANCE",
           "are_probabilities", "asserted", "label_checks", "labels_kind",
           "LABEL_SUM_TOLERANCE"]


class DataError(ValueError):
    """A batch the Distiller cannot learn from: inputs or teacher logits with
    NaN or Inf, labels that are not class ids in ``[0, classes)`` or not
    probability distributions. Raised by ``fit`` / ``evaluate`` /
    ``train_on_batch`` / ``test_on_batch`` with the failed check's message,
    which names the fix."""


# A check's message read back out of TensorFlow's error text (see the module's docstring).
_STEP_MESSAGE = re.compile(r"keras_kd: (.+?\.)(?=\]|\"|'|\n|$)")
#: The message of the check of a batch's inputs (:func:`all_finite` of ``x``).
INPUTS_NOT_FINITE = (
    "keras_kd: the inputs x (images) of this batch contain NaN or Inf; training on them turns "
    "every weight into NaN. Fix: clean the data or check the preprocessing (e.g. a division by "
    "a zero standard deviation, a log of 0, a corrupt file).")
#: The message of the check of the teacher's logits for a batch with finite inputs.
TEACHER_NOT_FINITE = (
    "keras_kd: the teacher's logits for this batch contain NaN or Inf although its inputs are "
    "finite. Fix: check the teacher (e.g. teacher.predict on a few batches) and its weights, "
    "or run it in float32 (teacher_dtype='float32': float16 overflows above 65504).")
#: The message of the check of cached teacher logits (offline distillation).
CACHED_NOT_FINITE = (
    "keras_kd: the cached teacher logits of this batch contain NaN or Inf. Fix: rebuild the "
    "teacher cache (keras_kd.cache.build; or delete its folder) from a teacher whose "
    "predictions are finite.")
# Messages of the checks recorded under XLA; a check's code is its index + 1.
_RECORDED = []


def all_finite(values):
    """A scalar bool tensor: every floating tensor of ``values`` (a structure of
    tensors or arrays) is finite, i.e. has no NaN and no Inf; non-floating
    tensors are not checked, and no floating tensor gives True. One
    ``IsFinite`` and one reduction per tensor."""
    flags = [tf.reduce_all(tf.math.is_finite(v)) for v in map(tf.convert_to_tensor,
                                                               tf.nest.flatten(values))
             if v.dtype.is_floating]
    return tf.reduce_all(tf.stack(flags)) if flags else tf.constant(True)


@contextlib.contextmanager
def step_errors():
    """Around a run of steps: a failed batch check (TensorFlow's
    ``InvalidArgumentError`` carrying a ``"keras_kd: ..."`` message, which it
    puts at the end of a long graph trace) is raised as a :class:`DataError`
    whose text starts with that message. Any other error passes unchanged."""
    try:
        yield
    except tf.errors.InvalidArgumentError as err:
        found = _STEP_MESSAGE.search(str(err))
        if found is None:
            raise
        message = found.group(1).replace("\\'", "'")
        raise DataError(f"{message} (A keras_kd check of the batch stopped the step.)") from None


# -- labels ------------------------------------------------------------------------------------


def labels_kind(labels, num_classes):
    """'sparse' or 'dense' from the static shape of the labels."""
    rank = labels.shape.rank
    if rank == 1 or (rank == 2 and labels.shape[-1] == 1):
        return "sparse"
    if rank == 2 and labels.shape[-1] == num_classes:
        return "dense"
    raise ValueError(f"labels of shape {labels.shape} do not fit {num_classes} classes: pass "
                     "integer class ids of shape [batch] or one-hot / soft label vectors of "
                     f"shape [batch, {num_classes}].")


#: How far from 1 a row of one-hot / soft labels may sum (:func:`label_checks`);
#: 16-bit labels get their own rounding (bfloat16: 2^-7) when it is larger.
LABEL_SUM_TOLERANCE = 1e-3
_ROUNDING = {tf.bfloat16: 2.0 ** -7, tf.float16: 2.0 ** -10}


def label_checks(labels, num_classes):
    """The checks of a batch's labels, a list of ``(ok, message)``: ``ok`` a scalar
    bool tensor (True when they pass), ``message`` the error naming the fix.

    - sparse class ids (``[B]`` or ``[B, 1]``): whole numbers (float labels),
      in ``[0, num_classes)``;
    - one-hot / soft labels ``[B, N]``: each row a probability distribution,
      entries ``>= 0`` summing to 1 within :data:`LABEL_SUM_TOLERANCE`.

    Each check is one reduction over the batch. :func:`keras_kd.losses.cross_entropy` asserts
    them (:func:`asserted`); the Distiller records them under XLA, which drops assertions. The
    messages start with ``"keras_kd: "``, end with the first ``"."`` that
    precedes a quote, bracket or line end, and are ASCII (so the Distiller can
    read them back out of TensorFlow's error). ValueError for labels of another
    static shape.
    """
    labels = tf.convert_to_tensor(labels)
    if labels_kind(labels, num_classes) == "dense":
        rows = tf.cast(labels, tf.float32)
        tolerance = max(LABEL_SUM_TOLERANCE, _ROUNDING.get(labels.dtype, 0.0))
        sums_ok = tf.reduce_all(tf.abs(tf.reduce_sum(rows, axis=-1) - 1.0) <= tolerance)
        fix = ("Fix: one-hot encode class ids (tf.one_hot), normalise soft labels (each row "
               "divided by its sum), or pass integer class ids of shape (batch,).")
        return [
            (tf.reduce_all(rows >= 0.0), "keras_kd: one-hot / soft labels must be probability "
             "distributions, but a row of this batch has a negative or NaN entry. " + fix),
            (sums_ok, "keras_kd: one-hot / soft labels must be probability distributions whose "
             f"rows sum to 1 (within {tolerance:g}), but a row of this batch sums to another "
             "value. " + fix),
        ]
    labels = tf.reshape(labels, [-1])
    found = []
    if labels.dtype.is_floating:
        found.append((tf.reduce_all(tf.equal(labels, tf.round(labels))), (
            "keras_kd: sparse labels must be whole numbers (class ids); got a fractional value. "
            f"Fix: pass integer ids, or soft labels of shape (batch, {num_classes}).")))
        labels = tf.where(tf.math.is_finite(labels), labels, -1.0)  # (NaN: out of range too)
    ids = tf.cast(labels, tf.int64)
    found.append((tf.reduce_all((ids >= 0) & (ids < num_classes)), (
        f"keras_kd: labels must be integer class ids in [0, {num_classes}) (the models output "
        f"{num_classes} logits). Fix: check the dataset's labels, or build the models with the "
        "right number of classes.")))
    return found


def asserted(value, checks):
    """``value`` (a tensor or a structure of them) once every ``(ok, message)`` of
    ``checks`` holds: graph assertions, so a failure is TensorFlow's
    ``InvalidArgumentError`` carrying the message (outside a graph they run at
    once), and the graph's ``value`` waits for them. XLA compiles them away
    (:class:`BatchChecks` records the checks there instead)."""
    asserts = [tf.debugging.Assert(ok, [message]) for ok, message in checks]
    if tf.executing_eagerly():
        return value  # (Assert raised already)
    with tf.control_dependencies(asserts):
        return tf.nest.map_structure(tf.identity, value)


class BatchChecks:
    """The checks of a model's steps, and under XLA the record of the first
    one that failed.

    Build it where the model's variables are built (under its distribution
    strategy's scope): it owns one int32 variable (not a Keras weight; one
    value for all replicas), 0 while no recorded check has failed, else the
    failed check's code. ``require`` in the step, ``reset`` before a run,
    ``raise_recorded`` after it (and ``callback`` for ``fit``'s epochs) under
    ``jit_compile=True``; :func:`step_errors` around the run otherwise.
    """

    def __init__(self):
        self._problem = tf.Variable(0, trainable=False, dtype=tf.int32,
                                    aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)

    def require(self, value, checks, *, jit_compile):
        """``value`` once every ``(ok, message)`` of ``checks`` holds (``ok`` a
        scalar bool tensor). Without ``jit_compile``: assertions (outside a
        graph they run at once), so a failure is TensorFlow's
        ``InvalidArgumentError`` carrying the message (a :class:`DataError` out
        of :func:`step_errors`), and the graph's ``value`` waits for them.
        With ``jit_compile`` (XLA compiles assertions away): the first check
        that fails while nothing is recorded is recorded, and ``value`` is
        returned as it is (:meth:`raise_recorded` raises it)."""
        if not jit_compile:
            return asserted(value, checks)
        for ok, message in checks:
            if message not in _RECORDED:
                _RECORDED.append(message)
            first = tf.logical_and(tf.equal(self._problem, 0), tf.logical_not(ok))
            self._problem.assign(tf.where(first, _RECORDED.index(message) + 1, self._problem))
        return value

    def reset(self):
        """Forgets the recorded check (call it under the strategy's scope)."""
        self._problem.assign(0)

    def raise_recorded(self, where):
        """A :class:`DataError` with the message of the check recorded under XLA
        (``where``, e.g. ``"in epoch 3"``, says when it was found) if there is
        one, which is then forgotten; else nothing."""
        code = int(self._problem.numpy())
        if code:
            self._problem.assign(0)
            raise DataError(
                f"{_RECORDED[code - 1][len('keras_kd: '):]} (Found {where}: under "
                "jit_compile=True XLA drops the per-batch checks, so the run went on past the "
                "bad batch, and a training step on it may have made the student's weights NaN. "
                "Compile with jit_compile=False to stop at the batch itself.)")

    def callback(self):
        """A ``keras.callbacks.Callback`` for ``fit`` under XLA: at the end of
        each epoch, :meth:`raise_recorded` ``("in epoch <n>")``, which stops
        ``fit`` with the first check that failed during that epoch."""
        return _RaiseRecorded(self)


class _RaiseRecorded(keras.callbacks.Callback):
    """Under XLA: raises the batch check that failed during the epoch."""

    def __init__(self, batch_checks):
        super().__init__()
        self.batch_checks = batch_checks

    def on_epoch_end(self, epoch, logs=None):
        self.batch_checks.raise_recorded(f"in epoch {epoch + 1}")


# -- empty data ------------------------------------------------------------------------------


class EmptyDataError(ValueError):
    """Data that holds no batch (or no example): training or scoring it would do
    nothing."""


#: The fix every :class:`EmptyDataError` names.
EMPTY_FIX = ("Fix: check where the data comes from: an empty split or folder, a filter that "
             "drops every example, take(0), or batch(..., drop_remainder=True) with fewer "
             "examples than the batch size.")


def describe_data(data):
    """A short description of ``data`` for an error: a ``tf.data.Dataset``'s
    element spec (cut at 200 characters), or the shape of the first array."""
    if isinstance(data, tf.data.Dataset):
        spec = str(data.element_spec)
        return f"a tf.data.Dataset of element spec {spec if len(spec) < 200 else spec[:199] + '…'}"
    leaves = [v for v in tf.nest.flatten(data) if hasattr(v, "shape")]
    return f"arrays of shape {tuple(leaves[0].shape)}" if leaves else type(data).__name__


def is_known_empty(data):
    """True when ``data`` is known to hold nothing before anything runs: a
    ``tf.data.Dataset`` of cardinality 0, or arrays (a structure of them) whose
    first has length 0. None, and a dataset of unknown size (e.g. filtered), are
    not known to be empty."""
    if data is None:
        return False
    if isinstance(data, tf.data.Dataset):
        return int(data.cardinality()) == 0
    leaves = [v for v in tf.nest.flatten(data) if getattr(v, "shape", None) is not None]
    return bool(leaves) and len(leaves[0].shape) > 0 and leaves[0].shape[0] == 0


def check_not_empty(data, role="the training data", consequence="fit would train on nothing"):
    """:class:`EmptyDataError` ``"<role> is empty (<data>): <consequence>. Fix: ..."``
    when :func:`is_known_empty` (``data``); else nothing. The one rule of known-empty
    data, for ``fit`` (:func:`keras_kd.fitting.fit_checked`) and
    :func:`keras_kd.data.finish`."""
    if is_known_empty(data):
        raise EmptyDataError(f"{role} is empty ({describe_data(data)}): {consequence}. "
                             f"{EMPTY_FIX}")


# -- outputs that are probabilities, not logits ----------------------------------------------

#: How far from 1 a row of outputs may sum and still be read as a probability
#: distribution (by :func:`are_probabilities`): for float32/float64 outputs, and for
#: 16-bit outputs (float16, bfloat16: a softmax computed in 8 mantissa bits).
PROBABILITY_SUM_TOLERANCE = {"wide": 1e-3, "16-bit": 3e-2}


def are_probabilities(outputs, dtype="float32"):
    """True when every row of ``outputs`` (an array ``[..., classes]`` with at
    least 2 classes, values of a model computing in ``dtype``) is a probability
    distribution: all entries ``>= 0`` and each row summing to 1 within
    :data:`PROBABILITY_SUM_TOLERANCE` (``"16-bit"`` for float16 / bfloat16 outputs,
    else ``"wide"``), summed in float64. A softmax's outputs are, on any input;
    logits are not (all >= 0, e.g. after a ReLU, and every row summing to 1 does
    not happen by chance). False for fewer than 2 classes or no rows.

    The one rule of both :func:`keras_kd.teachers.check_logits` (a probe) and
    :func:`keras_kd.diagnostics.diagnose` (the validation outputs)."""
    z = np.asarray(outputs, dtype=np.float64)
    if z.ndim < 2 or z.shape[-1] < 2 or z.size == 0:
        return False
    narrow = tf.as_dtype(dtype) in (tf.float16, tf.bfloat16)
    tolerance = PROBABILITY_SUM_TOLERANCE["16-bit" if narrow else "wide"]
    return bool((z >= 0).all() and np.abs(z.sum(axis=-1) - 1.0).max() <= tolerance)
