"""Model views (keras_kd.views), the teacher's view, and the private-API wrappers."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from test_losses import np_softmax

import keras_kd
from keras_kd import distribute, shapes, teachers, views

NUM_CLASSES = 3
FEATURES = 6


@pytest.fixture
def data(rng):
    x = rng.normal(size=(64, FEATURES)).astype(np.float32)
    y = rng.integers(0, NUM_CLASSES, size=64).astype(np.int32)
    return x, y


def mlp(hidden, name, seed, softmax=False):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((FEATURES,))
    x = keras.layers.Dense(hidden, activation="relu")(inputs)
    x = keras.layers.Dense(NUM_CLASSES, activation="softmax" if softmax else None)(x)
    return keras.Model(inputs, x, name=name)


# -- logits views (moved from tests/test_distiller.py) --------------------------------


def test_softmax_layer_at_the_end_is_cut_off(data):
    x, _ = data
    keras.utils.set_random_seed(3)
    inputs = keras.Input((FEATURES,))
    logits = keras.layers.Dense(NUM_CLASSES)(inputs)
    seq = keras.Model(inputs, keras.layers.Softmax()(logits))
    view, recovered = views.logits_model(seq)
    assert recovered
    expected = x @ seq.layers[1].kernel.numpy() + seq.layers[1].bias.numpy()
    np.testing.assert_allclose(view.predict(x, verbose=0), expected, rtol=1e-5, atol=1e-5)


def test_subclassed_softmax_model_is_refused():
    class Sub(keras.Model):
        def __init__(self):
            super().__init__()
            self.out = keras.layers.Dense(NUM_CLASSES, activation="softmax")

        def call(self, x):
            return self.out(x)

    with pytest.raises(ValueError, match="pre-softmax logits"):
        views.logits_model(Sub(), "teacher")


def test_ops_softmax_and_nested_softmax_heads_are_recovered(data):
    x, _ = data
    keras.utils.set_random_seed(4)
    inputs = keras.Input((FEATURES,))
    dense = keras.layers.Dense(NUM_CLASSES)
    functional = keras.Model(inputs, keras.ops.softmax(dense(inputs)))
    view, recovered = views.logits_model(functional)
    assert recovered
    np.testing.assert_allclose(
        view.predict(x, verbose=0),
        x @ dense.kernel.numpy() + dense.bias.numpy(), rtol=1e-5, atol=1e-5,
    )
    head = keras.Sequential([keras.layers.Dense(NUM_CLASSES, activation="softmax")])
    nested = keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(8), head])
    view, recovered = views.logits_model(nested)
    assert recovered
    logits = view.predict(x, verbose=0)
    np.testing.assert_allclose(
        np_softmax(logits, 1.0), nested.predict(x, verbose=0), rtol=1e-4, atol=1e-6)
    assert not np.allclose(np_softmax(logits, 1.0).sum(-1), logits.sum(-1))  # logits, not probs


def test_a_logits_model_is_its_own_view_and_graph_models_are_told_apart():
    model = mlp(4, "m", seed=1)
    view, recovered = views.logits_model(model)
    assert view is model and not recovered
    assert views.is_graph_model(model)
    assert views.is_graph_model(keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)]))

    class Sub(keras.Model):
        def call(self, x):
            return x

    assert not views.is_graph_model(Sub())
    assert views.model_inputs(model) is model.inputs[0]


# -- the teacher's view -----------------------------------------------------------------


def test_teacher_logits_view_gives_the_models_logits(data):
    x, _ = data
    plain = mlp(16, "t", seed=5)
    soft = mlp(16, "t_soft", seed=5, softmax=True)
    soft.set_weights(plain.get_weights())
    view, recovered = teachers.logits_view(soft)
    assert recovered and not soft.trainable
    np.testing.assert_allclose(view.predict(x, verbose=0), plain.predict(x, verbose=0),
                               rtol=1e-5, atol=1e-6)
    # A logits teacher in float32 is its own view, frozen.
    view, recovered = teachers.logits_view(plain)
    assert view is plain and not recovered and not plain.trainable
    # A reduced dtype runs a frozen copy; the teacher is untouched.
    low, _ = teachers.logits_view(plain, "bfloat16")
    assert low is not plain and not low.trainable
    assert plain.dtype_policy.name == "float32"
    np.testing.assert_allclose(tf.cast(low(x, training=False), tf.float32).numpy(),
                               plain.predict(x, verbose=0), atol=0.05)
    with pytest.raises(ValueError, match="dtype must be one of"):
        teachers.logits_view(plain, "int8")


def test_distiller_builds_its_teacher_view_through_teachers_logits_view(data, monkeypatch):
    calls = []
    real = teachers.logits_view

    def spy(teacher, dtype="float32", **kwargs):
        calls.append((teacher.name, dtype))
        return real(teacher, dtype, **kwargs)

    monkeypatch.setattr(teachers, "logits_view", spy)
    keras_kd.Distiller(mlp(8, "t", 1), mlp(4, "s", 2), teacher_dtype="bfloat16")
    assert calls == [("t", "bfloat16")]


# -- compute dtypes ---------------------------------------------------------------------


def test_check_compute_dtype_is_the_one_rule():
    for dtype in views.COMPUTE_DTYPES:
        assert views.check_compute_dtype(dtype) == dtype
    with pytest.raises(ValueError, match=r"^teacher_dtype must be one of float32, bfloat16, "
                                         r"float16, got 'int8'\.$"):
        views.check_compute_dtype("int8")
    with pytest.raises(ValueError, match=r"^--teacher_dtype must be one of .*got None\.$"):
        views.check_compute_dtype(None, "--teacher_dtype")


def test_with_compute_dtype_float32_of_a_mixed_model_is_a_float32_copy(data):
    """The export case: trained under mixed_float16 → a float32 clone, same weights."""
    x, _ = data
    with distribute.mixed_precision("mixed_float16"):
        mixed = mlp(8, "mixed", seed=6)
    assert mixed.layers[1].dtype_policy.compute_dtype == "float16"
    copy = views.with_compute_dtype(mixed, "float32")
    assert copy is not mixed
    assert all(layer.dtype_policy.compute_dtype == "float32"
               for layer in views.flatten_layers(copy))
    for a, b in zip(mixed.get_weights(), copy.get_weights()):
        np.testing.assert_array_equal(a, b)
    out = copy.predict(x, verbose=0)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, mixed.predict(x, verbose=0), atol=0.05)
    plain = mlp(8, "plain", seed=6)
    assert views.with_compute_dtype(plain, "float32") is plain


def test_reduced_dtype_of_a_subclassed_model_is_refused():
    class Sub(keras.Model):
        def call(self, x):
            return x

    sub = Sub(name="sub")
    assert views.with_compute_dtype(sub, "float32") is sub
    with pytest.raises(ValueError, match="subclassed model"):
        views.with_compute_dtype(sub, "bfloat16")


# -- feature taps and static shapes ------------------------------------------------------


def test_feature_tensor_and_tapped_view(data):
    x, _ = data
    model = mlp(5, "m", seed=7)
    hidden = model.layers[1].name
    tap = views.feature_tensor(model, hidden, "teacher")
    assert tuple(tap.shape) == (None, 5)
    multi, taps = views.tapped(model, model, [hidden], "teacher")
    logits, features = multi.predict(x, verbose=0)
    np.testing.assert_allclose(logits, model.predict(x, verbose=0), rtol=1e-6)
    np.testing.assert_allclose(features, np.maximum(
        x @ model.layers[1].kernel.numpy() + model.layers[1].bias.numpy(), 0), rtol=1e-5,
        atol=1e-6)
    assert taps[0] is tap
    with pytest.raises(ValueError, match=r"no layer named 'dens'.*Did you mean"):
        views.feature_tensor(model, "dens", "teacher")
    with pytest.raises(ValueError, match="2 outputs"):
        views.single_output(keras.Model(model.inputs, [model.outputs[0], tap]))


def test_static_io_and_check_same_io():
    a = mlp(4, "a", 1)
    assert shapes.static_io(a) == ([(FEATURES,)], NUM_CLASSES)
    assert shapes.shapes_compatible([(None, 3)], [(5, 3)])
    assert not shapes.shapes_compatible([(4, 3)], [(5, 3)])
    assert not shapes.shapes_compatible([(3,)], [(3,), (3,)])
    assert shapes.check_same_io(a, mlp(2, "b", 2)) == NUM_CLASSES
    other = keras.Model(inp := keras.Input((FEATURES + 1,)), keras.layers.Dense(NUM_CLASSES)(inp))
    with pytest.raises(ValueError, match="different inputs"):
        shapes.check_same_io(a, other)


# -- wrappers of private Keras / TensorFlow APIs -----------------------------------------


def test_initial_epoch_wrappers():
    model = mlp(4, "m", 1)
    assert views.initial_epoch(model) is None
    views.set_initial_epoch(model, 3)
    assert views.initial_epoch(model) == 3
    views.set_initial_epoch(model, None)
    assert views.initial_epoch(model) is None


def test_build_for_fit_builds_the_optimizer(data):
    x, y = data
    model = mlp(4, "m", 1)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    assert not model.optimizer.built
    views.build_for_fit(model, (tf.constant(x[:8]), tf.constant(y[:8])))
    assert model.optimizer.built


def test_op_determinism_wrappers_and_distribute_deterministic():
    assert not views.op_determinism_enabled()
    with distribute.deterministic(3):
        assert views.op_determinism_enabled()
        first = tf.random.get_global_generator().normal([2]).numpy()
    assert not views.op_determinism_enabled()
    with distribute.deterministic(3):
        second = tf.random.get_global_generator().normal([2]).numpy()
    np.testing.assert_array_equal(first, second)
    with distribute.deterministic(3, enabled=False):
        assert not views.op_determinism_enabled()
    tf.config.experimental.enable_op_determinism()
    views.disable_op_determinism()
    assert not views.op_determinism_enabled()
