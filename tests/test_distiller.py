"""Distiller behaviour: loss values, invariants, label forms, errors, saving."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from test_losses import np_kl, np_softmax

import keras_kd
from keras_kd import losses

NUM_CLASSES = 3
FEATURES = 6


def mlp(hidden, name, seed, softmax=False, classes=NUM_CLASSES, features=FEATURES):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((features,))
    x = keras.layers.Dense(hidden, activation="relu")(inputs)
    x = keras.layers.Dense(classes, activation="softmax" if softmax else None)(x)
    return keras.Model(inputs, x, name=name)


def copy_of(model, name):
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    clone.name = name
    return clone


@pytest.fixture
def data(rng):
    x = rng.normal(size=(64, FEATURES)).astype(np.float32)
    w = rng.normal(size=(FEATURES, NUM_CLASSES))
    y = np.argmax(x @ w + 0.5 * rng.normal(size=(64, NUM_CLASSES)), axis=-1).astype(np.int32)
    return x, y


@pytest.fixture
def teacher():
    return mlp(32, "teacher", seed=1)


@pytest.fixture
def student():
    return mlp(8, "student", seed=2)


def np_ce(y, logits):
    logp = np.log(np_softmax(logits, 1.0))
    return -logp[np.arange(len(y)), y]


def weights_of(model):
    return [w.copy() for w in model.get_weights()]


def test_first_step_loss_matches_numpy_reference(teacher, student, data):
    x, y = data
    T, alpha = 3.0, 0.7
    t_logits = teacher.predict(x, verbose=0)
    s_logits = student.predict(x, verbose=0)
    expected_distill = np_kl(t_logits, s_logits, T).mean()
    expected_ce = np_ce(y, s_logits).mean()
    expected_agree = np.mean(t_logits.argmax(-1) == s_logits.argmax(-1))

    d = keras_kd.Distiller(teacher, student, temperature=T, alpha=alpha)
    d.compile(optimizer=keras.optimizers.SGD(0.0), metrics=["accuracy"])
    logs = d.train_on_batch(x, y, return_dict=True)
    np.testing.assert_allclose(logs["distillation_loss"], expected_distill, rtol=1e-4)
    np.testing.assert_allclose(logs["student_loss"], expected_ce, rtol=1e-4)
    np.testing.assert_allclose(
        logs["loss"], alpha * expected_distill + (1 - alpha) * expected_ce, rtol=1e-4
    )
    np.testing.assert_allclose(logs["teacher_agreement"], expected_agree, atol=1e-6)
    np.testing.assert_allclose(
        logs["accuracy"], np.mean(s_logits.argmax(-1) == y), atol=1e-6
    )


def test_one_sgd_step_moves_weights_by_the_analytic_gradient(teacher, student, data):
    """Output-layer bias gradient = mean_i[alpha·T·(q−p) + (1−alpha)(softmax(s)−onehot)]."""
    x, y = data
    T, alpha, lr = 2.0, 0.6, 0.5
    t_logits = teacher.predict(x, verbose=0)
    s_logits = student.predict(x, verbose=0)
    onehot = np.eye(NUM_CLASSES)[y]
    grad_bias = np.mean(
        alpha * T * (np_softmax(s_logits, T) - np_softmax(t_logits, T))
        + (1 - alpha) * (np_softmax(s_logits, 1.0) - onehot),
        axis=0,
    )
    bias_before = student.layers[-1].bias.numpy().copy()
    d = keras_kd.Distiller(teacher, student, temperature=T, alpha=alpha)
    d.compile(optimizer=keras.optimizers.SGD(lr))
    d.train_on_batch(x, y)
    np.testing.assert_allclose(
        student.layers[-1].bias.numpy(), bias_before - lr * grad_bias, rtol=1e-4, atol=1e-6
    )


def test_fit_lowers_loss_and_never_touches_the_teacher(teacher, student, data):
    x, y = data
    before = weights_of(teacher)
    d = keras_kd.Distiller(teacher, student, temperature=4.0, alpha=0.9)
    d.compile(optimizer=keras.optimizers.Adam(0.02), metrics=["accuracy"])
    history = d.fit(x, y, batch_size=16, epochs=8, verbose=0)
    losses_seen = history.history["loss"]
    assert losses_seen[-1] < 0.6 * losses_seen[0]
    assert history.history["teacher_agreement"][-1] > history.history["teacher_agreement"][0]
    for a, b in zip(before, weights_of(teacher)):
        np.testing.assert_array_equal(a, b)  # bit-identical
    assert not teacher.trainable
    assert all(not v.trainable for v in teacher.weights) or teacher.trainable_weights == []
    student_ids = {id(v) for v in student.trainable_variables}
    assert {id(v) for v in d.trainable_variables} == student_ids


def test_teacher_runs_in_inference_mode(student, data):
    """Dropout(rate≈1) in the teacher would zero its logits in training mode."""
    x, y = data
    keras.utils.set_random_seed(5)
    inputs = keras.Input((FEATURES,))
    h = keras.layers.Dense(16)(inputs)
    h = keras.layers.Dropout(0.999)(h)
    teacher = keras.Model(inputs, keras.layers.Dense(NUM_CLASSES)(h))
    t_logits = teacher.predict(x, verbose=0)
    s_logits = student.predict(x, verbose=0)
    d = keras_kd.Distiller(teacher, student, temperature=2.0, alpha=1.0)
    d.compile(optimizer=keras.optimizers.SGD(0.0))
    logs = d.train_on_batch(x, y, return_dict=True)
    np.testing.assert_allclose(
        logs["distillation_loss"], np_kl(t_logits, s_logits, 2.0).mean(), rtol=1e-4
    )


def test_alpha_zero_trains_exactly_like_a_plain_student(teacher, student, data):
    x, y = data
    plain = copy_of(student, "plain")
    initial = weights_of(student)
    d = keras_kd.Distiller(teacher, student, alpha=0.0)
    d.compile(optimizer=keras.optimizers.SGD(0.1))
    d.fit(x, y, batch_size=16, epochs=3, shuffle=False, verbose=0)
    plain.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    plain.fit(x, y, batch_size=16, epochs=3, shuffle=False, verbose=0)
    for a, b in zip(student.get_weights(), plain.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert not np.allclose(student.get_weights()[0], initial[0])  # it did train


def test_alpha_one_ignores_labels(teacher, student, data, rng):
    x, y = data
    other = copy_of(student, "other")
    third = copy_of(student, "third")
    shuffled = rng.permutation(y)
    assert np.mean(shuffled != y) > 0.3
    for model, labels in ((student, y), (other, shuffled)):
        d = keras_kd.Distiller(teacher, model, alpha=1.0)
        d.compile(optimizer=keras.optimizers.SGD(0.1))
        d.fit(x, labels, batch_size=16, epochs=2, shuffle=False, verbose=0)
    for a, b in zip(student.get_weights(), other.get_weights()):
        np.testing.assert_array_equal(a, b)
    # ... and it can run without any labels at all.
    d = keras_kd.Distiller(teacher, third, alpha=1.0)
    d.compile(optimizer=keras.optimizers.SGD(0.1), metrics=["accuracy"])
    logs = d.fit(x, batch_size=16, epochs=2, shuffle=False, verbose=0).history
    assert "distillation_loss" in logs and "student_loss" not in logs
    assert "accuracy" not in logs  # no labels, nothing to measure against
    for a, b in zip(student.get_weights(), third.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_unlabelled_data_needs_alpha_one(teacher, student, data):
    x, _ = data
    d = keras_kd.Distiller(teacher, student, alpha=0.5)
    d.compile(optimizer="sgd")
    with pytest.raises(ValueError, match="alpha=1.0"):
        d.fit(x, batch_size=16, epochs=1, verbose=0)


def test_one_hot_and_sparse_labels_train_identically(teacher, student, data):
    x, y = data
    other = copy_of(student, "other")
    onehot = np.eye(NUM_CLASSES, dtype=np.float32)[y]
    logs = []
    for model, labels in ((student, y), (other, onehot)):
        d = keras_kd.Distiller(teacher, model, alpha=0.5)
        d.compile(optimizer=keras.optimizers.SGD(0.1), metrics=["accuracy"])
        logs.append(d.fit(x, labels, batch_size=16, epochs=2, shuffle=False, verbose=0).history)
    for a, b in zip(student.get_weights(), other.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(logs[0]["accuracy"], logs[1]["accuracy"])
    # Column-vector sparse labels too.
    d = keras_kd.Distiller(teacher, copy_of(student, "c"), alpha=0.5)
    d.compile(optimizer=keras.optimizers.SGD(0.0))
    a = d.train_on_batch(x, y[:, None], return_dict=True)
    b = d.train_on_batch(x, onehot, return_dict=True)
    np.testing.assert_allclose(a["student_loss"], b["student_loss"], rtol=1e-5)


def test_soft_labels_use_the_full_cross_entropy(teacher, student, data, rng):
    x, _ = data
    soft = rng.dirichlet(np.ones(NUM_CLASSES), size=len(x)).astype(np.float32)
    s_logits = student.predict(x, verbose=0)
    expected = -np.sum(soft * np.log(np_softmax(s_logits, 1.0)), axis=-1).mean()
    d = keras_kd.Distiller(teacher, student, alpha=0.5)
    d.compile(optimizer=keras.optimizers.SGD(0.0))
    logs = d.train_on_batch(x, soft, return_dict=True)
    np.testing.assert_allclose(logs["student_loss"], expected, rtol=1e-4)


def test_sample_weights_matter(teacher, student, data, rng):
    x, y = data
    sw = np.ones(len(x), np.float32)
    sw[::2] = 0.0
    # Zero-weighted examples must not influence training at all ...
    garbage_x = x.copy()
    garbage_x[::2] = rng.normal(size=garbage_x[::2].shape) * 10
    garbage_y = y.copy()
    garbage_y[::2] = (y[::2] + 1) % NUM_CLASSES
    other, third = copy_of(student, "other"), copy_of(student, "third")
    for model, xs, ys, w in ((student, x, y, sw), (other, garbage_x, garbage_y, sw), (third, x, y, None)):
        d = keras_kd.Distiller(teacher, model, alpha=0.5)
        d.compile(optimizer=keras.optimizers.SGD(0.1))
        d.fit(xs, ys, sample_weight=w, batch_size=16, epochs=2, shuffle=False, verbose=0)
    for a, b in zip(student.get_weights(), other.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # ... and dropping them changes the result.
    assert not np.allclose(student.get_weights()[0], third.get_weights()[0])
    # The loss is Σ w·l / batch (Keras's sum_over_batch_size convention).
    d = keras_kd.Distiller(teacher, copy_of(third, "z"), alpha=0.0)
    d.compile(optimizer=keras.optimizers.SGD(0.0))
    s_logits = d.student.predict(x, verbose=0)
    logs = d.train_on_batch(x, y, sample_weight=sw, return_dict=True)
    np.testing.assert_allclose(logs["loss"], np.sum(sw * np_ce(y, s_logits)) / len(x), rtol=1e-4)


def test_softmax_teacher_and_student_are_distilled_from_their_logits(data):
    x, y = data
    t_logits_model = mlp(32, "t", seed=1)
    s_logits_model = mlp(8, "s", seed=2)
    t_soft = mlp(32, "t_soft", seed=1, softmax=True)
    s_soft = mlp(8, "s_soft", seed=2, softmax=True)
    t_soft.set_weights(t_logits_model.get_weights())
    s_soft.set_weights(s_logits_model.get_weights())
    logs = []
    for t, s in ((t_logits_model, s_logits_model), (t_soft, s_soft)):
        d = keras_kd.Distiller(t, s, temperature=4.0, alpha=0.5)
        d.compile(optimizer=keras.optimizers.SGD(0.1))
        logs.append(d.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0).history)
    np.testing.assert_allclose(logs[0]["loss"], logs[1]["loss"], rtol=1e-5)
    for a, b in zip(s_logits_model.get_weights(), s_soft.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert d.teacher_softmax_recovered and d.student_softmax_recovered
    # The student itself still outputs probabilities; the Distiller returns logits.
    probs = s_soft.predict(x, verbose=0)
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(
        np_softmax(d.predict(x, verbose=0), 1.0), probs, rtol=1e-4, atol=1e-6
    )


def test_evaluate_runs_the_teacher_only_when_asked(teacher, student, data):
    x, y = data
    calls = {"n": 0}

    class CountingTeacher(keras.Model):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def call(self, inputs, training=False):
            calls["n"] += 1
            return self.inner(inputs, training=training)

    counting = CountingTeacher(teacher)
    counting(x[:1])
    calls["n"] = 0
    d = keras_kd.Distiller(counting, student, alpha=0.5)
    d.compile(optimizer="sgd", metrics=["accuracy"])
    logs = d.evaluate(x, y, verbose=0, return_dict=True)
    assert calls["n"] == 0
    assert set(logs) == {"loss", "student_loss", "accuracy"}
    s_logits = student.predict(x, verbose=0)
    np.testing.assert_allclose(logs["loss"], np_ce(y, s_logits).mean(), rtol=1e-4)

    d2 = keras_kd.Distiller(counting, student, alpha=0.5, evaluate_with_teacher=True)
    d2.compile(optimizer="sgd")
    logs2 = d2.evaluate(x, y, verbose=0, return_dict=True)
    assert calls["n"] > 0
    t_logits = teacher.predict(x, verbose=0)
    np.testing.assert_allclose(
        logs2["loss"],
        0.5 * np_kl(t_logits, s_logits, 4.0).mean() + 0.5 * np_ce(y, s_logits).mean(),
        rtol=1e-4,
    )
    np.testing.assert_allclose(
        logs2["distillation_loss"], np_kl(t_logits, s_logits, 4.0).mean(), rtol=1e-4
    )
    np.testing.assert_allclose(
        logs2["teacher_agreement"], np.mean(t_logits.argmax(-1) == s_logits.argmax(-1))
    )


def test_labels_out_of_range_raise_a_clear_error(teacher, student, data):
    x, y = data
    bad = y.copy()
    bad[3] = NUM_CLASSES
    d = keras_kd.Distiller(teacher, student)
    d.compile(optimizer="sgd")
    with pytest.raises(Exception, match=r"class ids in \[0, 3\)"):
        d.fit(x, bad, batch_size=16, epochs=1, verbose=0)
    bad[3] = -1
    with pytest.raises(Exception, match=r"class ids in \[0, 3\)"):
        d.fit(x, bad, batch_size=16, epochs=1, verbose=0)


def test_label_shape_errors(teacher, student, data):
    x, y = data
    d = keras_kd.Distiller(teacher, student)
    d.compile(optimizer="sgd")
    with pytest.raises(ValueError, match=r"\[batch, 3\]"):
        d.fit(x, np.zeros((len(x), 5), np.float32), batch_size=16, verbose=0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"temperature": 0.0}, "temperature must be a finite number > 0"),
        ({"temperature": -2}, "temperature must be a finite number > 0"),
        ({"alpha": 1.5}, r"alpha must be in \[0, 1\]"),
        ({"alpha": -0.1}, r"alpha must be in \[0, 1\]"),
        ({"alpha": "x"}, "alpha must be a number"),
        ({"temperature": float("inf")}, "finite"),
        ({"alpha": float("nan")}, "finite"),
        ({"distillation_loss": "kld"}, "Valid names: (dist, )?dkd, kl"),
    ],
)
def test_construction_errors(teacher, student, kwargs, match):
    with pytest.raises(ValueError, match=match):
        keras_kd.Distiller(teacher, student, **kwargs)


def test_model_mismatches_are_refused(teacher):
    with pytest.raises(ValueError, match="number of classes"):
        keras_kd.Distiller(teacher, mlp(8, "s", seed=0, classes=4))
    with pytest.raises(ValueError, match="different inputs"):
        keras_kd.Distiller(teacher, mlp(8, "s", seed=0, features=7))
    with pytest.raises(ValueError, match="at least 2 classes"):
        keras_kd.Distiller(mlp(8, "t", seed=0, classes=1), mlp(8, "s", seed=0, classes=1))
    with pytest.raises(ValueError, match="same model"):
        keras_kd.Distiller(teacher, teacher)
    with pytest.raises(ValueError, match="keras.Model"):
        keras_kd.Distiller(teacher, "student.keras")


def test_compile_refuses_a_loss(teacher, student):
    d = keras_kd.Distiller(teacher, student)
    with pytest.raises(ValueError, match="takes no loss"):
        d.compile(optimizer="adam", loss="sparse_categorical_crossentropy")


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "rmsprop"])
def test_any_keras_optimizer(teacher, student, data, optimizer):
    x, y = data
    d = keras_kd.Distiller(teacher, student)
    d.compile(optimizer=optimizer)
    before = student.get_weights()[0].copy()
    d.fit(x, y, batch_size=32, epochs=1, verbose=0)
    assert not np.allclose(before, student.get_weights()[0])


def test_custom_and_label_aware_losses(teacher, student, data):
    x, y = data
    seen = {}

    def half_kl(teacher_logits, student_logits, temperature, labels=None):
        seen["labels"] = labels
        return 0.5 * losses.kl_divergence(teacher_logits, student_logits, temperature)

    t_logits = teacher.predict(x, verbose=0)
    s_logits = student.predict(x, verbose=0)
    d = keras_kd.Distiller(teacher, student, alpha=1.0, distillation_loss=half_kl)
    d.compile(optimizer=keras.optimizers.SGD(0.0))
    logs = d.train_on_batch(x, y, return_dict=True)
    np.testing.assert_allclose(logs["loss"], 0.5 * np_kl(t_logits, s_logits, 4.0).mean(), rtol=1e-4)
    assert seen["labels"] is not None


@pytest.mark.parametrize("name", ["kl", "soft_ce", "mse_logits", "mse_probs"])
def test_every_registered_loss_trains(teacher, student, data, name):
    x, y = data
    d = keras_kd.Distiller(teacher, student, alpha=1.0, distillation_loss=name)
    d.compile(optimizer=keras.optimizers.Adam(0.02))
    h = d.fit(x, y, batch_size=16, epochs=4, verbose=0).history
    assert h["distillation_loss"][-1] < h["distillation_loss"][0]


def test_student_save_and_reload(teacher, student, data, tmp_path):
    x, y = data
    d = keras_kd.Distiller(teacher, student)
    d.compile(optimizer="adam")
    d.fit(x, y, batch_size=16, epochs=1, verbose=0)
    path = tmp_path / "student.keras"
    d.student.save(path)
    reloaded = keras.saving.load_model(path)
    np.testing.assert_allclose(reloaded.predict(x, verbose=0), d.predict(x, verbose=0), rtol=1e-6)


def test_config_round_trip(teacher, student, data):
    x, _ = data
    d = keras_kd.Distiller(teacher, student, temperature=2.5, alpha=0.3, distillation_loss="soft_ce")
    config = d.get_config()
    clone = keras_kd.Distiller.from_config(config)
    assert (clone.temperature, clone.alpha) == (2.5, 0.3)
    assert clone._loss_fn is losses.soft_cross_entropy
    assert clone.get_config()["distillation_loss"] == "soft_ce"
    assert clone.student.count_params() == student.count_params()
    assert [l.__class__ for l in clone.teacher.layers] == [l.__class__ for l in teacher.layers]


def test_whole_distiller_saves_and_loads(teacher, student, data, tmp_path):
    x, y = data
    d = keras_kd.Distiller(teacher, student, temperature=2.0, alpha=0.5)
    d.compile(optimizer="adam")
    d.fit(x, y, batch_size=16, epochs=1, verbose=0)
    d.save(tmp_path / "distiller.keras")
    back = keras.saving.load_model(tmp_path / "distiller.keras")
    assert isinstance(back, keras_kd.Distiller)
    np.testing.assert_allclose(back.predict(x, verbose=0), d.predict(x, verbose=0), rtol=1e-6)
    np.testing.assert_allclose(
        back.teacher.predict(x, verbose=0), teacher.predict(x, verbose=0), rtol=1e-6
    )


def test_fractional_sparse_labels_are_refused(teacher, student, data):
    x, y = data
    d = keras_kd.Distiller(teacher, student)
    d.compile(optimizer="sgd")
    with pytest.raises(Exception, match="whole numbers"):
        d.fit(x, y.astype(np.float32) + 0.4, batch_size=16, epochs=1, verbose=0)
    # Whole-valued float labels (e.g. read from a CSV) are fine.
    d.fit(x, y.astype(np.float32), batch_size=16, epochs=1, verbose=0)


def test_xla_is_off_by_default_and_keeps_the_checks(teacher, student, data):
    """XLA drops assertions; under jit_compile=True the step records the failed check
    and fit raises it after the epoch (tests/test_step_checks.py), so no warning."""
    d = keras_kd.Distiller(teacher, student)
    d.compile(optimizer="sgd")
    assert d.jit_compile is False
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        keras_kd.Distiller(teacher, student).compile(optimizer="sgd", jit_compile=True)


def test_distillation_loss_must_be_per_example(teacher, student, data):
    x, y = data

    def batch_mean(t, s, T):
        return tf.reduce_mean(losses.kl_divergence(t, s, T))

    d = keras_kd.Distiller(teacher, student, distillation_loss=batch_mean)
    d.compile(optimizer="sgd")
    with pytest.raises(ValueError, match=r"one value per\s+example"):
        d.train_on_batch(x, y)

    def column(t, s, T):  # [batch, 1] is accepted and squeezed
        return losses.kl_divergence(t, s, T)[:, None]

    t_logits = teacher.predict(x, verbose=0)
    s_logits = student.predict(x, verbose=0)
    d = keras_kd.Distiller(teacher, student, alpha=1.0, distillation_loss=column)
    d.compile(optimizer=keras.optimizers.SGD(0.0))
    logs = d.train_on_batch(x, y, return_dict=True)
    np.testing.assert_allclose(logs["loss"], np_kl(t_logits, s_logits, 4.0).mean(), rtol=1e-4)


def test_keras_loss_objects_are_refused(teacher, student):
    with pytest.raises(TypeError, match="per-example function of logits"):
        keras_kd.Distiller(teacher, student, distillation_loss=keras.losses.KLDivergence())


def test_loaded_distiller_with_softmax_models_keeps_training(data, tmp_path):
    x, y = data
    t = mlp(32, "t", seed=1, softmax=True)
    s = mlp(8, "s", seed=2, softmax=True)
    d = keras_kd.Distiller(t, s, temperature=2.0, alpha=0.5)
    d.compile(optimizer=keras.optimizers.Adam(0.01), metrics=["accuracy"])
    d.fit(x, y, batch_size=16, epochs=1, verbose=0)
    d.save(tmp_path / "d.keras")
    back = keras.saving.load_model(tmp_path / "d.keras")
    assert back.teacher_softmax_recovered and back.student_softmax_recovered
    h1 = d.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0).history
    h2 = back.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0).history
    np.testing.assert_allclose(h1["loss"], h2["loss"], rtol=1e-5)


def test_fit_with_validation_data_logs_val_metrics(teacher, student, data):
    x, y = data
    d = keras_kd.Distiller(teacher, student)
    d.compile(optimizer="adam", metrics=["accuracy"])
    h = d.fit(x, y, validation_data=(x, y), batch_size=16, epochs=1, verbose=0).history
    assert {"val_loss", "val_student_loss", "val_accuracy"} <= set(h)
    assert "val_teacher_agreement" not in h


_REPLICA_SCRIPT = r"""
import json, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import numpy as np, keras, keras_kd

def models():
    keras.utils.set_random_seed(7)
    def mlp(h, classes=3):
        i = keras.Input((6,))
        r = keras.regularizers.L2(1e-3)
        return keras.Model(i, keras.layers.Dense(classes)(
            keras.layers.Dense(h, activation="relu", kernel_regularizer=r)(i)))
    return mlp(16), mlp(8)

rng = np.random.default_rng(0)
n = int(sys.argv[1])
x = rng.normal(size=(n, 6)).astype("float32")
y = rng.integers(0, 3, size=n).astype("int32")
w = rng.uniform(0.2, 2.0, size=n).astype("float32")
results = {}
for name, strategy in (("one", tf.distribute.OneDeviceStrategy("/cpu:0")),
                       ("two", tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))):
    with strategy.scope():
        t, s = models()
        d = keras_kd.Distiller(t, s, temperature=3.0, alpha=0.7)
        d.compile(optimizer=keras.optimizers.SGD(0.5))
    ds = tf.data.Dataset.from_tensor_slices((x, y, w)).batch(8)
    h = d.fit(ds, epochs=2, verbose=0).history
    results[name] = {"weights": [v.tolist() for v in s.get_weights()],
                     "loss": h["loss"], "replicas": strategy.num_replicas_in_sync}
print("RESULT" + json.dumps(results))
"""


@pytest.mark.parametrize("n", [24, 21])  # 21: the last batch of 5 splits 3/2
def test_one_device_equals_two_replicas(tmp_path, n):
    """The loss is reduced over the global batch: replicas change nothing."""
    import json
    import subprocess
    import sys

    script = tmp_path / "replicas.py"
    script.write_text(_REPLICA_SCRIPT)
    run = subprocess.run([sys.executable, str(script), str(n)], capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    line = [l for l in run.stdout.splitlines() if l.startswith("RESULT")][-1]
    res = json.loads(line[len("RESULT"):])
    assert res["one"]["replicas"] == 1 and res["two"]["replicas"] == 2
    for a, b in zip(res["one"]["weights"], res["two"]["weights"]):
        np.testing.assert_allclose(np.array(a), np.array(b), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(res["one"]["loss"], res["two"]["loss"], rtol=1e-5)


def test_dkd_through_the_distiller_gets_the_labels(rng):
    """The Distiller passes labels to DKD: its logged loss equals the formula's."""
    x = rng.normal(size=(16, 6)).astype("float32")
    y = rng.integers(0, 3, size=16).astype("int32")

    def mlp(h):
        i = keras.Input((6,))
        return keras.Model(i, keras.layers.Dense(3)(keras.layers.Dense(h, activation="relu")(i)))

    teacher, student = mlp(16), mlp(8)
    d = keras_kd.Distiller(teacher, student, temperature=4.0, alpha=1.0,
                           distillation_loss="dkd", evaluate_with_teacher=True)
    d.compile(optimizer=keras.optimizers.SGD(0.0))
    logs = d.evaluate(x, y, batch_size=16, verbose=0, return_dict=True)
    expected = np.mean(keras_kd.losses.dkd(teacher.predict(x, verbose=0),
                                           student.predict(x, verbose=0), 4.0, labels=y))
    assert logs["distillation_loss"] == pytest.approx(float(expected), rel=1e-5)


def test_bfloat16_teacher_gives_close_soft_targets_and_leaves_the_teacher_alone(
        teacher, student, data):
    """teacher_dtype runs a bfloat16 copy: logits within bf16 rounding of float32."""
    x, y = data
    before = weights_of(teacher)
    d = keras_kd.Distiller(teacher, student, temperature=3.0, teacher_dtype="bfloat16")
    low = d._plan.teacher_outputs(x)[0].numpy()
    high = teacher.predict(x, verbose=0)
    assert low.dtype == np.float32
    # bfloat16 keeps 8 bits of mantissa: relative error ~ 2^-8 per operation.
    np.testing.assert_allclose(low, high, atol=0.05 * np.abs(high).max())
    assert not np.array_equal(low, high)  # it really ran in reduced precision
    assert np.mean(np_kl(high, low, 3.0)) < 1e-3
    d.compile(optimizer="sgd")
    d.fit(x, y, batch_size=16, epochs=1, verbose=0)
    for a, b in zip(before, teacher.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert teacher.dtype_policy.name == "float32"
    back = keras_kd.Distiller.from_config(d.get_config())
    assert back.teacher_dtype == "bfloat16"
    with pytest.raises(ValueError, match="teacher_dtype must be one of"):
        keras_kd.Distiller(teacher, student, teacher_dtype="int8")


def test_check_settings_names_the_flags_with_a_prefix():
    """The one check of the settings: the Distiller's texts, or the job's with "--"."""
    from keras_kd.distiller import check_settings

    ok = check_settings(temperature=3, alpha=1, distillation_loss="KL",
                        features="hint:a=b", teacher_dtype="float32", prefix="--")
    assert ok["temperature"] == 3.0 and ok["alpha"] == 1.0
    assert ok["distillation_loss"] is losses.kl_divergence
    assert ok["features"] == (keras_kd.features.Hint("a", "b"),)
    assert ok["teacher_dtype"] == "float32"
    assert ok["teacher_preprocessing"] == "none" and ok["teacher_weights"] is None
    two = check_settings(temperature=3, alpha=1, distillation_loss="kl", num_teachers=2,
                         teacher_preprocessing=["Unit", None], teacher_weights=[3, 1])
    assert two["teacher_preprocessing"] == ("unit", "none")
    assert two["teacher_weights"] == (0.75, 0.25)
    base = dict(temperature=4.0, alpha=0.9, distillation_loss="kl", prefix="--")
    for change, match in [
        ({"temperature": 0}, r"^--temperature must be a finite number > 0, got 0\.0; "
                             r"keras_kd accepts T in \[0\.01, 100\] "),
        ({"temperature": 1e-40}, r"^--temperature=1e-40 is below 0\.01: "),
        ({"alpha": 2}, r"^--alpha must be in \[0, 1\], got 2\.0: "),
        ({"alpha": None}, r"^--alpha must be a number"),
        ({"teacher_dtype": "int8"}, r"^--teacher_dtype must be one of float32, bfloat16, "),
        ({"teacher_dtype": "bfloat16", "features": "hint:a=b"},
         r"^--teacher_dtype='bfloat16' cannot be combined with --features .*Fix: drop "
         r"--teacher_dtype, or --features\."),
        ({"distillation_loss": "kld"}, "Valid names"),
        ({"features": "hint:a"}, "bad layer pair"),
        ({"num_teachers": 2, "teacher_weights": [1]},
         r"^--teacher_weights lists 1 weight\(s\) for 2 teacher\(s\)"),
        ({"teacher_weights": [-1]}, r"^--teacher_weights must be finite numbers >= 0"),
        ({"num_teachers": 2, "teacher_preprocessing": ["unit"] * 3},
         r"^--teacher_preprocessing lists 3 specs for 2"),
        ({"teacher_preprocessing": "imagenet"}, "unknown teacher preprocessing 'imagenet'"),
    ]:
        with pytest.raises(ValueError, match=match):
            check_settings(**{**base, **change})


def test_teacher_dtype_with_features_is_refused(teacher, student):
    with pytest.raises(ValueError, match="^teacher_dtype='float16' cannot be combined with "
                                         "features"):
        keras_kd.Distiller(teacher, student, teacher_dtype="float16", features="hint:a=b")


def test_build_distiller_is_exported_from_the_package():
    assert keras_kd.build_distiller is keras_kd.distiller.build_distiller
    assert "build_distiller" in keras_kd.distiller.__all__
    assert "logits_model" not in keras_kd.distiller.__all__
