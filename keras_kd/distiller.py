"""The Distiller: a ``keras.Model`` that trains a student from a frozen teacher.

Loss per example (Hinton et al. 2015)::

    loss_i = alpha · D(t_i, s_i; T) + (1 − alpha) · CE(y_i, s_i)

``t_i`` / ``s_i`` are the teacher's / student's logits, ``D`` a distillation
loss from :mod:`keras_kd.losses` (default ``"kl"`` = ``T² · KL(p‖q)``), ``CE``
the student's softmax cross-entropy on the true labels (sparse ids or one-hot /
soft label vectors). The batch loss is ``Σ_i w_i · loss_i / B_global`` — a sum
over the *global* batch divided by its size (``tf.nn.compute_average_loss``),
so a ``tf.distribute`` strategy with any number of replicas computes the same
gradient as one device.

Example::

    import keras, keras_kd
    teacher = ...   # a trained keras.Model that outputs logits
    student = ...   # a smaller keras.Model, same input and number of classes
    distiller = keras_kd.Distiller(teacher, student, temperature=4.0, alpha=0.9)
    distiller.compile(optimizer=keras.optimizers.Adam(1e-3), metrics=["accuracy"])
    distiller.fit(train_ds, validation_data=val_ds, epochs=10)
    distiller.student.save("student.keras")      # ship the student alone

Models whose last layer applies softmax (``Dense(..., activation="softmax")``,
``Softmax()`` or ``Activation("softmax")``) are distilled from their
pre-softmax output: keras_kd builds a logits view that shares their weights
(functional and Sequential models; a subclassed model must return logits).
The student itself is left unchanged, so it still outputs probabilities when
saved.

Feature distillation (``features=``, see :mod:`keras_kd.features`) adds
intermediate-layer terms (FitNets hints, attention transfer)::

    loss_i = alpha · D + (1 − alpha) · CE + Σ_k weight_k · F_k,i

each a per-example value reduced over the global batch like the others.
"""

import math
import numbers
import warnings

import keras
import tensorflow as tf

from keras_kd import features as features_lib
from keras_kd import losses as losses_lib
from keras_kd.models import COMPUTE_DTYPES, logits_model, with_compute_dtype

__all__ = ["Distiller", "logits_model", "TEACHER_LOGITS", "LABELS"]

#: Key of precomputed teacher logits in a target dict ``{TEACHER_LOGITS: t,
#: LABELS: y}``: the Distiller then trains from ``t`` and does not run the
#: teacher (offline distillation, see :mod:`keras_kd.cache`).
TEACHER_LOGITS = "teacher_logits"
#: Key of the true labels in such a target dict (optional when alpha = 1).
LABELS = "labels"


# ---------------------------------------------------------------------------
# Shape checks.


def _static_io(model):
    """(input shapes without batch, number of classes) or (None, None)."""
    try:
        inputs = [tuple(t.shape[1:]) for t in model.inputs]
    except (AttributeError, TypeError, ValueError):
        inputs = None
    try:
        out = model.outputs
        classes = out[0].shape[-1] if out and len(out) == 1 else None
    except (AttributeError, TypeError, ValueError):
        classes = None
    return inputs, classes


def _shapes_compatible(a, b):
    if len(a) != len(b):
        return False
    for sa, sb in zip(a, b):
        if len(sa) != len(sb):
            return False
        if any(x is not None and y is not None and x != y for x, y in zip(sa, sb)):
            return False
    return True


def _check_number(value, name, low, high, low_open):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number, got {value!r}.")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}.")
    if low_open and not value > low:
        return False, value
    if not low_open and not (low <= value <= high):
        return False, value
    return True, value


@keras.saving.register_keras_serializable(package="keras_kd")
class Distiller(keras.Model):
    """Trains ``student`` to match a frozen ``teacher`` and the true labels.

    Args:
      teacher: a trained ``keras.Model`` returning logits (or ending in
        softmax: see the module docstring). It is frozen (``trainable =
        False``) and always called with ``training=False``; its weights never
        change and no gradient flows into it.
      student: the ``keras.Model`` to train; same input shape and number of
        classes as the teacher.
      temperature: ``T > 0`` of the soft targets ``softmax(z / T)``.
      alpha: weight in ``[0, 1]`` of the distillation loss; ``1 − alpha``
        weighs the student's cross-entropy on the labels. ``alpha = 1`` needs
        no labels (unlabelled data may be passed as ``x`` alone).
      distillation_loss: a name from ``keras_kd.losses.available()`` or a
        callable ``fn(teacher_logits, student_logits, temperature)`` returning
        a per-example loss (if it takes ``labels=``, the labels are passed).
      evaluate_with_teacher: if True, ``evaluate`` (and validation in
        ``fit``) also runs the teacher and logs ``distillation_loss`` and
        ``teacher_agreement``, and its ``loss`` is the full distillation
        objective. If False (default) evaluation costs one student pass and
        its ``loss`` is the student's cross-entropy on the labels.
      features: feature-distillation terms (:mod:`keras_kd.features`): a list
        of ``Hint`` / ``AttentionTransfer``, or their string form
        (``"hint:t_layer=s_layer,weight=1;attention:t1=s1+t2=s2"``, see
        :func:`keras_kd.features.parse`). Each adds ``weight · F_i`` to the
        per-example loss and logs ``<name>_loss`` (unweighted). The student
        still runs once per step (a multi-output view of its layers); the
        projectors they need are trained with the student, saved with the
        Distiller, and never part of ``student``. Needs functional or
        Sequential models, and the teacher (no cached teacher logits).
      teacher_dtype: ``"float32"`` (default), ``"bfloat16"`` or ``"float16"``:
        the precision of the frozen teacher's inference. A reduced precision
        runs a copy of the teacher (float32 weights cast for the math, see
        :func:`keras_kd.models.with_compute_dtype`); its logits are cast to
        float32 before the softmax. ``benchmarks/teacher_dtype.py`` measures
        speed and soft-target fidelity; BUILD_NOTES.md has the figures.

    Offline distillation: when a batch's targets are a dict
    ``{"teacher_logits": t, "labels": y}`` (what :func:`keras_kd.cache.attach`
    yields), ``t`` replaces the teacher's forward pass.

    Training logs: ``loss`` (the total), ``distillation_loss``,
    ``student_loss`` (cross-entropy), ``teacher_agreement`` (fraction of
    examples whose top-1 class is the teacher's), one ``<name>_loss`` per
    feature term, and the compiled metrics,
    which measure the student's logits against the labels.
    ``distiller(x)`` / ``predict`` return the student's logits.
    """

    def __init__(
        self,
        teacher,
        student,
        temperature=4.0,
        alpha=0.9,
        distillation_loss="kl",
        evaluate_with_teacher=False,
        features=None,
        teacher_dtype="float32",
        name="distiller",
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        for role, model in (("teacher", teacher), ("student", student)):
            if not isinstance(model, keras.Model):
                raise ValueError(
                    f"{role} must be a keras.Model, got {type(model).__name__}."
                )
        if teacher is student:
            raise ValueError(
                "teacher and student are the same model object; the teacher is "
                "frozen, so nothing would train. Pass two different models."
            )
        ok, temperature = _check_number(temperature, "temperature", 0.0, None, True)
        if not ok:
            raise ValueError(
                f"temperature must be > 0, got {temperature}. Fix: T = 1 gives "
                "the plain softmax; T in 2-8 gives the soft targets of Hinton "
                "et al. 2015."
            )
        ok, alpha = _check_number(alpha, "alpha", 0.0, 1.0, False)
        if not ok:
            raise ValueError(
                f"alpha must be in [0, 1], got {alpha}: it weighs the "
                "distillation loss, and 1 - alpha weighs the label loss."
            )
        self._loss_fn = losses_lib.get(distillation_loss)
        self._loss_spec = distillation_loss
        self._loss_takes_labels = losses_lib.accepts_labels(self._loss_fn)

        self.temperature = temperature
        self.alpha = alpha
        self.evaluate_with_teacher = bool(evaluate_with_teacher)

        if teacher_dtype not in COMPUTE_DTYPES:
            raise ValueError(
                f"teacher_dtype must be one of {', '.join(COMPUTE_DTYPES)}, got "
                f"{teacher_dtype!r}."
            )
        if teacher_dtype != "float32" and features:
            raise ValueError(
                f"teacher_dtype={teacher_dtype!r} with feature terms is not "
                "supported: the feature views read the float32 teacher. Fix: "
                "drop teacher_dtype, or the features."
            )
        self.teacher_dtype = teacher_dtype
        teacher.trainable = False
        self.teacher = teacher
        self.student = student
        runner = with_compute_dtype(teacher, teacher_dtype)
        runner.trainable = False
        self._teacher_logits_model, self.teacher_softmax_recovered = logits_model(
            runner, "teacher"
        )
        self._student_logits_model, self.student_softmax_recovered = logits_model(
            student, "student"
        )
        self.num_classes = self._check_compatible()
        self._feature_terms = features_lib.normalize(features)
        self._feature_plan = None
        if self._feature_terms:
            self._feature_plan = features_lib.FeaturePlan(
                self._feature_terms, teacher, student,
                self._teacher_logits_model, self._student_logits_model,
            )
            # Tracked here (not in the student): trained, saved with the
            # Distiller, never exported with the student.
            self.feature_projectors = list(self._feature_plan.projectors)

        self.distillation_loss_tracker = keras.metrics.Mean(name="distillation_loss")
        self.student_loss_tracker = keras.metrics.Mean(name="student_loss")
        self.teacher_agreement_tracker = keras.metrics.Mean(name="teacher_agreement")
        if self._feature_plan is not None:
            self.feature_loss_trackers = [
                keras.metrics.Mean(name=n) for n in self._feature_plan.metric_names
            ]
        if teacher.built and student.built:
            self.built = True

    @property
    def features(self):
        """The feature-distillation terms, a tuple (empty without features)."""
        return self._feature_terms

    # -- construction checks -------------------------------------------------

    def _check_compatible(self):
        t_in, t_classes = _static_io(self._teacher_logits_model)
        s_in, s_classes = _static_io(self._student_logits_model)
        if t_in is not None and s_in is not None and not _shapes_compatible(t_in, s_in):
            raise ValueError(
                f"teacher and student take different inputs: teacher "
                f"{t_in if len(t_in) > 1 else t_in[0]}, student "
                f"{s_in if len(s_in) > 1 else s_in[0]}. Both must read the same "
                "batch. Fix: build the student with the teacher's input shape "
                "(or put a Resizing layer first in one of them)."
            )
        if t_classes is not None and s_classes is not None and t_classes != s_classes:
            raise ValueError(
                f"teacher and student disagree on the number of classes: the "
                f"teacher outputs {t_classes} logits, the student {s_classes}. "
                "Fix: give the student a final Dense(num_classes) matching the "
                "teacher's."
            )
        classes = t_classes if t_classes is not None else s_classes
        if classes is not None and classes < 2:
            raise ValueError(
                f"the models output {classes} logit(s); distillation needs a "
                "softmax over at least 2 classes. For a binary task, output 2 "
                "logits."
            )
        return classes

    # -- Keras API -----------------------------------------------------------

    def call(self, inputs, training=False):
        """The student's logits."""
        return self._student_logits_model(inputs, training=training)

    def compile(self, optimizer="adam", loss=None, metrics=None, jit_compile=False,
                **kwargs):
        """Like ``keras.Model.compile``; the loss is the Distiller's own.

        ``metrics`` (and ``weighted_metrics``) measure the student's logits
        against the labels, e.g. ``metrics=["accuracy"]``. Passing ``loss``
        is an error: the label loss is the student's softmax cross-entropy
        from logits, weighted by ``1 − alpha``.

        ``jit_compile`` defaults to False (Keras's ``"auto"`` turns XLA on for
        any GPU): XLA compiles ``tf.debugging`` assertions away, so labels
        outside ``[0, classes)`` would give a silent NaN instead of an error.
        Pass ``jit_compile=True`` to trade that check for XLA's speed.
        """
        if jit_compile == "auto":
            jit_compile = False
        if jit_compile:
            warnings.warn(
                "Distiller compiled with jit_compile=True: XLA removes the "
                "label-range check, so labels outside [0, num_classes) give "
                "NaN losses instead of an error.",
                stacklevel=2,
            )
        if loss is not None:
            raise ValueError(
                "Distiller.compile() takes no loss: the loss is alpha * "
                "distillation_loss + (1 - alpha) * cross-entropy of the "
                "student's logits on the labels. Choose the distillation loss "
                "with Distiller(distillation_loss=...), and drop loss=."
            )
        super().compile(
            optimizer=optimizer, metrics=metrics, jit_compile=jit_compile, **kwargs
        )

    def fit(self, x=None, y=None, **kwargs):
        """``keras.Model.fit``; under ``MultiWorkerMirroredStrategy`` (where
        Keras 3.15's own ``fit`` fails) a loop over ``strategy.run`` with the
        same callbacks (:func:`keras_kd.distribute.fit_loop`)."""
        from keras_kd import distribute

        if distribute.is_multi_worker(self.distribute_strategy):
            if y is not None:
                raise ValueError(
                    "under multi-worker training pass a tf.data.Dataset of (x, y) "
                    "batches, not separate x and y."
                )
            return distribute.fit_loop(self, x, **kwargs)
        return super().fit(x, y, **kwargs)

    def compile_from_config(self, config):
        """Re-compiles after ``keras.saving.load_model`` (optimizer, metrics)."""
        config = keras.saving.deserialize_keras_object(config)
        config.pop("loss", None)
        config.pop("loss_weights", None)
        self.compile(**config)
        if getattr(self, "optimizer", None) is not None and self.built:
            self.optimizer.build(self.trainable_variables)

    # -- the math --------------------------------------------------------------

    def _teacher_forward(self, x):
        logits = self._teacher_logits_model(x, training=False)
        return tf.stop_gradient(tf.cast(logits, tf.float32))

    def _split_targets(self, y, uses_teacher=True):
        """``(labels, cached teacher logits or None)`` from the step's targets.

        Targets are the labels, or a dict ``{"teacher_logits": t, "labels":
        y}`` carrying the teacher's precomputed logits (offline
        distillation): the teacher is then not run. With feature terms the
        teacher must run, so cached logits are refused (when this step uses
        the teacher: ``uses_teacher``).
        """
        if not isinstance(y, dict):
            return y, None
        unknown = sorted(set(y) - {TEACHER_LOGITS, LABELS})
        if TEACHER_LOGITS not in y or unknown:
            raise ValueError(
                f"dict targets must be {{{TEACHER_LOGITS!r}: teacher logits, "
                f"{LABELS!r}: labels}}; got keys {sorted(y)}. Fix: pass the "
                "labels alone, or build the dict with keras_kd.cache.attach."
            )
        cached = tf.cast(y[TEACHER_LOGITS], tf.float32)
        if (self.num_classes is not None and cached.shape.rank is not None
                and cached.shape[-1] not in (None, self.num_classes)):
            raise ValueError(
                f"the cached teacher logits have {cached.shape[-1]} classes, the "
                f"models {self.num_classes}. Fix: rebuild the cache for this "
                "teacher (keras_kd.cache.build)."
            )
        if self._feature_plan is not None and uses_teacher:
            raise ValueError(
                "this Distiller has feature terms "
                f"({', '.join(self._feature_plan.metric_names)}), which need the "
                "teacher's intermediate layers on every batch, but the targets "
                "carry cached teacher logits (offline distillation). Fix: pass "
                "plain labels (drop the teacher cache), or build the Distiller "
                "without features=."
            )
        return y.get(LABELS), tf.stop_gradient(cached)

    def _labels_kind(self, y, num_classes):
        """'sparse' or 'dense' from the static shape of y."""
        rank = y.shape.rank
        if rank == 1 or (rank == 2 and y.shape[-1] == 1):
            return "sparse"
        if rank == 2 and y.shape[-1] == num_classes:
            return "dense"
        raise ValueError(
            f"labels of shape {y.shape} do not fit {num_classes} classes: pass "
            f"integer class ids of shape [batch] or one-hot / soft label "
            f"vectors of shape [batch, {num_classes}]."
        )

    def _student_cross_entropy(self, y, logits):
        """Per-example softmax cross-entropy of the logits on y, float32."""
        y = tf.convert_to_tensor(y)  # NumPy labels under run_eagerly=True
        num_classes = logits.shape[-1]
        logits = tf.cast(logits, tf.float32)
        if self._labels_kind(y, num_classes) == "sparse":
            labels = tf.reshape(y, [-1])
            checks = []
            if labels.dtype.is_floating:
                checks.append(tf.debugging.assert_equal(
                    labels, tf.round(labels),
                    message=(
                        "keras_kd: sparse labels must be whole numbers (class "
                        "ids); got a fractional value. Fix: pass integer ids, "
                        f"or soft labels of shape [batch, {num_classes}]."
                    ),
                ))
            labels = tf.cast(labels, tf.int64)
            message = (
                f"keras_kd: labels must be integer class ids in [0, {num_classes}) "
                f"(the models output {num_classes} logits). Fix: check the "
                "dataset's labels, or build the models with the right number "
                "of classes."
            )
            checks += [
                tf.debugging.assert_non_negative(labels, message=message),
                tf.debugging.assert_less(
                    labels, tf.constant(num_classes, tf.int64), message=message
                ),
            ]
            with tf.control_dependencies(checks):
                labels = tf.identity(labels)
            return tf.nn.sparse_softmax_cross_entropy_with_logits(
                labels=labels, logits=logits
            )
        labels = tf.cast(y, tf.float32)
        return tf.nn.softmax_cross_entropy_with_logits(labels=labels, logits=logits)

    def _distillation(self, teacher_logits, student_logits, y):
        if self._loss_takes_labels:
            return self._loss_fn(
                teacher_logits, student_logits, self.temperature, labels=y
            )
        return self._loss_fn(teacher_logits, student_logits, self.temperature)

    def _per_example(self, values, logits):
        """Checks a distillation loss returned shape [batch]; float32."""
        values = tf.cast(values, tf.float32)
        if values.shape.rank == 2 and values.shape[-1] == 1:
            values = tf.squeeze(values, -1)
        if values.shape.rank != 1:
            raise ValueError(
                f"the distillation loss {getattr(self._loss_fn, '__name__', self._loss_fn)!r} "
                f"returned shape {values.shape}; it must return one value per "
                f"example, shape [batch] (the logits have shape {logits.shape}). "
                "Fix: reduce over the class axis only (e.g. "
                "tf.reduce_sum(..., axis=-1)), not over the batch."
            )
        return values

    @staticmethod
    def _weights(sample_weight, per_example):
        if sample_weight is None:
            return None
        sw = tf.cast(sample_weight, tf.float32)
        if sw.shape.rank == 2 and sw.shape[-1] == 1:
            sw = tf.squeeze(sw, -1)
        return tf.broadcast_to(sw, tf.shape(per_example))

    def compute_losses(self, teacher_logits, student_logits, y=None):
        """Per-example ``(total, distillation, cross_entropy)`` losses, float32.

        ``cross_entropy`` is None when ``y`` is None (allowed only for
        ``alpha == 1``).
        """
        distill = self._per_example(
            self._distillation(teacher_logits, student_logits, y), student_logits
        )
        if y is None:
            if self.alpha != 1.0:
                raise ValueError(
                    f"the data has no labels, but alpha={self.alpha} gives the "
                    "label loss a weight of 1 - alpha > 0. Fix: pass (x, y) "
                    "batches, or set alpha=1.0 to distil from unlabelled data."
                )
            return distill, distill, None
        ce = self._student_cross_entropy(y, student_logits)
        total = self.alpha * distill + (1.0 - self.alpha) * ce
        return total, distill, ce

    @staticmethod
    def _global_batch_size(per_example):
        """The number of examples in this step across all replicas (float32)."""
        local = tf.cast(tf.shape(per_example)[0], tf.float32)
        ctx = tf.distribute.get_replica_context()
        if ctx is None or ctx.num_replicas_in_sync == 1:
            return local
        return ctx.all_reduce(tf.distribute.ReduceOp.SUM, local)

    def _average(self, per_example, sample_weight):
        """``Σ w·l / B_global``: this replica's share of the global-batch mean.

        Summed over replicas (as the optimizer sums gradients) it is the mean
        over the whole global batch, also when the last batch splits unevenly
        (``tf.nn.compute_average_loss`` would assume equal shares).
        """
        weighted = self._weighted(per_example, sample_weight)
        return tf.reduce_sum(weighted) / self._global_batch_size(per_example)

    def _regularization(self):
        """The student's regularization losses, split across replicas."""
        if not self._student_logits_model.losses:
            return 0.0
        return tf.nn.scale_regularization_loss(
            tf.add_n([tf.cast(loss, tf.float32) for loss in self._student_logits_model.losses])
        )

    def _track_loss(self, per_example, sample_weight, regularization):
        """Logs the global mean loss (+ regularization), whatever the replicas."""
        weighted = self._weighted(per_example, sample_weight)
        local = tf.cast(tf.shape(per_example)[0], tf.float32)
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        mean = tf.math.divide_no_nan(tf.reduce_sum(weighted), local)
        self._loss_tracker.update_state(
            mean + regularization * replicas, sample_weight=local
        )

    @staticmethod
    def _weighted(values, sw):
        return values if sw is None else values * sw

    def _logs(self, x, y, student_logits, sample_weight, with_teacher):
        """The step's logs: only the metrics this step could measure."""
        skip = []
        if y is not None:
            self.compute_metrics(x, y, student_logits, sample_weight=sample_weight)
        else:
            skip += [self.student_loss_tracker, self._compile_metrics]
        if not with_teacher:
            skip += [self.distillation_loss_tracker, self.teacher_agreement_tracker]
            skip += self._feature_trackers()
        return self._results(skip)

    def _feature_trackers(self):
        return list(getattr(self, "feature_loss_trackers", None) or [])

    # -- feature terms -----------------------------------------------------------

    def _teacher_outputs(self, x):
        """``(teacher logits, teacher features or None)``, inference mode."""
        if self._feature_plan is None:
            return self._teacher_forward(x), None
        return self._feature_plan.teacher_forward(x)

    def _student_outputs(self, x, training, with_features):
        """``(student logits, student features or None)``: one forward pass."""
        if self._feature_plan is None or not with_features:
            return self._student_logits_model(x, training=training), None
        return self._feature_plan.student_forward(x, training)

    def _feature_losses(self, teacher_features, student_features):
        """Each feature term's per-example value (unweighted, float32)."""
        if teacher_features is None or student_features is None:
            return []
        return self._feature_plan.per_example(teacher_features, student_features)

    def _add_features(self, total, feature_losses):
        for weight, value in zip(self._feature_plan.weights if feature_losses else (),
                                 feature_losses):
            total = total + weight * value
        return total

    def _track_features(self, feature_losses, sw):
        for tracker, value in zip(self._feature_trackers(), feature_losses):
            tracker.update_state(self._weighted(value, sw))

    def get_metrics_result(self):
        """Like Keras's, but skips compiled metrics never updated (no labels)."""
        return self._results()

    def _results(self, skip=()):
        logs = {}
        for metric in self.metrics:
            if any(metric is m for m in skip) or (
                metric is self._compile_metrics and not getattr(metric, "built", True)
            ):
                continue
            result = metric.result()
            if isinstance(result, dict):
                logs.update(result)
            else:
                logs[metric.name] = result
        return logs

    # -- steps -------------------------------------------------------------------

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        y, teacher_logits = self._split_targets(y)
        teacher_features = None
        if teacher_logits is None:
            teacher_logits, teacher_features = self._teacher_outputs(x)
        variables = self.trainable_variables
        with tf.GradientTape() as tape:
            student_logits, student_features = self._student_outputs(
                x, training=True, with_features=True
            )
            total, distill, ce = self.compute_losses(teacher_logits, student_logits, y)
            feature_losses = self._feature_losses(teacher_features, student_features)
            total = self._add_features(total, feature_losses)
            sw = self._weights(sample_weight, total)
            regularization = self._regularization()
            loss = self._average(total, sw) + regularization
            scaled = self.optimizer.scale_loss(loss)
        gradients = tape.gradient(scaled, variables)
        self.optimizer.apply(gradients, variables)

        self._track_loss(total, sw, regularization)
        self.distillation_loss_tracker.update_state(self._weighted(distill, sw))
        self._track_features(feature_losses, sw)
        if ce is not None:
            self.student_loss_tracker.update_state(self._weighted(ce, sw))
        self.teacher_agreement_tracker.update_state(
            _agreement(teacher_logits, student_logits)
        )
        return self._logs(x, y, student_logits, sample_weight, with_teacher=True)

    def test_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        y, teacher_logits = self._split_targets(y, uses_teacher=self.evaluate_with_teacher)
        student_logits, student_features = self._student_outputs(
            x, training=False, with_features=self.evaluate_with_teacher
        )
        if self.evaluate_with_teacher:
            teacher_features = None
            if teacher_logits is None:
                teacher_logits, teacher_features = self._teacher_outputs(x)
            total, distill, ce = self.compute_losses(teacher_logits, student_logits, y)
            feature_losses = self._feature_losses(teacher_features, student_features)
            total = self._add_features(total, feature_losses)
            sw = self._weights(sample_weight, total)
            self.distillation_loss_tracker.update_state(self._weighted(distill, sw))
            self._track_features(feature_losses, sw)
            self.teacher_agreement_tracker.update_state(
                _agreement(teacher_logits, student_logits)
            )
        else:
            if y is None:
                raise ValueError(
                    "evaluation without labels measures nothing: pass (x, y) "
                    "batches, or build the Distiller with "
                    "evaluate_with_teacher=True to measure agreement with the "
                    "teacher."
                )
            total = ce = self._student_cross_entropy(y, student_logits)
            sw = self._weights(sample_weight, total)
        self._track_loss(total, sw, self._regularization())
        if ce is not None:
            self.student_loss_tracker.update_state(self._weighted(ce, sw))
        return self._logs(
            x, y, student_logits, sample_weight, with_teacher=self.evaluate_with_teacher
        )

    # -- serialisation -----------------------------------------------------------

    def get_config(self):
        loss = self._loss_spec
        if callable(loss):
            loss = losses_lib.name_of(loss) or keras.saving.serialize_keras_object(loss)
        return {
            "name": self.name,
            "teacher": keras.saving.serialize_keras_object(self.teacher),
            "student": keras.saving.serialize_keras_object(self.student),
            "temperature": self.temperature,
            "alpha": self.alpha,
            "distillation_loss": loss,
            "evaluate_with_teacher": self.evaluate_with_teacher,
            "teacher_dtype": self.teacher_dtype,
            "features": [
                keras.saving.serialize_keras_object(term) for term in self._feature_terms
            ],
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        for key in ("teacher", "student"):
            config[key] = keras.saving.deserialize_keras_object(
                config[key], custom_objects=custom_objects
            )
        loss = config.get("distillation_loss", "kl")
        if isinstance(loss, dict):
            config["distillation_loss"] = keras.saving.deserialize_keras_object(
                loss, custom_objects=custom_objects
            )
        return cls(**config)


def _agreement(teacher_logits, student_logits):
    """1.0 where the student's top-1 class is the teacher's, else 0.0."""
    return tf.cast(
        tf.equal(
            tf.argmax(teacher_logits, axis=-1),
            tf.argmax(tf.cast(student_logits, tf.float32), axis=-1),
        ),
        tf.float32,
    )
