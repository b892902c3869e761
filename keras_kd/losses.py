"""Distillation losses: pure functions of logits.

Every loss here is ``loss(teacher_logits, student_logits, temperature)`` ->
float32 per-example loss, shape ``[batch]``, and takes *logits* (pre-softmax
scores), never probabilities. The softmax and logarithm math runs in float32
through ``tf.nn.log_softmax`` whatever the input dtype (float16
``log(softmax(z))`` underflows to ``log(0) = -inf``). Reduction over the batch
is the caller's job (:class:`keras_kd.Distiller` reduces over the *global*
batch). README.md ("Losses") has the table of names, custom losses (any
callable of this signature, optionally taking ``labels=``) and loss options.

Notation: ``t`` teacher logits, ``s`` student logits, ``T`` temperature,
``p = softmax(t / T)`` the teacher's soft targets, ``q = softmax(s / T)`` the
student's, ``N`` the number of classes.

Scaling. Hinton et al. (2015, §2) multiply the soft-target loss by ``T²``: the
gradient of ``KL(p‖q)`` with respect to ``s`` is ``(q − p) / T``, so without
the factor the distillation term fades as ``1 / T²`` next to the hard-label
term. ``kl_divergence``, ``soft_cross_entropy`` and ``mse_probs`` carry the
``T²`` factor (so do ``dkd`` and ``dist``), so ``alpha`` weighs comparable
magnitudes at any temperature; ``mse_logits`` has no temperature.

>>> import numpy as np
>>> t = np.array([[2.0, 0.5, -1.0]]); s = np.array([[1.0, 1.0, 0.0]])
>>> float(kl_divergence(t, s, temperature=2.0)[0])  # doctest: +ELLIPSIS
0.3579...
>>> get("kl") is kl_divergence
True
"""

import inspect
import math
import numbers

import keras
import tensorflow as tf

from keras_kd import checks

__all__ = [
    "soft_targets",
    "kl_divergence",
    "soft_cross_entropy",
    "mse_logits",
    "mse_probs",
    "dkd",
    "dist",
    "cross_entropy",
    "per_example",
    "MIN_TEMPERATURE",
    "MAX_TEMPERATURE",
    "check_temperature",
    "check_alpha",
    "get",
    "register",
    "name_of",
    "accepts_labels",
    "available",
]


def _number(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number, got {value!r}.")
    return float(value)


#: The temperatures keras_kd accepts, ``[MIN_TEMPERATURE, MAX_TEMPERATURE]``:
#: where ``t / T``, ``softmax(t / T)`` and ``T²`` are exact enough in float32
#: (:func:`check_temperature` says why).
MIN_TEMPERATURE = 0.01
MAX_TEMPERATURE = 100.0


def check_temperature(value, name="temperature"):
    """Returns the temperature ``T`` as a float; ValueError unless it is a number
    in ``[MIN_TEMPERATURE, MAX_TEMPERATURE] = [0.01, 100]``. The one rule for
    ``T`` (the Distiller, these losses, the job's ``--temperature``); ``name`` is
    what the error calls it.

    Why this range: the losses compute ``t / T``, ``softmax(t / T)`` and ``T²``
    in float32.

    - Below 0.01 nothing changes but the risk: at ``T = 0.01`` the soft targets
      are already one-hot to float32 precision for logits 0.17 apart
      (``exp(-0.17 / T) < 2^-24``), while ``T²`` leaves float32's normal range
      below ``T ≈ 1e-19`` (0 below ``1e-23``) and ``t / T`` overflows for
      ``|t| > 3.4e38 · T``: ``T = 1e-40`` gives NaN.
    - Above 100 the soft targets differ from uniform by about ``|t| / (N·T)``,
      close to float32's rounding of ``p`` and ``q``: the loss *value* loses
      digits as ``T²`` grows (against float64, logits of spread 3, student
      logits 1 apart from the teacher's: relative error 2e-4 at ``T = 100``,
      1.5e-2 at ``T = 1000``; 0.1 apart: 4e-2 and 8e-2) while the gradient
      ``T·(q − p)`` stays within 3e-4. For the ``T → ∞`` limit use
      ``mse_logits`` (logit matching, Hinton et al. 2015 §2.1).
    """
    value = _number(value, name)
    allowed = (f"keras_kd accepts T in [{MIN_TEMPERATURE:g}, {MAX_TEMPERATURE:g}] (1 is the "
               "plain softmax; 2-8 gives the soft targets of Hinton et al. 2015)")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value}; {allowed}.")
    if value < MIN_TEMPERATURE:
        raise ValueError(
            f"{name}={value:g} is below {MIN_TEMPERATURE:g}: the soft targets are already "
            "one-hot there, and smaller T only makes t/T and T² overflow or underflow float32 "
            f"(NaN losses). Fix: {allowed}.")
    if value > MAX_TEMPERATURE:
        raise ValueError(
            f"{name}={value:g} is above {MAX_TEMPERATURE:g}: the soft targets are then so close "
            "to uniform that float32 rounding swamps their differences. Fix: "
            f"{allowed}; for the high-temperature limit use distillation_loss='mse_logits'.")
    return value


def check_alpha(value, name="alpha"):
    """Returns ``alpha`` as a float; ValueError unless it is a number in [0, 1].
    The one rule for ``alpha``; ``name`` is what the error calls it."""
    value = _number(value, name)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number in [0, 1], got {value}.")
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}: it weighs the distillation "
                         "loss, and 1 - alpha the label loss.")
    return value


def _check_temperature(temperature):
    """The temperature as a float32 tensor; a Python number must pass
    :func:`check_temperature` (a tensor is taken as it is)."""
    if isinstance(temperature, (bool, numbers.Number)):
        check_temperature(temperature)
    return tf.cast(temperature, tf.float32)


def _as_f32(logits, name):
    logits = tf.convert_to_tensor(logits)
    if not logits.dtype.is_floating:
        raise TypeError(f"{name} must be floating-point logits, got dtype {logits.dtype.name}.")
    return tf.cast(logits, tf.float32)


def _pair(teacher_logits, student_logits):
    t = _as_f32(teacher_logits, "teacher_logits")
    s = _as_f32(student_logits, "student_logits")
    t_classes = t.shape[-1] if t.shape.rank else None
    s_classes = s.shape[-1] if s.shape.rank else None
    if t_classes is not None and s_classes is not None and t_classes != s_classes:
        raise ValueError("teacher and student logits must have the same number of classes on "
                         f"the last axis, got shapes {t.shape} and {s.shape}.")
    return t, s


def _soft(teacher_logits, student_logits, temperature, fn, student_fn=None):
    """``(T, fn(t / T), student_fn(s / T))``: ``fn`` is ``tf.nn.softmax`` or
    ``tf.nn.log_softmax`` over the classes (``student_fn`` defaults to ``fn``)."""
    temperature = _check_temperature(temperature)
    t, s = _pair(teacher_logits, student_logits)
    return (temperature, fn(t / temperature, axis=-1),
            (student_fn or fn)(s / temperature, axis=-1))


def soft_targets(logits, temperature):
    """Temperature-softened probabilities ``softmax(z / T)``, float32 ``[..., N]``.

    ``T = 1`` is the plain softmax; a larger ``T`` gives a flatter distribution
    that shows the relative sizes of the small probabilities ("dark knowledge").
    """
    temperature = _check_temperature(temperature)
    return tf.nn.softmax(_as_f32(logits, "logits") / temperature, axis=-1)


def kl_divergence(teacher_logits, student_logits, temperature):
    """``T² · KL(p ‖ q) = T² · Σᵢ pᵢ (log pᵢ − log qᵢ)`` per example.

    Its gradient with respect to the student logits is ``T · (q − p)``
    (Hinton et al. 2015, §2, times the ``T²`` factor). It is 0 exactly when
    the two soft-target vectors agree, and is the loss the distillation
    literature means by "KD".
    """
    temperature, log_p, log_q = _soft(teacher_logits, student_logits, temperature,
                                      tf.nn.log_softmax)
    # multiply_no_nan: a class the teacher rules out (logit -inf, p = 0)
    # contributes 0, not 0 · (−inf − log q) = NaN.
    kl = tf.reduce_sum(tf.math.multiply_no_nan(log_p - log_q, tf.exp(log_p)), axis=-1)
    return temperature * temperature * kl


def soft_cross_entropy(teacher_logits, student_logits, temperature):
    """``T² · H(p, q) = −T² · Σᵢ pᵢ log qᵢ`` per example.

    Equals ``kl_divergence + T² · H(p)``: the teacher's entropy is a constant
    for the student, so both give the same gradient ``T · (q − p)``; this one
    does not reach 0 at the optimum (its minimum is ``T² · H(p)``).
    """
    temperature, p, log_q = _soft(teacher_logits, student_logits, temperature,
                                  tf.nn.softmax, tf.nn.log_softmax)
    return -temperature * temperature * tf.reduce_sum(tf.math.multiply_no_nan(log_q, p), axis=-1)


def mse_logits(teacher_logits, student_logits, temperature=None):
    """Logit matching (Ba & Caruana 2014): ``½ · (1/N) Σᵢ (sᵢ − tᵢ)²``.

    ``temperature`` is accepted for a uniform signature and ignored. The
    ``½ · mean`` scaling makes this the high-temperature limit of
    ``kl_divergence`` for zero-mean logits (Hinton et al. 2015, §2.1:
    ``T² · KL → (1/2N) Σ (sᵢ − tᵢ)²`` as ``T → ∞``), so ``alpha`` means the
    same for both; the gradient is ``(s − t) / N``.
    """
    del temperature
    t, s = _pair(teacher_logits, student_logits)
    return 0.5 * tf.reduce_mean(tf.square(s - t), axis=-1)


def mse_probs(teacher_logits, student_logits, temperature):
    """``T² · Σᵢ (qᵢ − pᵢ)²``: squared distance between the soft-target vectors.

    The sum over classes (not the mean) is the Brier-score form: it lies in
    ``[0, 2·T²]``. The ``T²`` factor offsets the ``1/T`` by which both the
    probabilities' spread and their derivative shrink at high temperature,
    as for ``kl_divergence``.
    """
    temperature, p, q = _soft(teacher_logits, student_logits, temperature, tf.nn.softmax)
    return temperature * temperature * tf.reduce_sum(tf.square(q - p), axis=-1)


def _target_ids(labels, num_classes):
    """Class ids ``[batch]`` from sparse ids, or one-hot / soft labels' dominant class."""
    if labels is None:
        raise ValueError("this distillation loss needs the true labels (e.g. dkd). Fix: give the "
                         "Distiller labelled batches (x, y), or use a loss without labels such "
                         "as 'kl'.")
    labels = tf.convert_to_tensor(labels)
    if labels.shape.rank == 2 and labels.shape[-1] == num_classes and num_classes != 1:
        return tf.argmax(labels, axis=-1, output_type=tf.int32)
    return tf.cast(tf.reshape(labels, [-1]), tf.int32)


def dkd(teacher_logits, student_logits, temperature, labels=None, alpha=1.0, beta=8.0):
    """Decoupled KD (Zhao et al. 2022): ``T² (α·TCKD + β·NCKD)`` per example.

    With ``y`` the true class:

    - target-class KD, a KL between the binary distributions "target or
      not": ``TCKD = KL([p_y, 1 − p_y] ‖ [q_y, 1 − q_y])``;
    - non-target-class KD, a KL between the distributions over the other
      classes renormalised without ``y``: ``p̂_j = p_j / (1 − p_y)``,
      ``q̂_j = q_j / (1 − q_y)`` for ``j ≠ y``:
      ``NCKD = Σ_{j≠y} p̂_j (log p̂_j − log q̂_j)``.

    Classical KD is ``TCKD + (1 − p_y)·NCKD``; DKD decouples the weights
    (the paper's CIFAR-100 settings: ``α = 1``, ``β = 8``). All terms are
    computed in log space from ``log_softmax``; ``T²`` as for ``kl``.
    ``labels`` (required) are sparse ids ``[batch]``, or one-hot / soft
    labels ``[batch, N]`` (their dominant class).
    """
    temperature, log_p, log_q = _soft(teacher_logits, student_logits, temperature,
                                      tf.nn.log_softmax)
    target = tf.one_hot(_target_ids(labels, log_p.shape[-1]), tf.shape(log_p)[-1],
                        on_value=True, off_value=False, dtype=tf.bool)
    minus_inf = tf.fill(tf.shape(log_p), float("-inf"))

    def split(log_probs):
        """(log P(target), log P(not target), log renormalised others)."""
        log_in = tf.reduce_logsumexp(tf.where(target, log_probs, minus_inf), axis=-1)
        log_out = tf.reduce_logsumexp(tf.where(target, minus_inf, log_probs), axis=-1)
        return log_in, log_out, log_probs - log_out[:, None]

    p_in, p_out, p_hat = split(log_p)
    q_in, q_out, q_hat = split(log_q)
    tckd = (tf.exp(p_in) * (p_in - q_in)
            + tf.math.multiply_no_nan(p_out - q_out, tf.exp(p_out)))
    others = tf.where(target, tf.zeros_like(p_hat), tf.exp(p_hat))
    nckd = tf.reduce_sum(tf.math.multiply_no_nan(
        tf.where(target, tf.zeros_like(p_hat), p_hat - q_hat), others), axis=-1)
    return temperature * temperature * (alpha * tckd + beta * nckd)


def _safe_sqrt(x):
    """``sqrt(x)`` with a finite gradient at 0 (a constant vector has norm 0)."""
    return tf.sqrt(tf.maximum(x, 1e-24))


def _pearson_distance(a, b, axis, eps=1e-8):
    """``1 − ρ(a, b)`` along ``axis``: Pearson's correlation as the cosine of
    the centred vectors, with ``eps`` in the denominator (DIST's code)."""
    a = a - tf.reduce_mean(a, axis=axis, keepdims=True)
    b = b - tf.reduce_mean(b, axis=axis, keepdims=True)
    dot = tf.reduce_sum(a * b, axis=axis)
    norms = (_safe_sqrt(tf.reduce_sum(a * a, axis=axis))
             * _safe_sqrt(tf.reduce_sum(b * b, axis=axis)))
    return 1.0 - dot / (norms + eps)


def _global_sum(values):
    """``Σ`` over the batch axis, and over the replicas inside a
    ``tf.distribute`` replica context with more than one replica (the
    all-reduce's gradient is itself an all-reduce, so every replica
    backpropagates the global statistic)."""
    total = tf.reduce_sum(values, axis=0)
    ctx = tf.distribute.get_replica_context()
    if ctx is not None and ctx.num_replicas_in_sync > 1:
        total = ctx.all_reduce(tf.distribute.ReduceOp.SUM, total)
    return total


def _batch_pearson_distance(q, p, eps=1e-8):
    """``1 − ρ`` of every class column of ``q`` and ``p`` over the *global* batch.

    Two passes, as in :func:`_pearson_distance`: the global column means
    (from all-reduced sums and counts), then the all-reduced sums of the
    centred products. Centring before multiplying keeps ``|cov| ≤ σ_q σ_p``
    (Cauchy–Schwarz) in float32 where a one-pass ``Σq² − (Σq)²/n`` cancels
    to noise for nearly constant columns.
    """
    ones = tf.ones_like(q[:, :1])
    first = _global_sum(tf.concat([ones, q, p], axis=-1))
    n, sum_q, sum_p = first[0], first[1:][: tf.shape(q)[-1]], first[1:][tf.shape(q)[-1]:]
    q = q - sum_q / n
    p = p - sum_p / n
    second = _global_sum(tf.stack([q * p, q * q, p * p], axis=1))
    cov, var_q, var_p = tf.unstack(second)
    return 1.0 - cov / (_safe_sqrt(var_q) * _safe_sqrt(var_p) + eps)


def dist(teacher_logits, student_logits, temperature, beta=1.0, gamma=1.0):
    """DIST (Huang et al. 2022): Pearson-correlation relations, per example.

    With ``P = softmax(t/T)`` and ``Q = softmax(s/T)`` the ``[B, N]`` matrices
    of the batch's soft targets, and ``d(u, v) = 1 − ρ(u, v)`` (Pearson)::

        inter = (1/B) Σ_i d(Q[i, :], P[i, :])     # each example's class ranking
        intra = (1/N) Σ_j d(Q[:, j], P[:, j])     # each class across the batch
        DIST  = T² · (β · inter + γ · intra)

    (Huang et al. 2022, §3, with the ``T²`` of the authors' code; β = γ = 1
    are its defaults, T = 4 its CIFAR setting). ``inter`` is per example;
    ``intra`` is a property of the whole batch, so each example gets
    ``T² (β · d(Q[i], P[i]) + γ · intra)``: their batch mean is DIST. Under a
    ``tf.distribute`` strategy ``intra`` is taken over the **global** batch
    (from per-class sums all-reduced over the replicas), so 1 device and N
    replicas give the same loss and gradient. A batch of one example has no
    spread across the batch: its ``intra`` is 1 (ρ taken as 0).
    """
    temperature, p, q = _soft(teacher_logits, student_logits, temperature, tf.nn.softmax)
    inter = _pearson_distance(q, p, axis=-1)
    intra = tf.reduce_mean(_batch_pearson_distance(q, p))
    return temperature * temperature * (beta * inter + gamma * intra)


def cross_entropy(labels, logits):
    """Per-example softmax cross-entropy of ``logits`` on the true labels.

    ``CE_i = −Σ_c y_ic · log softmax(z_i)_c``, float32 ``[B]`` (the label loss
    the Distiller weighs by ``1 − alpha``). The labels are either

    - sparse class ids, shape ``[B]`` or ``[B, 1]`` (any int dtype, or whole-
      valued floats): ``CE_i = −log softmax(z_i)_{y_i}``; or
    - dense one-hot / soft label vectors ``[B, N]`` (e.g. MixUp/CutMix), each
      row a probability distribution.

    Labels that fail :func:`keras_kd.checks.label_checks` (ids outside ``[0, N)`` or
    fractional, rows with a negative entry or not summing to 1) fail the graph
    with an InvalidArgumentError carrying its message (XLA compiles these
    checks away; the Distiller records them there). Labels of any other static
    shape are a ValueError.
    """
    labels = tf.convert_to_tensor(labels)  # NumPy labels under run_eagerly=True
    num_classes = logits.shape[-1]
    logits = tf.cast(logits, tf.float32)
    labels = checks.asserted(labels, checks.label_checks(labels, num_classes))
    if checks.labels_kind(labels, num_classes) == "sparse":
        return tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=tf.cast(tf.reshape(labels, [-1]), tf.int64), logits=logits)
    return tf.nn.softmax_cross_entropy_with_logits(labels=tf.cast(labels, tf.float32),
                                                   logits=logits)


def per_example(values, fn, logits):
    """``values`` (what loss ``fn`` returned for ``logits``) as float32 ``[B]``.

    A ``[B, 1]`` result is squeezed; any other shape than ``[B]`` (e.g. a
    batch mean) is a ValueError that names ``fn`` and the fix.
    """
    values = tf.cast(values, tf.float32)
    if values.shape.rank == 2 and values.shape[-1] == 1:
        values = tf.squeeze(values, -1)
    if values.shape.rank != 1:
        raise ValueError(
            f"the distillation loss {getattr(fn, '__name__', fn)!r} returned shape "
            f"{values.shape}; it must return one value per example, shape [batch] (the logits "
            f"have shape {logits.shape}). Fix: reduce over the class axis only (e.g. "
            "tf.reduce_sum(..., axis=-1)), not over the batch.")
    return values


_REGISTRY = {
    "dkd": dkd,
    "dist": dist,
    "kl": kl_divergence,
    "soft_ce": soft_cross_entropy,
    "mse_logits": mse_logits,
    "mse_probs": mse_probs,
}


def available():
    """The registered loss names, sorted."""
    return tuple(sorted(_REGISTRY))


def register(name, fn, *, overwrite=False):
    """Adds loss ``fn`` to the registry under ``name`` (so ``get(name)`` finds it).
    Re-registering a taken name needs ``overwrite=True``."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"a loss name must be a non-empty string, got {name!r}.")
    if not callable(fn):
        raise TypeError(f"loss {name!r} must be callable, got {type(fn).__name__}.")
    if name in _REGISTRY and not overwrite and _REGISTRY[name] is not fn:
        raise ValueError(f"a distillation loss named {name!r} is already registered; pass "
                         "overwrite=True to replace it.")
    _REGISTRY[name] = fn
    return fn


def get(name_or_callable):
    """Resolves a distillation loss by name (one of :func:`available`), or passes
    a callable ``fn(teacher_logits, student_logits, temperature)`` through.

    ValueError for an unknown name (the message lists the valid ones);
    TypeError for a Keras ``Loss`` object or neither a string nor a callable.
    """
    if isinstance(name_or_callable, keras.losses.Loss):
        raise TypeError(
            f"{type(name_or_callable).__name__} is a Keras Loss object: it reduces over the "
            "batch, takes (y_true, y_pred, sample_weight) and, like keras.losses.KLDivergence, "
            "expects probabilities. keras_kd needs a per-example function of logits. Fix: use a "
            "name such as 'kl', or fn(teacher_logits, student_logits, temperature).")
    if callable(name_or_callable):
        _check_signature(name_or_callable)
        return name_or_callable
    if isinstance(name_or_callable, str):
        key = name_or_callable.strip().lower()
        if key in _REGISTRY:
            return _REGISTRY[key]
        raise ValueError(
            f"unknown distillation loss {name_or_callable!r}. Valid names: "
            f"{', '.join(available())}; or pass a callable fn(teacher_logits, student_logits, "
            "temperature). (A custom loss saved by name must be registered with "
            "keras_kd.losses.register before the model is loaded.)")
    raise TypeError("distillation_loss must be a registered name or a callable, got "
                    f"{type(name_or_callable).__name__}.")


def name_of(fn):
    """The registry name of ``fn``, or None if it is not registered."""
    for name, registered in _REGISTRY.items():
        if registered is fn:
            return name
    return None


def _check_signature(fn):
    """TypeError when ``fn`` cannot take three positional arguments."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # builtins without a signature
        return
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return
    capacity = sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)
    if capacity < 3:
        raise TypeError(
            f"a distillation loss must accept (teacher_logits, student_logits, "
            f"temperature); {getattr(fn, '__name__', fn)!r} takes {capacity} "
            "positional argument(s)."
        )


def accepts_labels(fn):
    """True when ``fn`` takes a ``labels`` keyword (e.g. DKD needs the labels)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return "labels" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
