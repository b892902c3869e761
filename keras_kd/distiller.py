"""The Distiller: a ``keras.Model`` that trains a student from a frozen teacher.

Loss per example (Hinton et al. 2015)::

    loss_i = alpha · D(t_i, s_i; T) + (1 − alpha) · CE(y_i, s_i) [+ Σ_k weight_k · F_k,i]

``t_i`` / ``s_i`` are the teacher's / student's logits, ``D`` a distillation
loss from :mod:`keras_kd.losses` (default ``"kl"`` = ``T² · KL(p‖q)``), ``CE``
the student's softmax cross-entropy on the true labels
(:func:`keras_kd.losses.cross_entropy`: sparse ids or one-hot / soft label
vectors), ``F_k`` the optional feature terms (:mod:`keras_kd.features`). The
batch loss is ``Σ_i w_i · loss_i / B_global`` — a sum over the *global* batch
divided by its size — so a ``tf.distribute`` strategy with any number of
replicas computes the same gradient as one device. README.md ("In a
notebook") has an example and the Distiller's guarantees.

Models ending in a softmax are distilled from their pre-softmax output
(:func:`keras_kd.views.logits_model`); the student itself is left unchanged.
"""

import contextlib
import warnings

import keras
import tensorflow as tf

from keras_kd import checks, distribute, fitting, models, shapes, teachers, views
from keras_kd import features as features_lib
from keras_kd import losses as losses_lib
from keras_kd import preprocessing as prep
from keras_kd.checks import DataError

__all__ = ["Distiller", "DataError", "build_distiller", "check_settings", "TEACHER_LOGITS",
           "LABELS"]

#: Key of precomputed teacher logits in a target dict ``{TEACHER_LOGITS: t,
#: LABELS: y}``: the Distiller then trains from ``t`` and does not run the
#: teacher (offline distillation, see :mod:`keras_kd.cache`).
TEACHER_LOGITS = "teacher_logits"
#: Key of the true labels in such a target dict (optional when alpha = 1).
LABELS = "labels"


def check_settings(*, temperature, alpha, distillation_loss, features=None,
                   teacher_dtype="float32", teacher_preprocessing=None, teacher_weights=None,
                   num_teachers=1, prefix=""):
    """The Distiller's settings checked and normalised: ``{"temperature": float,
    "alpha": float, "distillation_loss": callable, "features": tuple of terms,
    "teacher_dtype": str, "teacher_preprocessing": str or tuple of str,
    "teacher_weights": tuple summing to 1 or None}``.

    The one check of them, for the Distiller (``prefix=""``) and the job's flags
    (``prefix="--"``: errors name ``--temperature`` ...), by ``losses.check_*``,
    ``losses.get``, ``features.normalize``, ``views.check_compute_dtype`` and
    ``teachers.check_teacher_settings`` (``num_teachers`` > 1: an ensemble; no
    feature terms with a reduced ``teacher_dtype``, an ensemble or a teacher
    preprocessing). ValueError (TypeError for a loss neither a name nor a callable)."""
    temperature = losses_lib.check_temperature(temperature, f"{prefix}temperature")
    alpha = losses_lib.check_alpha(alpha, f"{prefix}alpha")
    loss_fn = losses_lib.get(distillation_loss)
    teacher_dtype = views.check_compute_dtype(teacher_dtype, f"{prefix}teacher_dtype")
    terms = features_lib.normalize(features)
    specs, weights = teachers.check_teacher_settings(
        num_teachers, teacher_preprocessing, teacher_weights, prefix,
        dtype=teacher_dtype, features=bool(terms))
    return {"temperature": temperature, "alpha": alpha, "distillation_loss": loss_fn,
            "features": terms, "teacher_dtype": teacher_dtype,
            "teacher_preprocessing": specs, "teacher_weights": weights}


@keras.saving.register_keras_serializable(package="keras_kd")
class Distiller(keras.Model):
    """Trains ``student`` to match a frozen ``teacher`` and the true labels.

    Args:
      teacher: a trained ``keras.Model`` returning logits (or ending in
        softmax), or a list of them (an ensemble: the soft targets are the
        weighted mean of the members' ``softmax(t_i / T)``); ``distiller.teacher``,
        and ``distiller.teachers`` (always a list). Every member is frozen and called
        with ``training=False`` (:func:`keras_kd.teachers.logits_view`).
      student: the ``keras.Model`` to train, built (a subclassed model called
        once); same input rank, channels and number of classes as the teacher.
        Image height and width may differ: each model gets each batch resized
        to its own size (:func:`keras_kd.preprocessing.resize_images`).
      temperature: ``T`` of the soft targets ``softmax(z / T)``, in ``[0.01, 100]``
        (where float32 is exact: :func:`keras_kd.losses.check_temperature`).
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
      features: feature terms (:mod:`keras_kd.features`: ``Hint``,
        ``AttentionTransfer``, or their string form). Their projectors are
        trained with the student and saved with the Distiller, never in
        ``student``.
      teacher_dtype: ``"float32"`` (default), ``"bfloat16"`` or ``"float16"``:
        the precision of the teacher's inference (a copy,
        :func:`keras_kd.views.with_compute_dtype`); logits are cast to float32.
      teacher_preprocessing: how the teacher expects its input
        (:func:`keras_kd.preprocessing.parse_preprocessing`), applied in its view
        only; a list: one per ensemble member. Default ``"none"`` (raw pixels).
      teacher_weights: one weight ≥ 0 per ensemble member (normalised to sum
        1); None: equal.

    Nothing silent: every batch is checked (one reduction per tensor): finite
    inputs and teacher logits (cached ones too), labels that are class ids in
    ``[0, classes)`` or rows of a probability distribution
    (:func:`keras_kd.checks.label_checks`), sample weights of shape ``(batch,)``.
    The first failure stops ``fit`` / ``evaluate`` with a :class:`DataError`
    naming the fix, before that batch changes a weight (under
    ``jit_compile=True``: after its epoch, see ``compile``); empty data is a
    :class:`keras_kd.checks.EmptyDataError`.

    The settings are checked by :func:`check_settings`. When a batch's targets
    are a dict ``{"teacher_logits": t, "labels": y}`` (offline distillation,
    :func:`keras_kd.cache.attach`), ``t`` replaces the teacher's forward pass.

    Training logs: ``loss`` (the total), ``distillation_loss``,
    ``student_loss`` (cross-entropy), ``teacher_agreement`` (fraction of
    examples whose top-1 class is the teacher's), one ``<name>_loss`` per
    feature term, and the compiled metrics (of the student's logits against
    the labels). ``distiller(x)`` / ``predict`` return the student's logits.
    """

    #: :func:`keras_kd.fitting.fit` calls this class's own ``fit`` under
    #: multi-worker training too (it runs ``fit_loop`` inside its checked run).
    fits_multi_worker = True

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
        teacher_preprocessing=None,
        teacher_weights=None,
        name="distiller",
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        members = teachers.teacher_list(teacher)
        if not isinstance(student, keras.Model):
            raise ValueError(f"student must be a keras.Model, got {type(student).__name__}.")
        if not student.built:
            raise ValueError(
                f"the student {student.name!r} is not built: it has no weights and no known input "
                "or output shape yet (a subclassed keras.Model that was never called, or a "
                "Sequential model without keras.Input), so keras_kd cannot check it against the "
                "teacher. Fix: call it once on a batch, student(x[:1]), or build it "
                "(student.build(input_shape), keras.Input(shape) first) before the Distiller.")
        if any(member is student for member in members):
            raise ValueError("teacher and student are the same model object; the teacher is "
                             "frozen, so nothing would train. Pass two different models.")
        settings = check_settings(
            temperature=temperature, alpha=alpha, distillation_loss=distillation_loss,
            features=features, teacher_dtype=teacher_dtype, num_teachers=len(members),
            teacher_preprocessing=teacher_preprocessing, teacher_weights=teacher_weights,
        )
        self._loss_fn = settings["distillation_loss"]
        self._loss_spec = distillation_loss
        self._loss_takes_labels = losses_lib.accepts_labels(self._loss_fn)
        self.temperature = settings["temperature"]
        self.alpha = settings["alpha"]
        self.evaluate_with_teacher = bool(evaluate_with_teacher)
        self.teacher_dtype = teacher_dtype
        self.teacher_preprocessing = settings["teacher_preprocessing"]
        self._teacher_weights = None if teacher_weights is None else list(map(float, teacher_weights))
        for member in members:
            member.trainable = False
        self.teacher = members if isinstance(teacher, (list, tuple)) else teacher
        self.student = student
        resized = any(prep.sizes_differ(member, student) for member in members)
        options = {"preprocessing": self.teacher_preprocessing,  # (only what is not the default)
                   "weights": settings["teacher_weights"],
                   "temperature": self.temperature if len(members) > 1 else None,
                   "input_shape": prep.input_shape(student) if resized else None}
        self._teacher_logits_model, self.teacher_softmax_recovered = teachers.logits_view(
            teacher, teacher_dtype, **{k: v for k, v in options.items() if v not in (None, "none")})
        self._student_logits_model, self.student_softmax_recovered = views.logits_model(
            student, "student")
        self.num_classes = shapes.check_same_io(self._teacher_logits_model,
                                               self._student_logits_model)
        self._feature_terms = settings["features"]
        self._student_logits_model = prep.at_sizes_of(  # (the student itself unchanged)
            self._student_logits_model, student, members, tapped=bool(self._feature_terms))
        # The forward passes (and, with feature terms, the multi-output views).
        self._plan = features_lib.FeaturePlan(self._feature_terms, members[0], student,
                                              self._teacher_logits_model,
                                              self._student_logits_model)
        if self._feature_terms:
            # Tracked here (not in the student): trained, saved with the
            # Distiller, never exported with the student.
            self.feature_projectors = list(self._plan.projectors)

        self.distillation_loss_tracker = keras.metrics.Mean(name="distillation_loss")
        self.student_loss_tracker = keras.metrics.Mean(name="student_loss")
        self.teacher_agreement_tracker = keras.metrics.Mean(name="teacher_agreement")
        if self._feature_terms:
            self.feature_loss_trackers = [keras.metrics.Mean(name=n)
                                          for n in self._plan.metric_names]
        if all(member.built for member in members):
            self.built = True
        # Under XLA (which drops assertions) the first failed batch check is
        # recorded here and raised after the epoch.
        self._checks = checks.BatchChecks()

    features = property(lambda self: self._feature_terms,
                        doc="The feature-distillation terms, a tuple (empty without features).")
    teachers = property(lambda self: teachers.teacher_list(self.teacher),
                        doc="The teacher(s), always a list (one model, or an ensemble's members).")

    # -- Keras API -----------------------------------------------------------

    def call(self, inputs, training=False):
        """The student's logits."""
        return self._student_logits_model(inputs, training=training)

    def compile(self, optimizer="adam", loss=None, metrics=None, jit_compile=False,
                **kwargs):
        """Like ``keras.Model.compile``; the loss is the Distiller's own (passing
        ``loss`` is an error). ``metrics`` measure the student's logits against
        the labels, e.g. ``metrics=["accuracy"]``.

        ``jit_compile`` defaults to False (Keras's ``"auto"`` turns XLA on for
        any GPU). The step checks every batch (finite inputs and teacher logits,
        labels that are class ids or distributions) and stops at the first bad
        one; XLA compiles such assertions away, so under ``jit_compile=True``
        the step records the first failed check and ``fit`` raises it at the
        end of that epoch (``evaluate`` at its end) instead, before the epoch's
        other callbacks (a backup, a CSV row) see that epoch. Under a strategy
        with several replicas ``jit_compile=True`` is turned off with a warning
        (:func:`keras_kd.distribute.resolve_jit_compile`).
        """
        if loss is not None:
            raise ValueError(
                "Distiller.compile() takes no loss: the loss is alpha * distillation_loss + (1 - "
                "alpha) * cross-entropy of the student's logits on the labels. Choose the "
                "distillation loss with Distiller(distillation_loss=...), and drop loss=.")
        jit_compile, note = distribute.resolve_jit_compile(
            jit_compile != "auto" and jit_compile, self.distribute_strategy,
            "compile(jit_compile=True)")
        if note:
            warnings.warn(note, stacklevel=2)
        super().compile(optimizer=optimizer, metrics=metrics, jit_compile=jit_compile, **kwargs)

    def fit(self, x=None, y=None, **kwargs):
        """``keras.Model.fit``; under ``MultiWorkerMirroredStrategy`` (where
        Keras 3.15's own ``fit`` fails) a loop over ``strategy.run`` with the
        same callbacks (:func:`keras_kd.fitting.fit_loop`).

        Never silent: empty data is a :class:`keras_kd.checks.EmptyDataError`,
        a batch that fails the step's checks a :class:`DataError` naming the fix
        (under ``jit_compile=True`` at the end of its epoch: see ``compile``). A
        reduced-precision teacher copy (``teacher_dtype``) first takes the
        teacher's current weights (:func:`keras_kd.views.refresh_dtype_copies`).
        """
        note = models.replicas_batchnorm_note(  # warned once per Distiller
            self.student, self.distribute_strategy.num_replicas_in_sync)
        if note and not getattr(self, "_batchnorm_noted", False):
            self._batchnorm_noted = True
            warnings.warn(note, stacklevel=2)
        multi_worker = distribute.is_multi_worker(self.distribute_strategy)
        if multi_worker and y is not None:
            raise ValueError(
                "under multi-worker training pass a tf.data.Dataset of (x, y) "
                "batches, not separate x and y.")

        def run(**kw):
            if self.jit_compile:  # first: it stops fit before a backup saves the bad epoch
                callbacks = kw.get("callbacks")
                if isinstance(callbacks, keras.callbacks.CallbackList):
                    callbacks.callbacks.insert(0, self._checks.callback())
                else:
                    kw["callbacks"] = [self._checks.callback(), *(callbacks or [])]
            if multi_worker:
                return fitting.fit_loop(self, x, **kw)
            return super(Distiller, self).fit(x, y, **kw)

        with self._checked_run():
            return fitting.fit_checked(run, x, kwargs)

    def evaluate(self, *args, **kwargs):
        """``keras.Model.evaluate``, with the checks and teacher refresh of ``fit``."""
        with self._checked_run():
            return super().evaluate(*args, **kwargs)

    def train_on_batch(self, *args, **kwargs):
        """``keras.Model.train_on_batch``, with the checks and teacher refresh of ``fit``."""
        with self._checked_run():
            return super().train_on_batch(*args, **kwargs)

    def test_on_batch(self, *args, **kwargs):
        """``keras.Model.test_on_batch``, with the checks and teacher refresh of ``fit``."""
        with self._checked_run():
            return super().test_on_batch(*args, **kwargs)

    @contextlib.contextmanager
    def _checked_run(self):
        """Around a run of the steps: the teacher copy refreshed, a failed batch
        check raised as a DataError (and, under XLA, the recorded one after it).
        A run inside another (``fit``'s validation ``evaluate``) leaves all of
        this to the outer one (so it keeps what the epoch's steps recorded)."""
        if getattr(self, "_run_open", False):
            yield
            return
        with self.distribute_strategy.scope():
            views.refresh_dtype_copies(self._teacher_logits_model)
            self._checks.reset()
        self._run_open = True
        try:
            with checks.step_errors():
                yield
        finally:
            self._run_open = False
        self._checks.raise_recorded("in this run")

    def compile_from_config(self, config):
        """Re-compiles after ``keras.saving.load_model`` (optimizer, metrics)."""
        config = keras.saving.deserialize_keras_object(config)
        config.pop("loss", None)
        config.pop("loss_weights", None)
        self.compile(**config)
        if getattr(self, "optimizer", None) is not None and self.built:
            self.optimizer.build(self.trainable_variables)

    # -- the math --------------------------------------------------------------

    def _split_targets(self, y, uses_teacher=True):
        """``(labels, cached teacher logits or None)`` from the step's targets: the
        labels, or ``{"teacher_logits": t, "labels": y}`` (offline distillation;
        refused with feature terms when this step ``uses_teacher``)."""
        if not isinstance(y, dict):
            return y, None
        unknown = sorted(set(y) - {TEACHER_LOGITS, LABELS})
        if TEACHER_LOGITS not in y or unknown:
            raise ValueError(
                f"dict targets must be {{{TEACHER_LOGITS!r}: teacher logits, "
                f"{LABELS!r}: labels}}; got keys {sorted(y)}. Fix: pass the "
                "labels alone, or build the dict with keras_kd.cache.attach.")
        cached = tf.cast(y[TEACHER_LOGITS], tf.float32)
        if (self.num_classes is not None and cached.shape.rank is not None
                and cached.shape[-1] not in (None, self.num_classes)):
            raise ValueError(
                f"the cached teacher logits have {cached.shape[-1]} classes, the "
                f"models {self.num_classes}. Fix: rebuild the cache for this "
                "teacher (keras_kd.cache.build).")
        if self._feature_terms and uses_teacher:
            raise ValueError(
                f"this Distiller has feature terms ({', '.join(self._plan.metric_names)}), which "
                "need the teacher's intermediate layers on every batch, but the targets carry "
                "cached teacher logits (offline distillation). Fix: pass plain labels (drop the "
                "teacher cache), or build the Distiller without features=.")
        return y.get(LABELS), tf.stop_gradient(cached)

    def _distillation(self, teacher_logits, student_logits, y):
        if self._loss_takes_labels:
            return self._loss_fn(teacher_logits, student_logits, self.temperature, labels=y)
        return self._loss_fn(teacher_logits, student_logits, self.temperature)

    @staticmethod
    def _weights(sample_weight, per_example):
        """The sample weights as float32 ``[B]``; ValueError for another shape
        (``[B, 1]`` is squeezed)."""
        if sample_weight is None:
            return None
        sw = tf.cast(sample_weight, tf.float32)
        if sw.shape.rank == 2 and sw.shape[-1] == 1:
            sw = tf.squeeze(sw, -1)
        n, m = per_example.shape[0], (sw.shape[0] if sw.shape.rank else None)
        if sw.shape.rank != 1 or (n is not None and m is not None and n != m):
            raise ValueError(
                f"sample_weight must have shape (batch,), one weight per example; this batch of "
                f"{n if n is not None else 'B'} examples has sample_weight of shape "
                f"{tuple(sample_weight.shape)}. Fix: pass one number per example (a vector as "
                "long as x); for per-class weights, index them by the labels (w[y]).")
        return tf.broadcast_to(sw, tf.shape(per_example))

    def compute_losses(self, teacher_logits, student_logits, y=None):
        """Per-example ``(total, distillation, cross_entropy)`` losses, float32.

        ``cross_entropy`` is None when ``y`` is None (allowed only for
        ``alpha == 1``).
        """
        distill = losses_lib.per_example(
            self._distillation(teacher_logits, student_logits, y), self._loss_fn, student_logits
        )
        if y is None:
            if self.alpha != 1.0:
                raise ValueError(
                    f"the data has no labels, but alpha={self.alpha} gives the "
                    "label loss a weight of 1 - alpha > 0. Fix: pass (x, y) "
                    "batches, or set alpha=1.0 to distil from unlabelled data.")
            return distill, distill, None
        ce = losses_lib.cross_entropy(y, student_logits)
        total = self.alpha * distill + (1.0 - self.alpha) * ce
        return total, distill, ce

    def _average(self, per_example, sample_weight):
        """``Σ w·l / B_global``: this replica's share of the global-batch mean.

        Summed over replicas (as the optimizer sums gradients) it is the mean
        over the whole global batch, also when the last batch splits unevenly
        (``tf.nn.compute_average_loss`` would assume equal shares).
        """
        weighted = self._weighted(per_example, sample_weight)
        examples = tf.cast(tf.shape(per_example)[0], tf.float32)
        ctx = tf.distribute.get_replica_context()
        if ctx is not None and ctx.num_replicas_in_sync > 1:
            examples = ctx.all_reduce(tf.distribute.ReduceOp.SUM, examples)
        return tf.reduce_sum(weighted) / examples

    def _regularization(self):
        """The student's regularization losses, split across replicas."""
        if not self._student_logits_model.losses:
            return 0.0
        return tf.nn.scale_regularization_loss(
            tf.add_n([tf.cast(loss, tf.float32) for loss in self._student_logits_model.losses])
        )

    @staticmethod
    def _weighted(values, sw):
        return values if sw is None else values * sw

    def _track(self, total, sw, regularization, ce, with_teacher=None):
        """Logs the step's losses: the global mean ``loss`` (+ regularization,
        whatever the replicas), ``student_loss``, and with ``with_teacher =
        (distill, feature losses, teacher logits, student logits)`` the terms
        only a step that has the teacher's outputs measures."""
        local = tf.cast(tf.shape(total)[0], tf.float32)
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        mean = tf.math.divide_no_nan(tf.reduce_sum(self._weighted(total, sw)), local)
        tracker = views.loss_tracker(self)
        tracker.update_state(mean + regularization * replicas, sample_weight=local)
        if with_teacher is not None:
            distill, feature_losses, teacher_logits, student_logits = with_teacher
            self.distillation_loss_tracker.update_state(self._weighted(distill, sw))
            for tracker, value in zip(self._feature_trackers(), feature_losses):
                tracker.update_state(self._weighted(value, sw))
            self.teacher_agreement_tracker.update_state(_agreement(teacher_logits, student_logits))
        if ce is not None:
            self.student_loss_tracker.update_state(self._weighted(ce, sw))

    def _logs(self, x, y, student_logits, sample_weight, with_teacher):
        """The step's logs: only the metrics this step could measure."""
        skip = []
        if y is not None:
            self.compute_metrics(x, y, student_logits, sample_weight=sample_weight)
        else:
            skip += [self.student_loss_tracker, views.compile_metrics(self)]
        if not with_teacher:
            skip += [self.distillation_loss_tracker, self.teacher_agreement_tracker]
            skip += self._feature_trackers()
        return self._results(skip)

    def _feature_trackers(self):
        return list(getattr(self, "feature_loss_trackers", None) or [])

    def get_metrics_result(self):
        """Like Keras's, but skips compiled metrics never updated (no labels)."""
        return self._results()

    def _results(self, skip=()):
        logs = {}
        for metric in self.metrics:
            if any(metric is m for m in skip) or (
                metric is views.compile_metrics(self) and not getattr(metric, "built", True)
            ):
                continue
            result = metric.result()
            if isinstance(result, dict):
                logs.update(result)
            else:
                logs[metric.name] = result
        return logs

    # -- steps -------------------------------------------------------------------

    def _teacher(self, x, cached):
        """The teacher's ``(logits, features or None)``: ``cached`` logits, or a
        pass; either checked to be finite."""
        if cached is not None:
            return self._require(cached, [(checks.all_finite(cached),
                                           checks.CACHED_NOT_FINITE)]), None
        logits, features = self._plan.teacher_outputs(x)
        return self._require(logits, [(checks.all_finite(logits),
                                       checks.TEACHER_NOT_FINITE)]), features

    def _require(self, value, batch_checks):
        """``value`` once ``batch_checks`` hold: asserted, or recorded under XLA
        (:meth:`keras_kd.checks.BatchChecks.require`)."""
        return self._checks.require(value, batch_checks, jit_compile=self.jit_compile)

    def _checked_inputs(self, x, y):
        """``x`` once it is finite; under XLA also the labels' checks recorded
        (elsewhere :func:`keras_kd.losses.cross_entropy` asserts them)."""
        x = self._require(x, [(checks.all_finite(x), checks.INPUTS_NOT_FINITE)])
        if self.jit_compile and y is not None and self.num_classes is not None:
            self._require(y, checks.label_checks(y, self.num_classes))
        return x

    def _objective(self, teacher, student, y, sample_weight):
        """Per-example ``(total, ce, teacher terms, weights)`` from both models'
        ``(logits, features or None)``."""
        total, distill, ce = self.compute_losses(teacher[0], student[0], y)
        feature_losses = self._plan.losses(teacher[1], student[1])
        total = self._plan.add_weighted(total, feature_losses)
        terms = (distill, feature_losses, teacher[0], student[0])
        return total, ce, terms, self._weights(sample_weight, total)

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        y, cached = self._split_targets(y)
        x = self._checked_inputs(x, y)
        teacher = self._teacher(x, cached)
        variables = self.trainable_variables
        with tf.GradientTape() as tape:
            student = self._plan.student_outputs(x, training=True)
            total, ce, terms, sw = self._objective(teacher, student, y, sample_weight)
            regularization = self._regularization()
            scaled = self.optimizer.scale_loss(self._average(total, sw) + regularization)
        self.optimizer.apply(tape.gradient(scaled, variables), variables)
        self._track(total, sw, regularization, ce, with_teacher=terms)
        return self._logs(x, y, student[0], sample_weight, with_teacher=True)

    def test_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        with_teacher = self.evaluate_with_teacher
        y, cached = self._split_targets(y, uses_teacher=with_teacher)
        x = self._checked_inputs(x, y)
        student = self._plan.student_outputs(x, training=False, with_features=with_teacher)
        if with_teacher:
            total, ce, terms, sw = self._objective(
                self._teacher(x, cached), student, y, sample_weight)
        else:
            if y is None:
                raise ValueError(
                    "evaluation without labels measures nothing: pass (x, y) batches, or build the "
                    "Distiller with evaluate_with_teacher=True to measure agreement with the "
                    "teacher.")
            total = ce = losses_lib.cross_entropy(y, student[0])
            sw, terms = self._weights(sample_weight, total), None
        self._track(total, sw, self._regularization(), ce, with_teacher=terms)
        return self._logs(x, y, student[0], sample_weight, with_teacher=with_teacher)

    # -- serialisation -----------------------------------------------------------

    def get_config(self):
        loss = self._loss_spec
        if callable(loss):
            loss = losses_lib.name_of(loss) or keras.saving.serialize_keras_object(loss)
        specs = self.teacher_preprocessing
        return {
            "name": self.name,
            "teacher": keras.saving.serialize_keras_object(self.teacher),  # a model or a list
            "student": keras.saving.serialize_keras_object(self.student),
            "temperature": self.temperature,
            "alpha": self.alpha,
            "distillation_loss": loss,
            "evaluate_with_teacher": self.evaluate_with_teacher,
            "teacher_dtype": self.teacher_dtype,
            "teacher_preprocessing": list(specs) if isinstance(specs, tuple) else specs,
            "teacher_weights": self._teacher_weights,
            "features": [keras.saving.serialize_keras_object(t) for t in self._feature_terms],
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        for key in ("teacher", "student"):  # (a list of teachers: a list of models)
            config[key] = keras.saving.deserialize_keras_object(
                config[key], custom_objects=custom_objects)
        loss = config.get("distillation_loss", "kl")
        if isinstance(loss, dict):
            config["distillation_loss"] = keras.saving.deserialize_keras_object(
                loss, custom_objects=custom_objects)
        return cls(**config)


def _agreement(teacher_logits, student_logits):
    """1.0 where the student's top-1 class is the teacher's, else 0.0."""
    same = tf.equal(tf.argmax(teacher_logits, axis=-1),
                    tf.argmax(tf.cast(student_logits, tf.float32), axis=-1))
    return tf.cast(same, tf.float32)


def build_distiller(strategy, teacher, student, *, optimizer="adam", metrics=None,
                    compile_kwargs=None, **distiller_kwargs):
    """A compiled :class:`Distiller` whose models live in ``strategy``.

    ``teacher`` (or a list: an ensemble) and ``student`` are models (one built
    outside the scope is copied into it with its weights, :func:`keras_kd.distribute.in_scope`:
    use ``distiller.student`` afterwards) or zero-argument functions that build them.
    ``distiller_kwargs`` go to :class:`Distiller`, ``compile_kwargs`` to its ``compile``::

        strategy = distribute.get_strategy("mirrored")
        distiller = keras_kd.build_distiller(
            strategy, teacher, lambda: models.build("mlp", shape, 10),
            temperature=3.0, alpha=0.7, optimizer="adam", metrics=["accuracy"])
        distiller.fit(global_batches)
    """
    with strategy.scope():
        teacher = [distribute.in_scope(strategy, t, "teacher") for t in teacher] if isinstance(
            teacher, (list, tuple)) else distribute.in_scope(strategy, teacher, "teacher")
        student = distribute.in_scope(strategy, student, "student")
        distiller = Distiller(teacher, student, **distiller_kwargs)
        if isinstance(optimizer, str):
            optimizer = keras.optimizers.get(optimizer)
        distiller.compile(optimizer=optimizer, metrics=metrics, **(compile_kwargs or {}))
    return distiller
