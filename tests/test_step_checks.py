"""Issue 15, "Nothing silent", in the training step: every batch is checked (finite
inputs and teacher logits, labels that are class ids or distributions, sample weights
of one per example), the errors come out first and name the fix, empty data and
unbuilt students are refused, a float16 teacher copy follows the teacher's weights,
and the temperature stays where float32 is exact."""

import re

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_kd
from keras_kd import checks, distribute, fitting, job, losses
from keras_kd.distiller import DataError

CLASSES, FEATURES = 3, 4


def dense(name, seed, hidden=None):
    """A tiny functional model on 4 features (one Dense, or Dense-ReLU-Dense)."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((FEATURES,))
    x = inputs if hidden is None else keras.layers.Dense(hidden, activation="relu")(inputs)
    return keras.Model(inputs, keras.layers.Dense(CLASSES)(x), name=name)


@pytest.fixture
def data(rng):
    x = rng.normal(size=(16, FEATURES)).astype(np.float32)
    return x, rng.integers(0, CLASSES, size=16).astype(np.int32)


def distiller(jit_compile=False, run_eagerly=False, **kwargs):
    d = keras_kd.Distiller(dense("teacher", 1), dense("student", 2), **kwargs)
    d.compile(optimizer=keras.optimizers.SGD(0.1), jit_compile=jit_compile,
              run_eagerly=run_eagerly)
    return d


def weights(model):
    return [w.copy() for w in model.get_weights()]


def assert_unchanged(before, model):
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


# -- 1. non-finite inputs and teacher logits ----------------------------------------------


@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("run_eagerly", [False, True])
def test_a_non_finite_input_stops_fit_before_any_weight_moves(data, bad, run_eagerly):
    x, y = data
    x = x.copy()
    x[13, 2] = bad  # in the second batch of 8
    d = distiller(run_eagerly=run_eagerly)
    before = weights(d.student)
    with pytest.raises(DataError) as err:
        d.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    text = str(err.value)
    assert text.startswith("the inputs x (images) of this batch contain NaN or Inf"), text
    assert "Fix: clean the data or check the preprocessing" in text
    assert isinstance(err.value, ValueError) and err.value.__suppress_context__
    # the first (clean) batch trained, the bad one did not: all weights finite
    assert all(np.isfinite(w).all() for w in d.student.get_weights())
    assert any(not np.array_equal(a, b) for a, b in zip(before, d.student.get_weights()))
    with pytest.raises(DataError, match="^the inputs x .images. of this batch contain NaN"):
        d.evaluate(x, y, batch_size=8, verbose=0)


def test_a_teacher_with_broken_weights_is_named(data):
    x, y = data
    d = distiller()
    kernel = d.teacher.layers[-1].kernel
    kernel.assign(np.where(np.arange(kernel.shape[1]) == 1, np.nan,
                           kernel.numpy()).astype(np.float32))
    assert np.isnan(d.teacher.predict(x, verbose=0)).any()  # the reference: NaN logits
    before = weights(d.student)
    with pytest.raises(DataError, match=r"^the teacher's logits for this batch contain NaN or "
                       r"Inf although its inputs are finite\. Fix: check the teacher"):
        d.fit(x, y, batch_size=8, verbose=0)
    assert_unchanged(before, d.student)
    d.evaluate(x, y, verbose=0)  # evaluation without the teacher does not need it
    with_teacher = distiller(evaluate_with_teacher=True)
    with_teacher.teacher.set_weights(d.teacher.get_weights())
    with pytest.raises(DataError, match="teacher's logits"):
        with_teacher.evaluate(x, y, verbose=0)


def test_cached_teacher_logits_are_checked(data):
    x, y = data
    cached = np.zeros((len(x), CLASSES), np.float32)
    d = distiller()
    d.fit(x, {"teacher_logits": cached, "labels": y}, batch_size=8, verbose=0)  # finite: fine
    cached[5, 1] = -np.inf
    before = weights(d.student)
    with pytest.raises(DataError, match=r"^the cached teacher logits of this batch contain NaN "
                       r"or Inf\. Fix: rebuild the teacher cache"):
        d.fit(x, {"teacher_logits": cached, "labels": y}, batch_size=8, verbose=0)
    assert_unchanged(before, d.student)


@pytest.mark.parametrize("problem", ["nan_inputs", "label_range", "soft_sum"])
def test_under_xla_the_failed_check_is_raised_after_the_epoch(data, problem):
    """XLA compiles assertions away: the step records the check, fit raises it."""
    x, y = data
    if problem == "nan_inputs":
        x = x.copy()
        x[3, 0] = np.nan
        words = "the inputs x (images) of this batch contain NaN or Inf"
    elif problem == "label_range":
        y = y.copy()
        y[3] = CLASSES
        words = f"labels must be integer class ids in [0, {CLASSES})"
    else:
        y = 3.0 * np.eye(CLASSES, dtype=np.float32)[y]
        words = "one-hot / soft labels must be probability distributions whose rows sum to 1"
    d = distiller(jit_compile=True)
    assert d.jit_compile
    with pytest.raises(DataError) as err:
        d.fit(x, y, batch_size=8, epochs=3, verbose=0)
    text = str(err.value)
    assert text.startswith(words) and "(Found in epoch 1: under jit_compile=True" in text, text
    with pytest.raises(DataError, match="Found in this run"):
        d.evaluate(x, y, batch_size=8, verbose=0)
    if problem == "nan_inputs":  # fit's validation (an evaluate inside it) keeps the record
        with pytest.raises(DataError, match="^the inputs x .images. .*Found in epoch 1"):
            distiller(jit_compile=True).fit(x, y, validation_data=data, batch_size=8, verbose=0)
        clean = distiller(jit_compile=True)
        clean.fit(*data, batch_size=8, verbose=0)  # no false alarm
        clean.evaluate(*data, batch_size=8, verbose=0)


def test_under_xla_the_bad_epoch_is_never_backed_up(data, tmp_path):
    """The check's callback runs first at the epoch's end: the bad epoch (weights
    possibly NaN) stops fit before a backup or a CSV row records it, so a rerun
    does not resume past it."""
    from keras_kd import checkpoint

    x, y = data
    x = x.copy()
    x[3, 0] = np.nan
    backup = checkpoint.AtomicBackupAndRestore(tmp_path / "backup", delete_on_end=False)
    log = keras.callbacks.CSVLogger(str(tmp_path / "history.csv"))
    d = distiller(jit_compile=True)
    with pytest.raises(DataError, match=r"^the inputs x .images.*Found in epoch 1"):
        d.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[log, backup])
    assert backup.latest_epoch() == 0 and not (tmp_path / "backup").exists()
    rows = (tmp_path / "history.csv").read_text().splitlines()
    assert len(rows) <= 1, rows  # (a header at most: no epoch row)
    # the reference: a clean run backs up its epochs through the same callbacks
    clean = distiller(jit_compile=True)
    clean.fit(*data, batch_size=8, epochs=2, verbose=0, callbacks=[log, backup])
    assert backup.latest_epoch() == 2


def test_the_job_fit_of_a_distiller_under_multi_worker_has_its_checks(data, monkeypatch):
    """fitting.fit (the job's path) under multi-worker runs the Distiller's own fit,
    so a bad batch is a DataError naming the fix (not TensorFlow's long error), and a
    reduced-precision teacher copy is refreshed first. (Multi-worker faked on the
    default strategy, where fit_loop runs too.)"""
    x, y = data
    monkeypatch.setattr(distribute, "is_multi_worker", lambda strategy: True)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    d = distiller()
    logs = fitting.fit(d, ds, epochs=1, verbose=0).history
    assert np.isfinite(logs["loss"]).all()
    bad = x.copy()
    bad[13, 2] = np.nan
    before = weights(d.student)
    with pytest.raises(DataError, match=r"^the inputs x .images. of this batch contain NaN or "
                       r"Inf.*Fix: clean the data"):
        fitting.fit(d, tf.data.Dataset.from_tensor_slices((bad, y)).batch(16), verbose=0)
    assert_unchanged(before, d.student)
    # the teacher copy follows the teacher's weights (the Distiller's checked run)
    teacher = dense("teacher", 1, hidden=8)
    half = keras_kd.Distiller(teacher, dense("student", 2), teacher_dtype="float16")
    half.compile(optimizer=keras.optimizers.SGD(0.0))
    teacher.set_weights(dense("other", 5, hidden=8).get_weights())
    fitting.fit(half, ds, verbose=0)
    np.testing.assert_allclose(half._plan.teacher_outputs(x)[0].numpy(),
                               np_forward(teacher.get_weights(), x), atol=2e-2)


def test_the_checks_cost_one_reduction_per_tensor(data):
    """The finiteness checks are one IsFinite + reduction per tensor (inputs, teacher
    logits), whatever the batch; the label checks one reduction each."""
    x, y = data
    d = distiller()
    d.fit(x, y, batch_size=8, verbose=0)  # (builds the optimizer)
    step = tf.function(d.train_step)
    graph = step.get_concrete_function((tf.TensorSpec((None, FEATURES), tf.float32),
                                        tf.TensorSpec((None,), tf.int32))).graph
    ops = [op.type for op in graph.get_operations()]
    assert ops.count("IsFinite") == 2 and ops.count("Assert") == 3, sorted(set(ops))


# -- 2. soft labels that are not distributions -------------------------------------------------


def test_soft_labels_must_be_distributions(data, rng):
    x, y = data
    one_hot = np.eye(CLASSES, dtype=np.float32)[y]
    d = distiller()
    before = weights(d.student)
    with pytest.raises(DataError) as err:
        d.fit(x, 3.0 * one_hot, batch_size=8, verbose=0)  # rows sum to 3
    assert str(err.value).startswith(
        "one-hot / soft labels must be probability distributions whose rows sum to 1 (within "
        "0.001), but a row of this batch sums to another value. Fix: one-hot encode class ids")
    negative = one_hot.copy()
    negative[2] = [1.5, -0.5, 0.0]  # sums to 1, but is no distribution
    with pytest.raises(DataError, match="has a negative or NaN entry"):
        d.fit(x, negative, batch_size=8, verbose=0, shuffle=False)  # (in the first batch)
    assert_unchanged(before, d.student)
    # distributions pass: label smoothing, MixUp-like Dirichlet rows (float32 rounding)
    smoothed = 0.9 * one_hot + 0.1 / CLASSES
    mixed = rng.dirichlet(np.ones(CLASSES), size=len(x)).astype(np.float32)
    assert np.abs(mixed.sum(-1) - 1).max() < 1e-3 < np.abs(3 * mixed.sum(-1) - 1).min()
    for labels in (smoothed, mixed):
        d.fit(x, labels, batch_size=8, verbose=0)


def test_asserted_passes_the_value_or_stops_the_graph_with_the_message():
    """The one assertion block (the label cross-entropy's and BatchChecks' without XLA)."""
    ok, bad = (tf.constant(True), "keras_kd: fine."), (tf.constant(False), "keras_kd: broken.")

    @tf.function
    def run(x, failing):
        found = [ok, (tf.logical_not(failing), "keras_kd: broken.")]
        return checks.asserted({"a": x, "b": x + 1.0}, found)

    got = run(tf.constant(2.0), tf.constant(False))
    assert float(got["a"]) == 2.0 and float(got["b"]) == 3.0
    graph = run.get_concrete_function(tf.constant(2.0), tf.constant(False)).graph
    waits = [op for op in graph.get_operations() if op.type == "Identity"
             and any(dep.type == "Assert" for dep in op.control_inputs)]
    assert len(waits) == 2  # each value of the structure waits for the assertions
    with pytest.raises(tf.errors.InvalidArgumentError, match="keras_kd: broken"):
        run(tf.constant(2.0), tf.constant(True))
    with pytest.raises(tf.errors.InvalidArgumentError, match="keras_kd: broken"):
        checks.asserted(tf.constant(1.0), [ok, bad])  # eagerly: at once


def test_label_checks_directly():
    logits = np.zeros((3, 4), np.float32)
    rows = np.array([[0.5, 0.5, 0, 0], [1, 0, 0, 0], [0.2, 0.2, 0.2, 0.3]], np.float32)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"rows sum to 1 \(within 0\.001\)"):
        losses.cross_entropy(rows, logits)  # the last row sums to 0.9
    rows[2, 3] = 0.4
    ce = losses.cross_entropy(rows, logits).numpy()
    np.testing.assert_allclose(ce, np.log(4.0) * rows.sum(-1), rtol=1e-6)  # uniform softmax
    # bfloat16 labels sum to 1 only within their own rounding (2^-8): accepted
    third = tf.cast(tf.fill((2, 3), 1 / 3), tf.bfloat16)
    assert abs(float(tf.reduce_sum(tf.cast(third[0], tf.float32))) - 1) > 1e-3
    losses.cross_entropy(third, np.zeros((2, 3), np.float32))
    found = checks.label_checks(np.array([0, 5]), 4)
    assert [bool(ok) for ok, _ in found] == [False]
    assert all(m.startswith("keras_kd: ") and m.isascii() for _, m in found)


# -- 4. half-clear errors made clear -----------------------------------------------------------


@pytest.mark.parametrize("bad, words", [(CLASSES, f"labels must be integer class ids in [0, {CLASSES})"),
                                        (-1, f"labels must be integer class ids in [0, {CLASSES})"),
                                        (0.5, "sparse labels must be whole numbers")])
def test_label_errors_come_first_in_the_notebook_api(data, bad, words):
    x, y = data
    y = y.astype(np.float32)
    y[9] = bad
    d = distiller()
    for run in (lambda: d.fit(x, y, batch_size=8, verbose=0),
                lambda: d.evaluate(x, y, batch_size=8, verbose=0),
                lambda: d.train_on_batch(x, y)):
        with pytest.raises(DataError) as err:
            run()
        text = str(err.value)
        assert text.startswith(words) and "Fix: " in text, text
        assert "Graph execution error" not in text and "\n" not in text
        assert err.value.__cause__ is None and err.value.__suppress_context__


def test_an_unbuilt_subclassed_student_is_refused_with_the_fix(data):
    x, y = data

    class Sub(keras.Model):
        def __init__(self):
            super().__init__(name="sub")
            self.head = keras.layers.Dense(CLASSES)

        def call(self, inputs):
            return self.head(inputs)

    student = Sub()
    with pytest.raises(ValueError, match=r"^the student 'sub' is not built: .* Fix: call it once "
                       r"on a batch, student\(x\[:1\]\), or build it"):
        keras_kd.Distiller(dense("teacher", 1), student)
    with pytest.raises(ValueError, match="is not built"):
        keras_kd.Distiller(dense("teacher", 1), keras.Sequential([keras.layers.Dense(CLASSES)]))
    student(x[:1])  # the fix
    d = keras_kd.Distiller(dense("teacher", 1), student)
    d.compile(optimizer="sgd")
    d.fit(x, y, batch_size=8, verbose=0)
    assert d.built


@pytest.mark.parametrize("shape", [(16, 2), (16, 3, 1), (16, 1, 1)])
def test_sample_weight_of_the_wrong_shape_is_named(data, shape):
    x, y = data
    d = distiller()
    with pytest.raises(ValueError, match=r"^sample_weight must have shape \(batch,\), one weight "
                       r"per example; this batch of 8 examples has sample_weight of shape "
                       rf"\(8, {', '.join(map(str, shape[1:]))}\)\. Fix: "):
        d.fit(x, y, sample_weight=np.ones(shape, np.float32), batch_size=8, verbose=0)
    d.fit(x, y, sample_weight=np.ones((16, 1), np.float32), batch_size=8, verbose=0)  # fine


def _empty_sets(x, y):
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    return {"take(0)": ds.batch(8).take(0),  # cardinality 0: refused before anything runs
            "filtered": ds.filter(lambda a, b: False).batch(8),  # unknown size: after the fit
            "drop_remainder": ds.batch(32, drop_remainder=True)}


@pytest.mark.parametrize("kind", ["take(0)", "filtered", "drop_remainder", "arrays"])
def test_empty_data_is_an_error_in_fit_and_in_the_job_path(data, kind):
    x, y = data
    d = distiller()
    with pytest.raises(fitting.EmptyDataError) as err:
        if kind == "arrays":
            d.fit(x[:0], y[:0], verbose=0)
        else:
            d.fit(_empty_sets(x, y)[kind], verbose=0)
    text = str(err.value)
    assert text.startswith("the training data ") and "Fix: check where the data comes from" in text
    assert isinstance(err.value, ValueError)
    if kind != "arrays":
        assert "tf.data.Dataset" in text
        plain = dense("baseline", 3)  # the job's path: fitting.fit of any model
        plain.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(True))
        with pytest.raises(fitting.EmptyDataError, match="^the training data"):
            fitting.fit(plain, _empty_sets(x, y)[kind], epochs=2, verbose=0)
        with pytest.raises(fitting.EmptyDataError, match="^the baseline's data .--dataset"):
            fitting.fit(plain, _empty_sets(x, y)[kind], role="the baseline's data (--dataset)",
                           verbose=0)
    # a run resumed past its last epoch begins none: no error
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    assert d.fit(ds, epochs=2, initial_epoch=2, verbose=0).history == {}


def test_temperature_is_bounded_where_float32_is_exact():
    t = np.array([[2.0, 0.5, -1.0]], np.float32)
    for bad, words in [(1e-40, "is below 0.01"), (0.009, "is below 0.01"),
                       (101, "is above 100"), (1e6, "is above 100")]:
        said = re.escape(f"temperature={bad:g} {words}")
        with pytest.raises(ValueError, match=rf"^{said}.*Fix: keras_kd accepts T in "
                           r"\[0\.01, 100\]"):
            losses.check_temperature(bad)
        with pytest.raises(ValueError, match=said):
            keras_kd.Distiller(dense("teacher", 1), dense("student", 2), temperature=bad)
        with pytest.raises(ValueError, match=said):
            losses.kl_divergence(t, t, bad)
        with pytest.raises(ValueError, match=f"^--{said}"):
            job.JobConfig(temperature=bad).validate()
    assert (losses.MIN_TEMPERATURE, losses.MAX_TEMPERATURE) == (0.01, 100.0)
    for ok in (0.01, 1, 100):
        assert losses.check_temperature(ok) == ok
        assert np.isfinite(losses.kl_divergence(t, t[:, ::-1], ok).numpy()).all()
    # The reference: outside the range float32 breaks down (NumPy float32 arithmetic).
    with np.errstate(all="ignore"):
        tiny = np.float32(1e-40)
        assert np.float32(tiny * tiny) == 0  # T² underflows: T²·KL is 0 or NaN
        assert np.isinf(np.float32(1e3) / np.float32(1e-36))  # t/T overflows
    # (a tensor temperature is taken as it is: this is the NaN the check prevents)
    assert not np.isfinite(losses.kl_divergence(t, t[:, ::-1], tf.constant(1e-40)).numpy()).all()


# -- 3. a reduced-precision teacher copy follows the teacher's weights --------------------------


def np_forward(model_weights, x):
    """Dense-ReLU-Dense in NumPy float64 (the independent reference)."""
    k1, b1, k2, b2 = (np.asarray(w, np.float64) for w in model_weights)
    return np.maximum(x @ k1 + b1, 0) @ k2 + b2


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_a_reduced_precision_teacher_follows_load_weights(data, tmp_path, dtype):
    x, y = data
    teacher = dense("teacher", 1, hidden=8)
    other = dense("other", 5, hidden=8)
    other.save_weights(tmp_path / "other.weights.h5")
    d = keras_kd.Distiller(teacher, dense("student", 2), teacher_dtype=dtype)
    d.compile(optimizer=keras.optimizers.SGD(0.0))
    new, old = np_forward(other.get_weights(), x), np_forward(teacher.get_weights(), x)
    tolerance = (1e-2 if dtype == "float16" else 4e-2) * np.abs(new).max()
    assert np.abs(new - old).max() > 10 * tolerance
    teacher.load_weights(tmp_path / "other.weights.h5")
    d.fit(x, y, batch_size=16, verbose=0)  # refreshes the copy
    got = d._plan.teacher_outputs(x)[0].numpy()
    np.testing.assert_allclose(got, new, atol=tolerance)  # (was: the old weights' logits)
    # evaluate with the teacher refreshes it too (the distillation loss is the new teacher's)
    teacher.set_weights(dense("third", 6, hidden=8).get_weights())
    e = keras_kd.Distiller(teacher, d.student, teacher_dtype=dtype, evaluate_with_teacher=True,
                           alpha=1.0, temperature=2.0)
    e.compile(optimizer="sgd")
    teacher.load_weights(tmp_path / "other.weights.h5")
    logs = e.evaluate(x, y, batch_size=16, verbose=0, return_dict=True)
    expected = losses.kl_divergence(new.astype(np.float32), d.student.predict(x, verbose=0), 2.0)
    assert logs["distillation_loss"] == pytest.approx(float(np.mean(expected)), rel=0.05)
