"""Feature distillation: hint / attention-transfer math, projectors, one pass, errors."""

import json
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from test_losses import np_kl, np_softmax

import keras_kd
import keras_kd.export
from keras_kd import features
from keras_kd.features import AttentionTransfer, Hint

NUM_CLASSES = 3
SHAPE = (8, 8, 3)
_CALLS = {}


@keras.saving.register_keras_serializable(package="test_features")
class Counter(keras.layers.Layer):
    """Identity that counts its eager calls (run_eagerly=True steps)."""

    def call(self, x):
        if tf.executing_eagerly():
            _CALLS[self.name] = _CALLS.get(self.name, 0) + 1
        return x


def cnn(name, seed, c1=4, c2=8, stride=1, softmax=False, count=False):
    """Tiny functional CNN: c1 (8×8 or 4×4 with stride 2) → c2 → GAP → logits."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(SHAPE)
    x = Counter(name=f"{name}_count")(inputs) if count else inputs
    x = keras.layers.Conv2D(c1, 3, strides=stride, padding="same", activation="relu",
                            name="c1")(x)
    x = keras.layers.Conv2D(c2, 3, padding="same", activation="relu", name="c2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    x = keras.layers.Dense(NUM_CLASSES, activation="softmax" if softmax else None,
                           name="logits")(x)
    return keras.Model(inputs, x, name=name)


@pytest.fixture
def data(rng):
    x = rng.normal(size=(16,) + SHAPE).astype(np.float32)
    y = rng.integers(0, NUM_CLASSES, size=16).astype(np.int32)
    return x, y


def layer_out(model, name, x):
    return keras.Model(model.inputs, model.get_layer(name).output).predict(x, verbose=0)


def np_attention(a, p=2.0):
    q = (np.abs(a) ** p).sum(-1).reshape(len(a), -1)
    return q / np.maximum(np.linalg.norm(q, axis=-1, keepdims=True), 1e-6)


def np_at_loss(t, s, p=2.0):
    return ((np_attention(s, p) - np_attention(t, p)) ** 2).mean(-1)


# -- the pure functions -----------------------------------------------------------


def test_attention_map_of_a_hand_made_feature_map():
    a = np.zeros((1, 2, 2, 2), np.float32)
    a[0, 0, 0, 0], a[0, 0, 1, 1], a[0, 1, 1, 0], a[0, 1, 1, 1] = 1.0, 2.0, 2.0, -4.0
    # Q = Σ_c A² = [[1, 4], [0, 4 + 16]] → [1, 4, 0, 20] / sqrt(1 + 16 + 400)
    expected = np.array([[1.0, 4.0, 0.0, 20.0]]) / np.sqrt(417.0)
    np.testing.assert_allclose(features.attention_map(a).numpy(), expected, rtol=1e-6)
    b = np.zeros((1, 2, 2, 5), np.float32)  # another channel count
    b[0, 1, 0, 3] = 3.0  # Q = [0, 0, 9, 0] → [0, 0, 1, 0]
    loss = features.attention_loss(a, b).numpy()
    want = np.mean((np.array([0.0, 0.0, 1.0, 0.0]) - expected[0]) ** 2)
    np.testing.assert_allclose(loss, [want], rtol=1e-6)
    # A dead (all-zero) map gives zeros, not NaN, and a zero gradient.
    zeros = tf.zeros((1, 2, 2, 3))
    with tf.GradientTape() as tape:
        tape.watch(zeros)
        value = features.attention_loss(a, zeros)
    assert np.all(np.isfinite(tape.gradient(value, zeros).numpy()))
    np.testing.assert_allclose(value.numpy(), [np.mean(expected ** 2)], rtol=1e-6)


@pytest.mark.parametrize("p", [2.0, 3.0])
def test_attention_and_hint_losses_match_numpy(rng, p):
    t = rng.normal(size=(4, 5, 3, 6)).astype(np.float32)
    s = rng.normal(size=(4, 5, 3, 2)).astype(np.float32)
    np.testing.assert_allclose(features.attention_loss(t, s, p).numpy(),
                               np_at_loss(t, s, p), rtol=1e-5, atol=1e-8)
    u = rng.normal(size=(4, 5, 3, 2)).astype(np.float32)
    np.testing.assert_allclose(features.hint_loss(u, s).numpy(),
                               ((u - s) ** 2).reshape(4, -1).mean(-1), rtol=1e-6)
    with pytest.raises(ValueError, match="same height and width"):
        features.attention_loss(t, s[:, :4])
    with pytest.raises(ValueError, match="one shape"):
        features.hint_loss(t, s)


# -- through the Distiller ----------------------------------------------------------


def test_first_step_loss_matches_numpy_reference(data, rng):
    """total = α·KL + (1−α)·CE + w_h·hint(u, conv1x1(v)) + w_a·AT, sample-weighted."""
    x, y = data
    sw = rng.uniform(0.2, 2.0, size=len(x)).astype(np.float32)
    teacher, student = cnn("t", 1, c1=4, c2=8), cnn("s", 2, c1=2, c2=4)
    T, alpha, w_h, w_a = 2.0, 0.6, 3.0, 500.0
    d = keras_kd.Distiller(teacher, student, temperature=T, alpha=alpha, features=[
        Hint("c2", "c2", weight=w_h), AttentionTransfer([("c1", "c1"), ("c2", "c2")], weight=w_a)])
    (projector,) = d.feature_projectors
    assert isinstance(projector, keras.layers.Conv2D) and projector.kernel.shape == (1, 1, 4, 8)

    t_logits, s_logits = teacher.predict(x, verbose=0), student.predict(x, verbose=0)
    tf1, tf2 = layer_out(teacher, "c1", x), layer_out(teacher, "c2", x)
    sf1, sf2 = layer_out(student, "c1", x), layer_out(student, "c2", x)
    projected = sf2 @ projector.kernel.numpy()[0, 0] + projector.bias.numpy()
    hint = ((tf2 - projected) ** 2).reshape(len(x), -1).mean(-1)
    at = np_at_loss(tf1, sf1) + np_at_loss(tf2, sf2)
    kl = np_kl(t_logits, s_logits, T)
    ce = -np.log(np_softmax(s_logits, 1.0)[np.arange(len(y)), y])
    total = alpha * kl + (1 - alpha) * ce + w_h * hint + w_a * at

    d.compile(optimizer=keras.optimizers.SGD(0.0))
    logs = d.train_on_batch(x, y, sample_weight=sw, return_dict=True)
    mean = lambda v: np.sum(sw * v) / len(x)  # noqa: E731  (Σ w·l / B)
    np.testing.assert_allclose(logs["hint_loss"], mean(hint), rtol=1e-4)
    np.testing.assert_allclose(logs["attention_loss"], mean(at), rtol=1e-4)
    np.testing.assert_allclose(logs["loss"], mean(total), rtol=1e-4)
    np.testing.assert_allclose(logs["distillation_loss"], mean(kl), rtol=1e-4)


def test_projectors_only_when_shapes_differ_and_never_in_the_student(data):
    x, _ = data
    teacher = cnn("t", 1, c1=4, c2=8)
    same = cnn("s", 2, c1=4, c2=8)
    d = keras_kd.Distiller(teacher, same, features=[Hint("c2", "c2"), Hint("gap", "gap")])
    assert d.feature_projectors == []
    assert {id(v) for v in d.trainable_variables} == {id(v) for v in same.trainable_variables}

    student = cnn("s2", 2, c1=4, c2=2, stride=2)  # c1 4×4×4, c2 4×4×2, gap 2
    params = student.count_params()
    d = keras_kd.Distiller(teacher, student, features=[
        Hint("c1", "c1"),                  # 8×8×4 vs 4×4×4: teacher pooled, no weights
        Hint("c2", "c2", name="deep"),     # 8×8×8 vs 4×4×2: pooled + Conv2D 1×1 (2→8)
        Hint("gap", "gap", name="vec"),    # 8 vs 2: Dense(8)
    ])
    kinds = [(type(p).__name__, p.name) for p in d.feature_projectors]
    assert kinds == [("Conv2D", "deep_projector"), ("Dense", "vec_projector")]
    projector_ids = {id(v) for p in d.feature_projectors for v in p.trainable_variables}
    assert len(projector_ids) == 4
    assert projector_ids <= {id(v) for v in d.trainable_variables}
    assert not projector_ids & {id(v) for v in student.weights}
    assert student.count_params() == params
    # Student 8×8 vs teacher 4×4: the student's map is pooled; 8×8 vs 3×3 is refused.
    d = keras_kd.Distiller(student, teacher, features=[Hint("c1", "c1")])
    assert d.feature_projectors == []
    d.compile(optimizer="sgd")
    assert np.isfinite(d.train_on_batch(x, np.zeros(len(x), np.int32), return_dict=True)["hint_loss"])


def test_training_lowers_the_hint_loss_freezes_the_teacher_and_exports(data, tmp_path):
    x, y = data
    teacher, student = cnn("t", 1, c1=4, c2=8), cnn("s", 2, c1=2, c2=4)
    before = [w.copy() for w in teacher.get_weights()]
    params = student.count_params()
    d = keras_kd.Distiller(teacher, student, alpha=0.5,
                           features=[Hint("c2", "c2", weight=10.0)])
    projector_before = [w.numpy().copy() for w in d.feature_projectors[0].weights]
    d.compile(optimizer=keras.optimizers.Adam(0.02))
    h = d.fit(x, y, batch_size=8, epochs=8, verbose=0).history
    assert h["hint_loss"][-1] < 0.5 * h["hint_loss"][0]
    for a, b in zip(before, teacher.get_weights()):
        np.testing.assert_array_equal(a, b)  # bit-identical
    assert not np.allclose(projector_before[0], d.feature_projectors[0].kernel.numpy())
    # The student ships alone: same parameters, saved and converted as before.
    assert student.count_params() == params
    student.save(tmp_path / "s.keras")
    back = keras.saving.load_model(tmp_path / "s.keras")
    assert back.count_params() == params
    assert not any("projector" in v.path for v in back.weights)
    np.testing.assert_allclose(back.predict(x, verbose=0), d.predict(x, verbose=0), rtol=1e-5)
    path = keras_kd.export.to_tflite(student, str(tmp_path / "s.tflite"))
    interpreter = tf.lite.Interpreter(model_path=path)
    assert interpreter.get_input_details()[0]["shape"].tolist() == [1, *SHAPE]


def test_one_student_pass_per_step(data):
    """The student (and the teacher) run once per step, features included."""
    x, y = data
    teacher = cnn("t", 1, c1=4, c2=8, count=True)
    student = cnn("s", 2, c1=2, c2=4, count=True)
    d = keras_kd.Distiller(teacher, student, features=[
        Hint("c2", "c2"), AttentionTransfer([("c1", "c1"), ("c2", "c2")])])
    d.compile(optimizer="sgd", run_eagerly=True)
    d.train_on_batch(x, y)  # builds
    _CALLS.clear()
    d.train_on_batch(x, y)
    assert _CALLS == {"s_count": 1, "t_count": 1}
    _CALLS.clear()
    d.predict(x[:4], verbose=0)
    assert _CALLS == {"s_count": 1}


def test_keras_feature_distillation_has_no_projector_and_runs_the_student_twice(data):
    """What keras.distillation.FeatureDistillation (Keras 3.15) does, for the record."""
    from keras.distillation import Distiller as KerasDistiller
    from keras.distillation import FeatureDistillation

    x, y = data
    # 8 (teacher) vs 4 (student) channels: no projector, a shape error.
    kd = KerasDistiller(cnn("t", 1, c1=4, c2=8), cnn("s", 2, c1=2, c2=4),
                        [FeatureDistillation("mse", "c2", "c2")])
    kd.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    with pytest.raises(Exception, match="Incompatible shapes|must be equal"):
        kd.train_on_batch(x, y)
    # 8 vs 1 channel: broadcast silently into a loss; the student runs twice.
    student = cnn("s", 2, c1=2, c2=1, count=True)
    kd = KerasDistiller(cnn("t", 1, c1=4, c2=8), student,
                        [FeatureDistillation("mse", "c2", "c2")], student_loss_weight=0.0)
    kd.compile(optimizer=keras.optimizers.SGD(0.0), loss="sparse_categorical_crossentropy",
               run_eagerly=True)
    kd.train_on_batch(x, y)
    _CALLS.clear()
    logs = kd.train_on_batch(x, y, return_dict=True)
    assert _CALLS == {"s_count": 2}  # self(x), then the feature extractor
    t_map = layer_out(kd.teacher, "c2", x)
    s_map = layer_out(student, "c2", x)  # [B, 8, 8, 1] broadcast against [B, 8, 8, 8]
    np.testing.assert_allclose(logs["distillation_loss"], np.mean((t_map - s_map) ** 2), rtol=1e-4)
    # keras_kd: a 1×1 projector for 4 → 8 channels, one pass.
    d = keras_kd.Distiller(cnn("t", 1, c1=4, c2=8), cnn("s", 2, c1=2, c2=1),
                           features=[Hint("c2", "c2")])
    assert d.feature_projectors[0].kernel.shape == (1, 1, 1, 8)


def test_whole_distiller_config_and_save_round_trip(data, tmp_path):
    x, y = data
    terms = [Hint("c2", "c2", weight=2.0),
             AttentionTransfer([("c1", "c1")], weight=100.0, p=3.0, name="at")]
    d = keras_kd.Distiller(cnn("t", 1), cnn("s", 2, c1=2, c2=4), alpha=0.5,
                           features=terms, evaluate_with_teacher=True)
    clone = keras_kd.Distiller.from_config(d.get_config())
    assert clone.features == tuple(terms)
    assert [p.name for p in clone.feature_projectors] == ["hint_projector"]
    d.compile(optimizer=keras.optimizers.Adam(0.01))
    d.fit(x, y, batch_size=8, epochs=1, verbose=0)
    d.save(tmp_path / "d.keras")
    back = keras.saving.load_model(tmp_path / "d.keras")
    assert back.features == tuple(terms)
    for a, b in zip(d.feature_projectors[0].weights, back.feature_projectors[0].weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())  # projector weights kept
    e1 = d.evaluate(x, y, verbose=0, return_dict=True)
    e2 = back.evaluate(x, y, verbose=0, return_dict=True)
    assert {"hint_loss", "at_loss", "distillation_loss"} <= set(e1)
    for key in ("loss", "hint_loss", "at_loss"):
        np.testing.assert_allclose(e1[key], e2[key], rtol=1e-5)


def test_evaluation_without_teacher_skips_feature_metrics(data):
    x, y = data
    d = keras_kd.Distiller(cnn("t", 1), cnn("s", 2), features="hint:c2=c2")
    d.compile(optimizer="sgd")
    logs = d.evaluate(x, y, verbose=0, return_dict=True)
    assert "hint_loss" not in logs and "student_loss" in logs


def test_sequential_softmax_student(data):
    """Sequential models and softmax heads work: features + recovered logits."""
    x, y = data
    keras.utils.set_random_seed(3)
    student = keras.Sequential([
        keras.Input(SHAPE), keras.layers.Conv2D(2, 3, padding="same", name="c2"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(NUM_CLASSES, activation="softmax")])
    d = keras_kd.Distiller(cnn("t", 1, softmax=True), student,
                           features="attention:c2=c2;hint:c2=c2")
    assert d.student_softmax_recovered and d.teacher_softmax_recovered
    d.compile(optimizer="sgd")
    logs = d.train_on_batch(x, y, return_dict=True)
    assert np.isfinite(logs["attention_loss"]) and np.isfinite(logs["hint_loss"])
    assert not np.allclose(d.predict(x, verbose=0).sum(-1), 1.0)  # logits, not probs


def test_cached_teacher_logits_with_features_are_refused(data):
    x, y = data
    d = keras_kd.Distiller(cnn("t", 1), cnn("s", 2), features=[Hint("c2", "c2")])
    d.compile(optimizer="sgd")
    cached = {"teacher_logits": np.zeros((len(x), NUM_CLASSES), np.float32), "labels": y}
    with pytest.raises(ValueError, match="cached teacher logits"):
        d.train_on_batch(x, cached)
    d.evaluate(x, cached, verbose=0)  # evaluation without the teacher is fine


# -- errors ------------------------------------------------------------------------


class _Split(keras.layers.Layer):
    def call(self, x):
        return x, -x


def test_layer_name_errors():
    teacher, student = cnn("t", 1), cnn("s", 2)
    with pytest.raises(ValueError, match=r"no layer named 'conv2'.*Did you mean 'c2'.*"
                                         r"\[l\.name for l in student\.layers\]"):
        keras_kd.Distiller(teacher, student, features=[Hint("c2", "conv2")])
    # A layer inside a nested model is named with its path.
    inputs = keras.Input(SHAPE)
    backbone = keras.Model(teacher.inputs, teacher.get_layer("c2").output, name="backbone")
    head = keras.layers.Dense(NUM_CLASSES)(keras.layers.GlobalAveragePooling2D()(backbone(inputs)))
    nested = keras.Model(inputs, head, name="nested")
    with pytest.raises(ValueError, match="nested model \\(backbone/c1\\)"):
        keras_kd.Distiller(nested, student, features=[Hint("c1", "c1")])
    # A layer with two outputs; a shared layer called twice.
    inputs = keras.Input(SHAPE)
    a, b = _Split(name="split")(inputs)
    shared = keras.layers.Conv2D(3, 1, name="shared")
    z = shared(shared(a + b))
    multi = keras.Model(inputs, keras.layers.Dense(NUM_CLASSES)(
        keras.layers.GlobalAveragePooling2D()(z)), name="multi")
    with pytest.raises(ValueError, match="returns 2 tensors"):
        keras_kd.Distiller(multi, student, features=[Hint("split", "c1")])
    with pytest.raises(ValueError, match="called 2 times"):
        keras_kd.Distiller(multi, student, features=[Hint("shared", "c1")])


def test_subclassed_models_and_shape_errors_are_clear():
    class Sub(keras.Model):
        def __init__(self):
            super().__init__(name="sub")
            self.c = keras.layers.Conv2D(2, 3, name="c2")
            self.d = keras.layers.Dense(NUM_CLASSES)

        def call(self, x):
            return self.d(keras.ops.mean(self.c(x), axis=(1, 2)))

    sub = Sub()
    sub(np.zeros((1,) + SHAPE, np.float32))
    with pytest.raises(ValueError, match="subclassed model"):
        keras_kd.Distiller(cnn("t", 1), sub, features=[Hint("c2", "c2")])
    odd = cnn("t", 1)
    keras.utils.set_random_seed(5)
    inputs = keras.Input(SHAPE)
    c3 = keras.layers.Conv2D(2, 3, padding="valid", name="c3")(inputs)  # 6×6
    student = keras.Model(inputs, keras.layers.Dense(NUM_CLASSES)(
        keras.layers.GlobalAveragePooling2D(name="gap")(c3)))
    with pytest.raises(ValueError, match="not integer\\s+multiples"):
        keras_kd.Distiller(odd, student, features=[Hint("c1", "c3")])
    with pytest.raises(ValueError, match="same\\s+spatial size"):
        keras_kd.Distiller(odd, student, features=[AttentionTransfer([("c1", "c3")])])
    with pytest.raises(ValueError, match="different\\s+ranks"):
        keras_kd.Distiller(odd, student, features=[Hint("c1", "gap")])
    with pytest.raises(ValueError, match="convolutional"):
        keras_kd.Distiller(odd, student, features=[AttentionTransfer([("gap", "gap")])])


# -- the string form ----------------------------------------------------------------


def test_parse_and_round_trip():
    terms = features.parse(
        " hint: t_conv2 = s_conv2 , weight=10 ; attention:t1=s1+t2=s2;at:a=b,p=3,name=at2;")
    assert terms == [Hint("t_conv2", "s_conv2", weight=10.0),
                     AttentionTransfer([("t1", "s1"), ("t2", "s2")]),
                     AttentionTransfer([("a", "b")], p=3.0, name="at2")]
    spec = features.to_spec(terms)
    assert spec == "hint:t_conv2=s_conv2,weight=10;attention:t1=s1+t2=s2;attention:a=b,p=3,name=at2"
    assert features.parse(spec) == terms
    assert features.parse(["hint:a=b", "fitnets:c=d"]) == [Hint("a", "b"), Hint("c", "d")]
    assert features.parse("") == [] and features.parse(None) == []


@pytest.mark.parametrize("spec, match", [
    ("hint", "no KIND: prefix"),
    ("crd:a=b", "unknown feature kind 'crd'.*valid: at, attention"),
    ("hint:a", "bad layer pair 'a'"),
    ("hint:a=b+c=d", "one layer pair"),
    ("hint:a=b,weight=ten", "not a number"),
    ("hint:a=b,p=3", "unknown option 'p' for hint"),
    ("attention:a=b,weight=-1", ">= 0"),
    ("attention:a=b,p=0.5", ">= 1"),
    ("hint:a=b,name=distillation", "already logs"),
    ("hint:a=b,weight=1,weight=2", "given twice"),
])
def test_parse_errors(spec, match):
    with pytest.raises(ValueError, match=match):
        features.parse(spec)


# -- replicas ------------------------------------------------------------------------

_REPLICA_SCRIPT = r"""
import json
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import numpy as np, keras, keras_kd
from keras_kd.features import Hint, AttentionTransfer

def cnn(seed, c1, c2):
    keras.utils.set_random_seed(seed)
    i = keras.Input((6, 6, 3))
    x = keras.layers.Conv2D(c1, 3, padding="same", activation="relu", name="c1")(i)
    x = keras.layers.Conv2D(c2, 3, padding="same", activation="relu", name="c2")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(i, keras.layers.Dense(3)(x))

rng = np.random.default_rng(0)
x = rng.normal(size=(21, 6, 6, 3)).astype("float32")   # last batch of 5 splits 3/2
y = rng.integers(0, 3, size=21).astype("int32")
w = rng.uniform(0.2, 2.0, size=21).astype("float32")
results = {}
for name, strategy in (("one", tf.distribute.OneDeviceStrategy("/cpu:0")),
                       ("two", tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))):
    with strategy.scope():
        t, s = cnn(1, 4, 6), cnn(2, 2, 3)
        d = keras_kd.Distiller(t, s, temperature=3.0, alpha=0.7, features=[
            Hint("c2", "c2", weight=5.0), AttentionTransfer([("c1", "c1"), ("c2", "c2")])])
        d.compile(optimizer=keras.optimizers.SGD(0.1))
    ds = tf.data.Dataset.from_tensor_slices((x, y, w)).batch(8)
    h = d.fit(ds, epochs=1, verbose=0).history
    results[name] = {"weights": [v.numpy().tolist() for v in d.trainable_variables],
                     "logs": {k: h[k] for k in ("loss", "hint_loss", "attention_loss")},
                     "replicas": strategy.num_replicas_in_sync}
print("RESULT" + json.dumps(results))
"""


def test_one_device_equals_two_replicas(tmp_path):
    """Feature terms are reduced over the global batch: replicas change nothing."""
    script = tmp_path / "replicas.py"
    script.write_text(_REPLICA_SCRIPT)
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    line = [l for l in run.stdout.splitlines() if l.startswith("RESULT")][-1]
    res = json.loads(line[len("RESULT"):])
    assert res["one"]["replicas"] == 1 and res["two"]["replicas"] == 2
    assert len(res["one"]["weights"]) == 8  # student (6) + hint projector (2)
    for a, b in zip(res["one"]["weights"], res["two"]["weights"]):
        np.testing.assert_allclose(np.array(a), np.array(b), rtol=1e-4, atol=1e-5)
    for key, values in res["one"]["logs"].items():
        np.testing.assert_allclose(values, res["two"]["logs"][key], rtol=1e-5, err_msg=key)
