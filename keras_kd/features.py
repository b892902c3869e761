"""Feature distillation: FitNets hints and attention transfer.

Besides the logits, a student can match the teacher's *intermediate* layers,
chosen by name in functional or Sequential models:

- :class:`Hint` (Romero et al. 2015, "FitNets"): the student's feature map,
  through a learned projector when its shape differs, regresses the teacher's.
- :class:`AttentionTransfer` (Zagoruyko & Komodakis 2017, activation-based
  AT): the student matches the teacher's normalised spatial attention maps.

Pass them to the Distiller's ``features=``, as objects or in the string form
of :func:`parse` (README.md, "Feature distillation", has an example). Term
``k`` adds ``weight_k · F_k,i`` to example ``i``'s loss (the objective in
:mod:`keras_kd.distiller`), reduced over the *global* batch like the others,
and logs its unweighted batch mean as ``<name>_loss`` (``hint_loss``,
``attention_loss``; a second term of one name ``hint_2_loss``).

Feature maps are channels-last, ``[B, H, W, C]`` (``[B, C]`` or ``[B, T, C]``
for hints on dense / sequence features), and the math runs in float32. The
student runs *once* per step (:class:`FeaturePlan`). Feature terms need the
teacher's intermediate layers, so not cached teacher logits. Romero et al.
train in two stages (hint pre-training, then KD); keras_kd trains one joint
objective (for a warm-up, start with a large hint ``weight``).
"""

import functools
import math
import numbers
import operator
import re

import keras
import tensorflow as tf

from keras_kd import shapes, views

__all__ = ["FeatureTerm", "Hint", "AttentionTransfer", "hint_loss", "attention_map",
           "attention_loss", "parse", "to_spec", "normalize", "FeaturePlan"]

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_SPEC_SPECIAL = set(";:,+=")
# Metric names the Distiller already logs.
_RESERVED_METRICS = {"loss", "distillation_loss", "student_loss", "teacher_agreement"}


# ---------------------------------------------------------------------------
# Pure functions of feature maps.


def _f32(x):
    return tf.cast(tf.convert_to_tensor(x), tf.float32)


def _static(shape):
    return tuple(shape)[1:]


def hint_loss(teacher_features, student_features):
    """Per-example FitNets hint loss: the mean squared error over features.

    ``loss_i = (1 / N) · Σ_j (u_ij − v_ij)²`` for teacher features ``u_i`` and
    (already projected) student features ``v_i`` of ``N`` elements each
    (``N = H·W·C`` for a feature map). Romero et al. (2015, Eq. 3) write
    ``½ ‖u − r(v)‖²``; this is ``2 / N`` times that, i.e. ``nn.MSELoss()`` as in
    the common PyTorch ports, so the value does not grow with the layer size.
    Both features have one shape ``[B, ...]``; returns float32 ``[B]``.
    """
    t = _f32(teacher_features)
    s = _f32(student_features)
    if (t.shape.rank is not None and s.shape.rank is not None
            and not shapes.shapes_compatible([_static(t.shape)], [_static(s.shape)])):
        raise ValueError(
            f"hint_loss needs features of one shape; got teacher {t.shape} and student {s.shape}. "
            "Fix: project the student's features first (the Distiller's Hint term does this).")
    squared = tf.square(t - s)
    return tf.reduce_mean(tf.reshape(squared, [tf.shape(squared)[0], -1]), axis=-1)


def attention_map(features, p=2.0):
    """Activation-based attention map, flattened and L2-normalised.

    For a feature map ``A`` of shape ``[B, H, W, C]`` (channels last; any rank
    ≥ 3 works, the middle axes are the "positions")::

        Q_i = vec(Σ_c |A_i[..., c]|^p)          shape [H·W]
        attention_map_i = Q_i / sqrt(max(‖Q_i‖₂², 1e-12))

    (Zagoruyko & Komodakis 2017, §3.1, ``F^p_sum`` with ``p = 2`` by default;
    an all-zero map gives zeros, not NaN). Returns float32 ``[B, H·W]``.
    """
    p = _check_p(p)
    a = _f32(features)
    if a.shape.rank is not None and a.shape.rank < 3:
        raise ValueError(
            "attention maps need a feature map [batch, height, width, channels] (rank >= 3); got "
            f"shape {a.shape}. Fix: choose a convolutional layer, not a dense or pooled one.")
    powered = tf.square(a) if p == 2.0 else tf.pow(tf.abs(a), p)
    q = tf.reduce_sum(powered, axis=-1)
    q = tf.reshape(q, [tf.shape(q)[0], -1])
    return tf.math.l2_normalize(q, axis=-1, epsilon=1e-12)


def attention_loss(teacher_features, student_features, p=2.0):
    """Per-example attention-transfer loss of one layer pair.

    ``loss_i = (1 / (H·W)) · ‖Q̂_s,i − Q̂_t,i‖₂²`` with ``Q̂ =``
    :func:`attention_map` of each model's features: the mean over the ``H·W``
    positions of the squared difference of the normalised maps. Its batch
    mean is the reference code's ``(at(x) - at(y)).pow(2).mean()``
    (github.com/szagoruyko/attention-transfer; also RepDistiller's
    ``Attention``). Spatial sizes must match; channel counts may differ.
    Returns float32 ``[B]``.
    """
    t = attention_map(teacher_features, p)
    s = attention_map(student_features, p)
    if t.shape[-1] is not None and s.shape[-1] is not None and t.shape[-1] != s.shape[-1]:
        raise ValueError(
            f"attention maps of different sizes: teacher {t.shape[-1]} positions, student "
            f"{s.shape[-1]}. The feature maps must have the same height and width.")
    return tf.reduce_mean(tf.square(s - t), axis=-1)


# ---------------------------------------------------------------------------
# Term specifications (plain, serialisable; built per Distiller by FeaturePlan).


def _at_least(value, what, low, note=""):
    """``value`` as a float; ValueError unless it is a finite number >= ``low``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{what} must be a number, got {value!r}.")
    value = float(value)
    if not math.isfinite(value) or value < low:
        raise ValueError(f"{what} must be a finite number >= {low:g}, got {value}{note}.")
    return value


def _check_p(p):
    return _at_least(p, "attention power p", 1.0, " (p < 1 has an infinite gradient at the "
                     "zeros of a ReLU map). The paper's default is p = 2")


def _check_name(name):
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError("feature term name must be a letter followed by letters, digits or '_', "
                         f"got {name!r}.")
    if f"{name}_loss" in _RESERVED_METRICS:
        raise ValueError(f"feature term name {name!r} would log '{name}_loss', which the "
                         "Distiller already logs. Choose another name.")
    return name


def _check_pairs(pairs, kind):
    if (isinstance(pairs, (tuple, list)) and len(pairs) == 2
            and all(isinstance(n, str) for n in pairs)):
        pairs = [pairs]  # one (teacher, student) pair
    if not isinstance(pairs, (tuple, list)) or not pairs:
        raise ValueError(f"{kind} needs a non-empty list of (teacher_layer, student_layer) pairs, "
                         f"got {pairs!r}.")
    for pair in pairs:
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise ValueError(f"{kind}: each pair must be (teacher_layer, student_layer), got "
                             f"{pair!r}.")
        for role, name in zip(("teacher", "student"), pair):
            if not isinstance(name, str) or not name.strip():
                raise ValueError(f"the {role} layer name must be a non-empty string, got {name!r}.")
    return tuple(tuple(pair) for pair in pairs)


def _fmt(x):
    text = repr(float(x))
    return text[:-2] if text.endswith(".0") else text


class FeatureTerm:
    """Base of the feature terms: layer pairs, a weight and a metric name.

    A term is a plain, immutable specification; the Distiller builds it for
    its teacher and student (projectors, views) with :class:`FeaturePlan`, so
    one term object may be given to several Distillers.
    """

    kind = None
    default_weight = 1.0

    def __init__(self, pairs, weight, name):
        self._pairs = _check_pairs(pairs, type(self).__name__)
        self._weight = _at_least(weight, "feature weight", 0.0)
        self._name = _check_name(name)

    pairs = property(lambda self: self._pairs, doc="``((teacher_layer, student_layer), ...)``.")
    weight = property(lambda self: self._weight, doc="Multiplies the term in the loss.")
    name = property(lambda self: self._name, doc="The metric is ``<name>_loss``.")

    def get_config(self):
        raise NotImplementedError

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def _options(self):
        """The options that differ from the defaults, in the order of the docs."""
        options = {}
        if self.weight != self.default_weight:
            options["weight"] = _fmt(self.weight)
        options.update(self._extra_options())
        if self.name != self.kind:
            options["name"] = self.name
        return options

    def _extra_options(self):
        return {}

    def spec(self):
        """This term in the string form of :func:`parse` (``parse(t.spec()) == [t]``)."""
        for layer in (name for pair in self.pairs for name in pair):
            if _SPEC_SPECIAL & set(layer) or layer != layer.strip():
                raise ValueError(
                    f"layer name {layer!r} contains one of ; : , + = or surrounding spaces, so it "
                    "cannot be written in the feature spec string; pass feature terms as Python "
                    "objects.")
        text = self.kind + ":" + "+".join(f"{t}={s}" for t, s in self.pairs)
        return text + "".join(f",{k}={v}" for k, v in self._options().items())

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __hash__(self):
        return hash(self.spec())

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"

    def _build_pair(self, index, teacher_shape, student_shape, pair, plan_name):
        """For FeaturePlan: a callable ``(t, s) -> [B]`` for one pair, creating any layer."""
        raise NotImplementedError


@keras.saving.register_keras_serializable(package="keras_kd")
class Hint(FeatureTerm):
    """FitNets hint (Romero et al. 2015) from a teacher layer to a student layer.

    ``F_i = hint_loss(u_i, r(v_i))`` (:func:`hint_loss`) of the teacher layer's
    output ``u`` and the student layer's ``v``, through a regressor ``r`` that
    is built only when the shapes differ (else the identity, no weights):

    - rank 4 ``[B, H, W, C]``: when one map's height and width are integer
      multiples of the other's, the larger is average-pooled down to the
      smaller (no weights; the paper uses a "valid" convolution instead); other
      spatial mismatches are an error. Then, if the channels differ, a 1×1
      ``Conv2D(C_teacher)`` with bias maps the student's channels.
    - rank 2 ``[B, C]`` (and rank 3 ``[B, T, C]`` with equal ``T``): a
      ``Dense(C_teacher)`` with bias.

    ``r`` is trained with the student and never in ``distiller.student``.
    The right ``weight`` (``>= 0``) depends on the feature magnitudes
    (RepDistiller's CIFAR-100 setting uses 100 with this mean-squared form).
    """

    kind = "hint"

    def __init__(self, teacher_layer, student_layer, weight=1.0, name="hint"):
        super().__init__([(teacher_layer, student_layer)], weight, name)

    teacher_layer = property(lambda self: self.pairs[0][0])
    student_layer = property(lambda self: self.pairs[0][1])

    def get_config(self):
        return {"teacher_layer": self.teacher_layer, "student_layer": self.student_layer,
                "weight": self.weight, "name": self.name}

    def _build_pair(self, index, teacher_shape, student_shape, pair, plan_name):
        return _HintPair(teacher_shape, student_shape, pair, plan_name)


@keras.saving.register_keras_serializable(package="keras_kd")
class AttentionTransfer(FeatureTerm):
    """Activation-based attention transfer (Zagoruyko & Komodakis 2017).

    For layer pairs ``j`` whose maps have the same height and width (channels
    may differ; no projector), ``F_i = Σ_j attention_loss(A_t^j, A_s^j, p)_i``
    (:func:`attention_loss`, :func:`attention_map`; ``p >= 1``). With the
    default ``weight = β = 1000`` the batch mean of ``weight · F`` is exactly
    the reference code's ``β · Σ_j (at(x_j) − at(y_j)).pow(2).mean()``
    (``--beta 1e+3``; RepDistiller's ``-b 1000``). The paper's Eq. (2),
    ``β/2 · Σ_j ‖Q̂_s^j − Q̂_t^j‖_2`` with "β = 10³ divided by the number of
    elements in the attention map and the batch size", is the same mean (the
    code squares the norm; ``weight = β/2`` gives the paper's ½). ``pairs``
    may also be one ``(teacher_layer, student_layer)`` pair.
    """

    kind = "attention"
    default_weight = 1000.0

    def __init__(self, pairs, weight=1000.0, p=2.0, name="attention"):
        super().__init__(pairs, weight, name)
        self._p = _check_p(p)

    p = property(lambda self: self._p, doc="The power of the attention maps.")

    def get_config(self):
        return {"pairs": [list(pair) for pair in self.pairs], "weight": self.weight,
                "p": self.p, "name": self.name}

    def _extra_options(self):
        return {"p": _fmt(self.p)} if self.p != 2.0 else {}

    def _build_pair(self, index, teacher_shape, student_shape, pair, plan_name):
        _check_attention_shapes(teacher_shape, student_shape, pair)
        return functools.partial(attention_loss, p=self.p)


# ---------------------------------------------------------------------------
# Shape rules and projectors.


def _describe_pair(pair):
    return f"teacher layer {pair[0]!r} → student layer {pair[1]!r}"


def _check_attention_shapes(t_shape, s_shape, pair):
    if len(t_shape) < 3 or len(s_shape) < 3:
        raise ValueError(
            f"attention transfer ({_describe_pair(pair)}) needs convolutional feature maps "
            f"[batch, height, width, channels]; got teacher {('batch',) + t_shape} and student "
            f"{('batch',) + s_shape}. Fix: choose convolutional layers (before any pooling to a "
            "vector), or use a Hint for dense features.")
    if not shapes.shapes_compatible([t_shape[:-1]], [s_shape[:-1]]):
        raise ValueError(
            f"attention transfer ({_describe_pair(pair)}) needs the same spatial size in both "
            f"maps; got teacher {t_shape[:-1]} and student {s_shape[:-1]} (channels may differ). "
            "Fix: pair layers at the same resolution (e.g. the last layer of each stage), or add "
            "a pooling layer in the model so that the sizes agree.")


class _HintPair:
    """One hint pair's adapter: optional pooling, optional projector, loss."""

    def __init__(self, t_shape, s_shape, pair, plan_name):
        self.t_pool = self.s_pool = self.t_spatial = self.projector = None
        if len(t_shape) != len(s_shape):
            raise ValueError(
                f"hint ({_describe_pair(pair)}): the features have different ranks: teacher "
                f"{('batch',) + t_shape}, student {('batch',) + s_shape}. Fix: pair layers of the "
                "same kind (two convolutional maps, or two vectors), or add a "
                "GlobalAveragePooling2D / Flatten layer to the model.")
        if not t_shape:
            raise ValueError(f"hint ({_describe_pair(pair)}): the layers output one scalar "
                             "per example; choose layers with a feature axis.")
        t_channels, s_channels = t_shape[-1], s_shape[-1]
        if t_channels is None or s_channels is None:
            raise ValueError(f"hint ({_describe_pair(pair)}): the channel axis must be known "
                             f"statically; got teacher {t_shape}, student {s_shape}.")
        if len(t_shape) == 3:
            self._pool(t_shape[:2], s_shape[:2], pair)
        elif not shapes.shapes_compatible([t_shape[:-1]], [s_shape[:-1]]):
            raise ValueError(
                f"hint ({_describe_pair(pair)}): the features differ in more than the last "
                f"(channel) axis: teacher {t_shape}, student {s_shape}. Only the channel axis can "
                "be projected. Fix: pair layers whose other axes agree.")
        if t_channels != s_channels:
            name = f"{plan_name}_projector"
            if len(t_shape) == 3:
                self.projector = keras.layers.Conv2D(t_channels, 1, name=name)
                in_shape = (None,) + (self.t_spatial or s_shape[:2]) + (s_channels,)
            else:
                self.projector = keras.layers.Dense(t_channels, name=name)
                in_shape = (None,) + s_shape
            self.projector.build(in_shape)

    def _pool(self, t_hw, s_hw, pair):
        if None in t_hw or None in s_hw or t_hw == s_hw:
            return
        if all(s % t == 0 for s, t in zip(s_hw, t_hw)):
            self.s_pool = tuple(s // t for s, t in zip(s_hw, t_hw))
            self.t_spatial = tuple(t_hw)
        elif all(t % s == 0 for s, t in zip(s_hw, t_hw)):
            self.t_pool = tuple(t // s for s, t in zip(s_hw, t_hw))
            self.t_spatial = tuple(s_hw)
        else:
            raise ValueError(
                f"hint ({_describe_pair(pair)}): the feature maps' spatial sizes {t_hw} (teacher) "
                f"and {s_hw} (student) are not integer multiples of each other, so neither can be "
                "average-pooled to the other. Fix: pair layers at the same (or a 2×, 4×...) "
                "resolution, or add a pooling / Resizing layer to the model.")

    @staticmethod
    def _avg_pool(x, size):
        return tf.nn.avg_pool2d(x, ksize=size, strides=size, padding="VALID")

    def __call__(self, t, s):
        if self.t_pool:
            t = self._avg_pool(tf.cast(t, tf.float32), self.t_pool)
        if self.s_pool:
            s = self._avg_pool(s, self.s_pool)
        if self.projector is not None:
            s = self.projector(s)
        return hint_loss(t, s)


# ---------------------------------------------------------------------------
# The Distiller's forward passes and feature losses.


class FeaturePlan:
    """The Distiller's forward passes, with feature terms built for its models.

    Without terms it runs the two logits views; with terms, the multi-output
    views ``inputs → [logits, features...]`` of both models (one forward pass
    each, :func:`keras_kd.views.tapped`), and holds the projectors and the
    per-term losses. Public beyond the Distiller: ``metric_names``,
    ``weights``, ``projectors``.
    """

    def __init__(self, terms, teacher, student, teacher_logits_view, student_logits_view):
        self.terms = tuple(terms)
        self.metric_names = []
        self.weights = [term.weight for term in self.terms]
        self.projectors = []
        self._pairs = []  # per term: [(t_index, s_index, adapter)]
        self._teacher_logits_view = teacher_logits_view
        self._student_logits_view = student_logits_view
        if not self.terms:
            return
        term_names = []
        for term in self.terms:
            name, k = term.name, 2
            while name in term_names:
                name, k = f"{term.name}_{k}", k + 1
            term_names.append(name)
            self.metric_names.append(f"{name}_loss")

        t_names = list(dict.fromkeys(t for term in self.terms for t, _ in term.pairs))
        s_names = list(dict.fromkeys(s for term in self.terms for _, s in term.pairs))
        self.teacher_view, t_tensors = views.tapped(teacher_logits_view, teacher, t_names,
                                                    "teacher")
        self.student_view, s_tensors = views.tapped(student_logits_view, student, s_names,
                                                    "student")
        for term, name in zip(self.terms, term_names):
            built = []
            for j, (t, s) in enumerate(term.pairs):
                t_index, s_index = t_names.index(t), s_names.index(s)
                pair_name = name if len(term.pairs) == 1 else f"{name}_{j}"
                adapter = term._build_pair(j, _static(t_tensors[t_index].shape),
                                           _static(s_tensors[s_index].shape), (t, s), pair_name)
                if getattr(adapter, "projector", None) is not None:
                    self.projectors.append(adapter.projector)
                built.append((t_index, s_index, adapter))
            self._pairs.append(built)

    def teacher_outputs(self, x):
        """``(float32 logits, [features...] or None)`` of the teacher: inference, no gradient."""
        if not self.terms:
            logits, feats = self._teacher_logits_view(x, training=False), None
        else:
            logits, *feats = self.teacher_view(x, training=False)
            feats = [tf.stop_gradient(f) for f in feats]
        return tf.stop_gradient(tf.cast(logits, tf.float32)), feats

    def student_outputs(self, x, training, with_features=True):
        """``(logits, [features...] or None)`` of the student: one forward pass."""
        if not self.terms or not with_features:
            return self._student_logits_view(x, training=training), None
        logits, *feats = self.student_view(x, training=training)
        return logits, feats

    def losses(self, teacher_features, student_features):
        """Unweighted per-example loss ``[B]`` (float32) of every term, in order;
        ``[]`` when either model's features are None (no terms, cached logits)."""
        if teacher_features is None or student_features is None:
            return []
        return [
            functools.reduce(operator.add, [adapter(teacher_features[t], student_features[s])
                                            for t, s, adapter in built])
            for built in self._pairs
        ]

    def add_weighted(self, total, feature_losses):
        """``total + Σ_k weight_k · F_k`` over the terms' per-example losses."""
        for weight, value in zip(self.weights, feature_losses):
            total = total + weight * value
        return total


# ---------------------------------------------------------------------------
# Normalising the Distiller's ``features=`` argument and the string form.


_KINDS = {"hint": Hint, "fitnets": Hint, "fitnet": Hint,
          "attention": AttentionTransfer, "at": AttentionTransfer}
_OPTIONS = {Hint: ("weight", "name"), AttentionTransfer: ("weight", "p", "name")}

_GRAMMAR = (
    "KIND:TEACHER_LAYER=STUDENT_LAYER[+TEACHER_LAYER=STUDENT_LAYER...][,weight=W][,name=N] terms "
    "separated by ';' (KIND is hint or attention; attention also takes p=P), e.g. "
    "'hint:t_conv2=s_conv2,weight=10;attention:t_conv1=s_conv1+t_conv2=s_conv2'"
)


def _parse_term(text):
    if ":" not in text:
        raise ValueError(f"feature term {text!r} has no KIND: prefix. Expected {_GRAMMAR}.")
    kind, _, rest = text.partition(":")
    kind = kind.strip().lower()
    if kind not in _KINDS:
        raise ValueError(f"unknown feature kind {kind!r} in {text!r}; valid: "
                         f"{', '.join(sorted(_KINDS))}. Expected {_GRAMMAR}.")
    cls = _KINDS[kind]
    pair_text, *option_texts = [item.strip() for item in rest.split(",")]
    if not pair_text:
        raise ValueError(f"feature term {text!r} names no layer pair. Expected {_GRAMMAR}.")
    pairs = []
    for pair in pair_text.split("+"):
        t, eq, s = pair.partition("=")
        t, s = t.strip(), s.strip()
        if not eq or not t or not s or "=" in s:
            raise ValueError(f"bad layer pair {pair.strip()!r} in {text!r}: write "
                             "TEACHER_LAYER=STUDENT_LAYER (pairs joined by '+').")
        pairs.append((t, s))
    options = {}
    for option in option_texts:
        key, eq, value = option.partition("=")
        key, value = key.strip().lower(), value.strip()
        if not eq or not key or not value:
            raise ValueError(
                f"bad option {option!r} in {text!r}: write KEY=VALUE ({', '.join(_OPTIONS[cls])}).")
        if key not in _OPTIONS[cls]:
            raise ValueError(f"unknown option {key!r} for {cls.kind} in {text!r}; valid: "
                             f"{', '.join(_OPTIONS[cls])}.")
        if key in options:
            raise ValueError(f"option {key!r} given twice in {text!r}.")
        try:
            options[key] = float(value) if key in ("weight", "p") else value
        except ValueError:
            raise ValueError(f"option {key}={value!r} in {text!r} is not a number.") from None
    if cls is Hint:
        if len(pairs) != 1:
            raise ValueError(f"a hint term takes one layer pair, got {len(pairs)} in {text!r}. "
                             "Fix: write one hint per pair, e.g. 'hint:a=b;hint:c=d'.")
        return Hint(pairs[0][0], pairs[0][1], **options)
    return AttentionTransfer(pairs, **options)


def parse(spec):
    """Feature terms from their string form (for command-line flags).

    Grammar (spaces around tokens are ignored; layer names may not contain
    ``; : , + =``)::

        SPEC   := TERM (';' TERM)*
        TERM   := KIND ':' PAIR ('+' PAIR)* (',' OPTION)*
        PAIR   := TEACHER_LAYER '=' STUDENT_LAYER
        OPTION := 'weight=' FLOAT | 'name=' NAME | 'p=' FLOAT   (p: attention only)
        KIND   := 'hint' | 'fitnets' | 'attention' | 'at'

    e.g. ``hint:t_conv2=s_conv2,weight=10;attention:t_conv1=s_conv1+t_conv2=s_conv2``;
    a hint takes one pair per term. ``spec`` may also be a list of strings
    (e.g. from a repeated flag); None or "" give no terms. A ValueError names
    the malformed part and the expected grammar.
    """
    if spec is None:
        return []
    if isinstance(spec, (list, tuple)):
        return [term for part in spec for term in parse(part)]
    if not isinstance(spec, str):
        raise ValueError(f"a feature spec must be a string, got {type(spec).__name__}.")
    return [_parse_term(part.strip()) for part in spec.split(";") if part.strip()]


def to_spec(terms):
    """The string form of ``terms`` (inverse of :func:`parse`)."""
    return ";".join(term.spec() for term in normalize(terms))


def normalize(features):
    """The Distiller's ``features=`` argument as a tuple of terms.

    Accepts None, a term, a spec string (:func:`parse`), a serialised term
    (dict from ``get_config``), or a list of these.
    """
    if features is None:
        return ()
    if isinstance(features, (str, FeatureTerm, dict)):
        features = [features]
    if not isinstance(features, (list, tuple)):
        raise ValueError(f"features must be a list of keras_kd.features terms (Hint, "
                         f"AttentionTransfer) or a spec string, got {type(features).__name__}.")
    terms = []
    for item in features:
        if isinstance(item, str):
            terms.extend(parse(item))
        elif isinstance(item, dict):
            terms.append(keras.saving.deserialize_keras_object(item))
        elif isinstance(item, FeatureTerm):
            terms.append(item)
        else:
            raise ValueError(f"features must hold keras_kd.features terms (Hint, "
                             f"AttentionTransfer) or spec strings, got {item!r}.")
    return tuple(terms)
