"""Feature distillation: FitNets hints and attention transfer.

Besides the logits, a student can be trained to match the teacher's
*intermediate* layers. Two kinds of terms are offered, both chosen by layer
name in functional or Sequential models:

- :class:`Hint` (Romero et al. 2015, "FitNets: Hints for Thin Deep Nets"):
  the student's feature map, passed through a learned projector when its shape
  differs, regresses the teacher's.
- :class:`AttentionTransfer` (Zagoruyko & Komodakis 2017, "Paying More
  Attention to Attention", activation-based AT): the student matches the
  teacher's normalised spatial attention maps; the channel counts may differ.

Pass them to the Distiller::

    from keras_kd import features
    distiller = keras_kd.Distiller(teacher, student, temperature=4.0, alpha=0.9,
        features=[features.Hint("t_block2", "s_block2", weight=1.0),
                  features.AttentionTransfer([("t_block1", "s_block1"),
                                              ("t_block2", "s_block2")])])

or, from a command line, the string form read by :func:`parse`::

    hint:t_block2=s_block2,weight=1;attention:t_block1=s_block1+t_block2=s_block2

The per-example objective becomes::

    loss_i = alpha · D(t_i, s_i; T) + (1 − alpha) · CE(y_i, s_i) + Σ_k weight_k · F_k,i

where ``F_k,i`` is feature term ``k`` for example ``i`` (formulas below). Like
the other terms it is reduced over the *global* batch (``Σ_i w_i · loss_i /
B_global``), so any number of replicas gives the gradient of one device. Each
term logs its unweighted batch mean as ``<name>_loss`` (``hint_loss``,
``attention_loss``; a second term of the same name gets ``hint_2_loss``...).

Conventions and choices:

- Feature maps are channels-last: ``[B, H, W, C]`` for images (``[B, C]`` or
  ``[B, T, C]`` for hints on dense / sequence features). The math runs in
  float32 whatever the compute dtype.
- The student is run *once* per step: the Distiller builds a multi-output view
  ``inputs → [logits, features...]`` over the student's own layers and weights
  (and one over the teacher's), as :func:`keras_kd.models.logits_model` builds
  a logits view. ``distiller(x)`` / ``predict`` stay the student's logits.
- Projectors belong to the Distiller, not to the student: they are trained
  with the student (they are in ``distiller.trainable_variables``), are saved
  with a whole-Distiller ``.keras`` file, and never appear in
  ``distiller.student`` (whose saving and TFLite export are unchanged).
- Feature terms need the teacher's intermediate layers, so they cannot be
  combined with cached teacher logits (offline distillation,
  :mod:`keras_kd.cache`): the Distiller raises a ValueError.
- Romero et al. train in two stages (hint pre-training of the student's lower
  layers with the projector, then KD). keras_kd trains one joint objective;
  for a hint-only warm-up, train a few epochs with a large hint ``weight``
  first, then continue with a small one.
"""

import difflib
import math
import numbers
import re

import keras
import tensorflow as tf

__all__ = [
    "FeatureTerm",
    "Hint",
    "AttentionTransfer",
    "hint_loss",
    "attention_map",
    "attention_loss",
    "parse",
    "to_spec",
    "FeaturePlan",
]

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

    Args:
      teacher_features, student_features: tensors of the same shape
        ``[B, ...]``.

    Returns:
      float32 tensor ``[B]``.
    """
    t = _f32(teacher_features)
    s = _f32(student_features)
    if t.shape.rank is not None and s.shape.rank is not None:
        if not _shape_match(_static(t.shape), _static(s.shape)):
            raise ValueError(
                f"hint_loss needs features of one shape; got teacher "
                f"{t.shape} and student {s.shape}. Fix: project the student's "
                "features first (the Distiller's Hint term does this)."
            )
    squared = tf.square(t - s)
    return tf.reduce_mean(tf.reshape(squared, [tf.shape(squared)[0], -1]), axis=-1)


def attention_map(features, p=2.0):
    """Activation-based attention map, flattened and L2-normalised.

    For a feature map ``A`` of shape ``[B, H, W, C]`` (channels last; any rank
    ≥ 3 works, the middle axes are the "positions")::

        Q_i = vec(Σ_c |A_i[..., c]|^p)          shape [H·W]
        attention_map_i = Q_i / sqrt(max(‖Q_i‖₂², 1e-12))

    (Zagoruyko & Komodakis 2017, §3.1, ``F^p_sum`` with ``p = 2`` by default;
    an all-zero map gives zeros, not NaN.)

    Returns:
      float32 tensor ``[B, H·W]``.
    """
    p = _check_p(p)
    a = _f32(features)
    if a.shape.rank is not None and a.shape.rank < 3:
        raise ValueError(
            f"attention maps need a feature map [batch, height, width, "
            f"channels] (rank >= 3); got shape {a.shape}. Fix: choose a "
            "convolutional layer, not a dense or pooled one."
        )
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

    Returns:
      float32 tensor ``[B]``.
    """
    t = attention_map(teacher_features, p)
    s = attention_map(student_features, p)
    if t.shape[-1] is not None and s.shape[-1] is not None and t.shape[-1] != s.shape[-1]:
        raise ValueError(
            f"attention maps of different sizes: teacher {t.shape[-1]} "
            f"positions, student {s.shape[-1]}. The feature maps must have the "
            "same height and width."
        )
    return tf.reduce_mean(tf.square(s - t), axis=-1)


# ---------------------------------------------------------------------------
# Term specifications (plain, serialisable; built per Distiller by FeaturePlan).


def _check_weight(weight):
    if isinstance(weight, bool) or not isinstance(weight, numbers.Real):
        raise ValueError(f"feature weight must be a number, got {weight!r}.")
    weight = float(weight)
    if not math.isfinite(weight) or weight < 0:
        raise ValueError(f"feature weight must be a finite number >= 0, got {weight}.")
    return weight


def _check_p(p):
    if isinstance(p, bool) or not isinstance(p, numbers.Real):
        raise ValueError(f"attention power p must be a number, got {p!r}.")
    p = float(p)
    if not math.isfinite(p) or p < 1.0:
        raise ValueError(
            f"attention power p must be a finite number >= 1, got {p} (p < 1 "
            "has an infinite gradient at the zeros of a ReLU map). The paper's "
            "default is p = 2."
        )
    return p


def _check_name(name):
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(
            f"feature term name must be a letter followed by letters, digits or "
            f"'_', got {name!r}."
        )
    if f"{name}_loss" in _RESERVED_METRICS:
        raise ValueError(
            f"feature term name {name!r} would log '{name}_loss', which the "
            "Distiller already logs. Choose another name."
        )
    return name


def _check_layer_name(name, role):
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"the {role} layer name must be a non-empty string, got {name!r}.")
    return name


def _check_pairs(pairs, kind):
    if (isinstance(pairs, (tuple, list)) and len(pairs) == 2
            and all(isinstance(n, str) for n in pairs)):
        pairs = [pairs]  # one (teacher, student) pair
    if not isinstance(pairs, (tuple, list)) or not pairs:
        raise ValueError(
            f"{kind} needs a non-empty list of (teacher_layer, student_layer) "
            f"pairs, got {pairs!r}."
        )
    out = []
    for pair in pairs:
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise ValueError(
                f"{kind}: each pair must be (teacher_layer, student_layer), got {pair!r}."
            )
        out.append((_check_layer_name(pair[0], "teacher"),
                    _check_layer_name(pair[1], "student")))
    return tuple(out)


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
        self._weight = _check_weight(weight)
        self._name = _check_name(name)

    @property
    def pairs(self):
        """``((teacher_layer, student_layer), ...)``."""
        return self._pairs

    @property
    def weight(self):
        return self._weight

    @property
    def name(self):
        return self._name

    def get_config(self):
        raise NotImplementedError

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def _options(self):
        options = {}
        if self.weight != self.default_weight:
            options["weight"] = _fmt(self.weight)
        if self.name != self.kind:
            options["name"] = self.name
        return options

    def spec(self):
        """This term in the string form of :func:`parse` (``parse(t.spec()) == [t]``)."""
        for pair in self.pairs:
            for layer in pair:
                if _SPEC_SPECIAL & set(layer) or layer != layer.strip():
                    raise ValueError(
                        f"layer name {layer!r} contains one of ; : , + = or "
                        "surrounding spaces, so it cannot be written in the "
                        "feature spec string; pass feature terms as Python objects."
                    )
        text = self.kind + ":" + "+".join(f"{t}={s}" for t, s in self.pairs)
        return text + "".join(f",{k}={v}" for k, v in self._options().items())

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __hash__(self):
        return hash(self.spec())

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"

    # -- hooks for FeaturePlan -------------------------------------------------

    def _build_pair(self, index, teacher_shape, student_shape, pair, plan_name):
        """Returns a callable ``(t, s) -> [B]`` for one pair, creating any layer."""
        raise NotImplementedError


@keras.saving.register_keras_serializable(package="keras_kd")
class Hint(FeatureTerm):
    """FitNets hint (Romero et al. 2015) from a teacher layer to a student layer.

    ``F_i = hint_loss(u_i, r(v_i))`` = mean over the ``N`` feature elements of
    ``(u_i − r(v_i))²`` (:func:`hint_loss`; ``2 / N`` times the paper's
    ``½ ‖u − r(v)‖²``), where ``u`` is the teacher layer's output and ``v``
    the student layer's.

    The regressor ``r`` is built only when the shapes differ (equal shapes:
    ``r`` is the identity, no extra weights):

    - rank 4 ``[B, H, W, C]``: when one map's height and width are integer
      multiples of the other's, the larger map is average-pooled down to the
      smaller (no weights; the paper instead uses a "valid" convolution of the
      right kernel size); other spatial mismatches are an error. Then, if the
      channels differ, a 1×1 ``Conv2D(C_teacher)`` with bias maps the
      student's channels to the teacher's.
    - rank 2 ``[B, C]`` (and rank 3 ``[B, T, C]`` with equal ``T``): a
      ``Dense(C_teacher)`` with bias.

    The regressor is trained with the student and discarded with the
    Distiller: ``distiller.student`` never contains it. ``weight`` (default
    1.0) scales the term in the loss; its right size depends on the feature
    magnitudes (RepDistiller's CIFAR-100 benchmark uses 100 with this
    mean-squared form).

    Args:
      teacher_layer: name of a layer of the teacher (``[l.name for l in
        teacher.layers]``).
      student_layer: name of a layer of the student.
      weight: ``>= 0``, multiplies the term in the loss.
      name: the metric is logged as ``<name>_loss`` (default ``hint_loss``).
    """

    kind = "hint"
    default_weight = 1.0

    def __init__(self, teacher_layer, student_layer, weight=1.0, name="hint"):
        super().__init__([(teacher_layer, student_layer)], weight, name)

    @property
    def teacher_layer(self):
        return self.pairs[0][0]

    @property
    def student_layer(self):
        return self.pairs[0][1]

    def get_config(self):
        return {
            "teacher_layer": self.teacher_layer,
            "student_layer": self.student_layer,
            "weight": self.weight,
            "name": self.name,
        }

    def _build_pair(self, index, teacher_shape, student_shape, pair, plan_name):
        return _HintPair(teacher_shape, student_shape, pair, plan_name)


@keras.saving.register_keras_serializable(package="keras_kd")
class AttentionTransfer(FeatureTerm):
    """Activation-based attention transfer (Zagoruyko & Komodakis 2017).

    For layer pairs ``j = 1..J`` with feature maps ``A_t^j``, ``A_s^j`` of the
    same height and width (channel counts may differ; no projector)::

        F_i = Σ_j (1 / (H_j·W_j)) · ‖Q̂_s,i^j − Q̂_t,i^j‖₂²,
        Q̂ = Q / ‖Q‖₂,   Q = vec(Σ_c |A_c|^p)       (attention_map, p = 2)

    and the loss adds ``weight · F_i``. With the default ``weight = β =
    1000`` the batch mean of ``weight · F`` is exactly the reference code's
    ``β · Σ_j (at(x_j) − at(y_j)).pow(2).mean()`` (szagoruyko/attention-transfer,
    ``--beta 1e+3``; RepDistiller uses ``-b 1000`` with the same form). The
    paper's Eq. (2) writes ``β/2 · Σ_j ‖Q̂_s^j − Q̂_t^j‖_2`` and sets "β = 10³
    divided by the number of elements in the attention map and the batch
    size", i.e. the mean over positions and examples used here (the code
    squares the norm; pass ``weight = β/2`` for the paper's ½).

    Args:
      pairs: ``[(teacher_layer, student_layer), ...]`` (or one pair).
      weight: ``>= 0``, ``β`` above; default 1000.
      p: power of the attention map, ``>= 1``; default 2 (the paper's choice).
      name: the metric is logged as ``<name>_loss`` (default ``attention_loss``).
    """

    kind = "attention"
    default_weight = 1000.0

    def __init__(self, pairs, weight=1000.0, p=2.0, name="attention"):
        super().__init__(pairs, weight, name)
        self._p = _check_p(p)

    @property
    def p(self):
        return self._p

    def get_config(self):
        return {
            "pairs": [list(pair) for pair in self.pairs],
            "weight": self.weight,
            "p": self.p,
            "name": self.name,
        }

    def _options(self):
        options = super()._options()
        if self.p != 2.0:  # weight, p, name: the order of the docs
            name = options.pop("name", None)
            options["p"] = _fmt(self.p)
            if name is not None:
                options["name"] = name
        return options

    def _build_pair(self, index, teacher_shape, student_shape, pair, plan_name):
        _check_attention_shapes(teacher_shape, student_shape, pair)
        p = self.p
        return lambda t, s: attention_loss(t, s, p)


# ---------------------------------------------------------------------------
# Shape rules and projectors.


def _shape_match(a, b):
    return len(a) == len(b) and all(
        x is None or y is None or x == y for x, y in zip(a, b)
    )


def _describe_pair(pair):
    return f"teacher layer {pair[0]!r} → student layer {pair[1]!r}"


def _check_attention_shapes(t_shape, s_shape, pair):
    if len(t_shape) < 3 or len(s_shape) < 3:
        raise ValueError(
            f"attention transfer ({_describe_pair(pair)}) needs convolutional "
            f"feature maps [batch, height, width, channels]; got teacher "
            f"{('batch',) + t_shape} and student {('batch',) + s_shape}. Fix: "
            "choose convolutional layers (before any pooling to a vector), or "
            "use a Hint for dense features."
        )
    if not _shape_match(t_shape[:-1], s_shape[:-1]):
        raise ValueError(
            f"attention transfer ({_describe_pair(pair)}) needs the same "
            f"spatial size in both maps; got teacher {t_shape[:-1]} and "
            f"student {s_shape[:-1]} (channels may differ). Fix: pair layers "
            "at the same resolution (e.g. the last layer of each stage), or "
            "add a pooling layer in the model so that the sizes agree."
        )


class _HintPair:
    """One hint pair's adapter: optional pooling, optional projector, loss."""

    def __init__(self, t_shape, s_shape, pair, plan_name):
        self.t_pool = self.s_pool = None
        self.projector = None
        if len(t_shape) != len(s_shape):
            raise ValueError(
                f"hint ({_describe_pair(pair)}): the features have different "
                f"ranks: teacher {('batch',) + t_shape}, student "
                f"{('batch',) + s_shape}. Fix: pair layers of the same kind "
                "(two convolutional maps, or two vectors), or add a "
                "GlobalAveragePooling2D / Flatten layer to the model."
            )
        if not t_shape:
            raise ValueError(
                f"hint ({_describe_pair(pair)}): the layers output one scalar "
                "per example; choose layers with a feature axis."
            )
        t_channels, s_channels = t_shape[-1], s_shape[-1]
        if t_channels is None or s_channels is None:
            raise ValueError(
                f"hint ({_describe_pair(pair)}): the channel axis must be known "
                f"statically; got teacher {t_shape}, student {s_shape}."
            )
        if len(t_shape) == 3:
            self._pool(t_shape[:2], s_shape[:2], pair)
        elif not _shape_match(t_shape[:-1], s_shape[:-1]):
            raise ValueError(
                f"hint ({_describe_pair(pair)}): the features differ in more "
                f"than the last (channel) axis: teacher {t_shape}, student "
                f"{s_shape}. Only the channel axis can be projected. Fix: pair "
                "layers whose other axes agree."
            )
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
        self.t_spatial = None
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
                f"hint ({_describe_pair(pair)}): the feature maps' spatial "
                f"sizes {t_hw} (teacher) and {s_hw} (student) are not integer "
                "multiples of each other, so neither can be average-pooled to "
                "the other. Fix: pair layers at the same (or a 2×, 4×...) "
                "resolution, or add a pooling / Resizing layer to the model."
            )

    t_spatial = None

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
# Layer look-up and the multi-output views.


def _is_graph_model(model):
    from keras_kd.models import _is_functional

    return _is_functional(model)


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


def _feature_tensor(model, layer_name, role):
    """The symbolic output of ``model``'s layer ``layer_name`` in its graph."""
    if not _is_graph_model(model):
        raise ValueError(
            f"the {role} {model.name!r} is a subclassed model: keras_kd reads "
            "intermediate layers from the graph of functional or Sequential "
            "models, and a subclassed call() has none. Fix: build the "
            f"{role} with the functional API (keras.Model(inputs, outputs)) or "
            "keras.Sequential, or distil logits only (features=None)."
        )
    try:
        model.inputs  # noqa: B018  (raises for an unbuilt Sequential)
    except (AttributeError, ValueError):
        raise ValueError(
            f"the {role} {model.name!r} has no defined inputs yet, so its layers "
            "have no outputs to read. Fix: start the Sequential model with "
            "keras.Input(shape), or build it before creating the Distiller."
        ) from None
    layers = list(model.layers)
    names = [layer.name for layer in layers]
    matches = [layer for layer in layers if layer.name == layer_name]
    if not matches:
        message = f"the {role} {model.name!r} has no layer named {layer_name!r}."
        close = difflib.get_close_matches(layer_name, names, n=5, cutoff=0.5)
        if close:
            message += f" Did you mean {', '.join(repr(c) for c in close)}?"
        nested = _nested_paths(model, layer_name)
        if nested:
            message += (
                f" A layer of that name is inside a nested model "
                f"({', '.join(nested)}); keras_kd reads top-level layers only. "
                "Fix: pair the nested model's own output (its name), or build "
                "the model flat."
            )
        message += (
            f" List the names with [l.name for l in {role}.layers]; they are: "
            f"{names if len(names) <= 40 else names[:40] + ['...']}."
        )
        raise ValueError(message)
    layer = matches[0]
    from keras.src.ops.function import make_node_key

    graph = getattr(getattr(model, "_functional", model), "_nodes", None)
    nodes = [
        node for index, node in enumerate(layer._inbound_nodes)
        if graph is None or make_node_key(layer, index) in graph
    ]
    if len(nodes) != 1:
        raise ValueError(
            f"the {role} layer {layer_name!r} is called {len(nodes)} times in "
            f"{model.name!r} (a shared layer), so its output is ambiguous. Fix: "
            "pair a layer that runs once (e.g. the one right after it)."
        )
    outputs = nodes[0].output_tensors
    if len(outputs) != 1:
        raise ValueError(
            f"the {role} layer {layer_name!r} returns {len(outputs)} tensors; a "
            "feature term needs a layer with a single tensor output. Fix: pair "
            "a layer that consumes them (e.g. the Add/Concatenate after it)."
        )
    return outputs[0]


def _logits_tensor(view):
    outputs = view.outputs
    if len(outputs) != 1:
        raise ValueError(
            f"{view.name!r} has {len(outputs)} outputs; the Distiller needs one "
            "logits output."
        )
    return outputs[0]


def _unique(names):
    out = []
    for name in names:
        if name not in out:
            out.append(name)
    return out


class FeaturePlan:
    """Feature terms built for one teacher/student pair.

    Holds the multi-output views ``inputs → [logits, features...]`` of both
    models (their own layers and weights: one forward pass each), the
    projector layers, and the per-term losses. Built by the Distiller; not
    part of the public API beyond ``metric_names``, ``weights`` and
    ``projectors``.
    """

    def __init__(self, terms, teacher, student, teacher_logits_view, student_logits_view):
        from keras_kd.models import model_inputs

        self.terms = tuple(terms)
        self.metric_names = []
        self.weights = [term.weight for term in self.terms]
        term_names = []
        for term in self.terms:
            name, k = term.name, 2
            while name in term_names:
                name, k = f"{term.name}_{k}", k + 1
            term_names.append(name)
            self.metric_names.append(f"{name}_loss")

        t_names = _unique(t for term in self.terms for t, _ in term.pairs)
        s_names = _unique(s for term in self.terms for _, s in term.pairs)
        t_tensors = [_feature_tensor(teacher, n, "teacher") for n in t_names]
        s_tensors = [_feature_tensor(student, n, "student") for n in s_names]
        self._t_index = {n: i for i, n in enumerate(t_names)}
        self._s_index = {n: i for i, n in enumerate(s_names)}

        self.teacher_view = keras.Model(
            model_inputs(teacher_logits_view),
            [_logits_tensor(teacher_logits_view)] + t_tensors,
            name=f"{teacher.name}_features",
        )
        self.student_view = keras.Model(
            model_inputs(student_logits_view),
            [_logits_tensor(student_logits_view)] + s_tensors,
            name=f"{student.name}_features",
        )

        self.projectors = []
        self._pairs = []  # per term: [(t_index, s_index, adapter)]
        for term, name in zip(self.terms, term_names):
            built = []
            for j, (t, s) in enumerate(term.pairs):
                t_shape = _static(t_tensors[self._t_index[t]].shape)
                s_shape = _static(s_tensors[self._s_index[s]].shape)
                pair_name = name if len(term.pairs) == 1 else f"{name}_{j}"
                adapter = term._build_pair(j, t_shape, s_shape, (t, s), pair_name)
                if getattr(adapter, "projector", None) is not None:
                    self.projectors.append(adapter.projector)
                built.append((self._t_index[t], self._s_index[s], adapter))
            self._pairs.append(built)

    @staticmethod
    def _split(outputs):
        outputs = list(outputs)
        return outputs[0], outputs[1:]

    def teacher_forward(self, x):
        """``(logits, [features...])`` of the teacher in inference mode, float32."""
        logits, feats = self._split(self.teacher_view(x, training=False))
        return (tf.stop_gradient(tf.cast(logits, tf.float32)),
                [tf.stop_gradient(f) for f in feats])

    def student_forward(self, x, training):
        """``(logits, [features...])`` of the student, one forward pass."""
        return self._split(self.student_view(x, training=training))

    def per_example(self, teacher_features, student_features):
        """Unweighted per-example loss ``[B]`` (float32) of every term, in order."""
        values = []
        for built in self._pairs:
            total = None
            for t_index, s_index, adapter in built:
                value = adapter(teacher_features[t_index], student_features[s_index])
                total = value if total is None else total + value
            values.append(total)
        return values


# ---------------------------------------------------------------------------
# Normalising the Distiller's ``features=`` argument and the string form.


_KINDS = {
    "hint": Hint,
    "fitnets": Hint,
    "fitnet": Hint,
    "attention": AttentionTransfer,
    "at": AttentionTransfer,
}
_OPTIONS = {Hint: ("weight", "name"), AttentionTransfer: ("weight", "p", "name")}

_GRAMMAR = (
    "KIND:TEACHER_LAYER=STUDENT_LAYER[+TEACHER_LAYER=STUDENT_LAYER...][,weight=W]"
    "[,name=N] terms separated by ';' (KIND is hint or attention; attention "
    "also takes p=P), e.g. 'hint:t_conv2=s_conv2,weight=10;"
    "attention:t_conv1=s_conv1+t_conv2=s_conv2'"
)


def _parse_term(text):
    if ":" not in text:
        raise ValueError(
            f"feature term {text!r} has no KIND: prefix. Expected {_GRAMMAR}."
        )
    kind, _, rest = text.partition(":")
    kind = kind.strip().lower()
    if kind not in _KINDS:
        raise ValueError(
            f"unknown feature kind {kind!r} in {text!r}; valid: "
            f"{', '.join(sorted(_KINDS))}. Expected {_GRAMMAR}."
        )
    cls = _KINDS[kind]
    items = [item.strip() for item in rest.split(",")]
    pair_text, option_texts = items[0], items[1:]
    if not pair_text:
        raise ValueError(f"feature term {text!r} names no layer pair. Expected {_GRAMMAR}.")
    pairs = []
    for pair in pair_text.split("+"):
        t, eq, s = pair.partition("=")
        t, s = t.strip(), s.strip()
        if not eq or not t or not s or "=" in s:
            raise ValueError(
                f"bad layer pair {pair.strip()!r} in {text!r}: write "
                "TEACHER_LAYER=STUDENT_LAYER (pairs joined by '+')."
            )
        pairs.append((t, s))
    options = {}
    for option in option_texts:
        key, eq, value = option.partition("=")
        key, value = key.strip().lower(), value.strip()
        if not eq or not key or not value:
            raise ValueError(
                f"bad option {option!r} in {text!r}: write KEY=VALUE "
                f"({', '.join(_OPTIONS[cls])})."
            )
        if key not in _OPTIONS[cls]:
            raise ValueError(
                f"unknown option {key!r} for {cls.kind} in {text!r}; valid: "
                f"{', '.join(_OPTIONS[cls])}."
            )
        if key in options:
            raise ValueError(f"option {key!r} given twice in {text!r}.")
        if key in ("weight", "p"):
            try:
                options[key] = float(value)
            except ValueError:
                raise ValueError(
                    f"option {key}={value!r} in {text!r} is not a number."
                ) from None
        else:
            options[key] = value
    if cls is Hint:
        if len(pairs) != 1:
            raise ValueError(
                f"a hint term takes one layer pair, got {len(pairs)} in {text!r}. "
                "Fix: write one hint per pair, e.g. 'hint:a=b;hint:c=d'."
            )
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

    Example: ``hint:t_conv2=s_conv2,weight=10;attention:t_conv1=s_conv1+t_conv2=s_conv2``
    → ``[Hint("t_conv2", "s_conv2", weight=10.0), AttentionTransfer([("t_conv1",
    "s_conv1"), ("t_conv2", "s_conv2")])]``. A hint takes one pair per term.
    Quote the flag in a shell (``--features='...'``) because of ``;``, or pass
    a list of strings (one term each, e.g. from a repeated flag).

    Args:
      spec: a string, a list of strings, or None / "" (no terms).

    Returns:
      a list of :class:`FeatureTerm`.

    Raises:
      ValueError: naming the malformed part and the expected grammar.
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
        raise ValueError(
            f"features must be a list of keras_kd.features terms (Hint, "
            f"AttentionTransfer) or a spec string, got {type(features).__name__}."
        )
    terms = []
    for item in features:
        if isinstance(item, str):
            terms.extend(parse(item))
        elif isinstance(item, dict):
            terms.append(keras.saving.deserialize_keras_object(item))
        elif isinstance(item, FeatureTerm):
            terms.append(item)
        else:
            raise ValueError(
                f"features must hold keras_kd.features terms (Hint, "
                f"AttentionTransfer) or spec strings, got {item!r}."
            )
    return tuple(terms)
