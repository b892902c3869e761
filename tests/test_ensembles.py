"""Teachers as the user has them: ensembles, their own preprocessing, their own resolution.

Each test checks against an independent reference: NumPy soft targets, the
single-teacher Distiller, one device, the member fed its own preprocessed input.
"""

import json
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from test_losses import np_softmax

import keras_kd
from keras_kd import export, preprocessing, teachers, views
from keras_kd.distiller import check_settings

CLASSES = 3


def mlp(hidden, name, seed, softmax=False, features=6):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((features,))
    x = keras.layers.Dense(hidden, activation="relu")(inputs)
    x = keras.layers.Dense(CLASSES, activation="softmax" if softmax else None)(x)
    return keras.Model(inputs, x, name=name)


def conv(size, name, seed, channels=1):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((size, size, channels))
    x = keras.layers.Conv2D(4, 3, strides=2, activation="relu", name=f"{name}_conv")(inputs)
    x = keras.layers.Flatten()(x)
    return keras.Model(inputs, keras.layers.Dense(CLASSES)(x), name=name)


def copy_of(model, name):
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    clone.name = name
    return clone


@pytest.fixture
def data(rng):
    x = rng.normal(size=(32, 6)).astype(np.float32)
    y = rng.integers(0, CLASSES, size=32).astype(np.int32)
    return x, y


@pytest.fixture
def members():
    # Two members of one name (clones are often named alike), one ending in softmax.
    return [mlp(16, "teacher", 1), mlp(12, "teacher", 2, softmax=True), mlp(8, "t3", 3)]


def np_ensemble(logits, weights, T):
    """Σ_i w_i softmax(t_i / T), weights normalised (Hinton et al. 2015)."""
    w = np.asarray(weights, np.float64) / np.sum(weights)
    return sum(wi * np_softmax(t.astype(np.float64), T) for wi, t in zip(w, logits))


def member_logits(models, x):
    return [views.logits_model(m)[0].predict(x, verbose=0) for m in models]


@pytest.mark.parametrize("weights", [None, [3.0, 1.0, 0.5]])
def test_ensemble_soft_targets_are_the_weighted_mean_of_member_softmaxes(members, data, weights):
    x, y = data
    T = 2.5
    expected = np_ensemble(member_logits(members, x), weights or [1, 1, 1], T)
    view, recovered = teachers.logits_view(members, weights=weights, temperature=T)
    assert recovered  # the softmax member is read from its logits
    z = view(x, training=False).numpy()
    np.testing.assert_allclose(np_softmax(z, T), expected, rtol=1e-5, atol=1e-7)
    # Through the Distiller: its distillation loss is T²·KL(p_ensemble ‖ q).
    student = mlp(8, "student", 9)
    s_logits = student.predict(x, verbose=0)
    d = keras_kd.Distiller(members, student, temperature=T, alpha=1.0, teacher_weights=weights)
    d.compile(optimizer=keras.optimizers.SGD(0.0))
    logs = d.train_on_batch(x, y, return_dict=True)
    q = np_softmax(s_logits.astype(np.float64), T)
    kl = T ** 2 * np.sum(expected * (np.log(expected) - np.log(q)), axis=-1)
    np.testing.assert_allclose(logs["distillation_loss"], kl.mean(), rtol=1e-4)
    agree = np.mean(expected.argmax(-1) == s_logits.argmax(-1))  # vs the ensemble's top-1
    np.testing.assert_allclose(logs["teacher_agreement"], agree, atol=1e-6)


def test_a_zero_weight_member_is_not_run_and_one_left_is_the_single_teacher(members, data):
    x, _ = data
    view, _ = teachers.logits_view(members[:2], weights=[2, 0], temperature=3.0)
    assert view is members[0]  # the single-teacher path: the teacher itself
    # Three members, one of weight 0: the mean of the other two, which alone are run.
    T, calls = 2.0, []
    silent = members[1]
    original = silent.call
    silent.call = lambda *a, **k: (calls.append(1), original(*a, **k))[1]
    view, _ = teachers.logits_view(members, weights=[1, 0, 3], temperature=T)
    calls.clear()
    z = view(x, training=False).numpy()
    logits = member_logits([members[0], members[2]], x)
    np.testing.assert_allclose(np_softmax(z, T), np_ensemble(logits, [1, 3], T), rtol=1e-5,
                               atol=1e-7)
    assert calls == []  # the weight-0 member never ran
    np.testing.assert_allclose(z.mean(-1), 0, atol=1e-5)  # centred, like a model's logits


def test_one_member_ensemble_trains_bit_for_bit_like_the_single_teacher(data):
    x, y = data
    teacher = mlp(16, "teacher", 1)
    assert teachers.logits_view([teacher])[0] is teachers.logits_view(teacher)[0] is teacher
    students = [mlp(8, "student", 5), None]
    students[1] = copy_of(students[0], "student_2")
    for teacher_arg, student in zip(([teacher], teacher), students):
        d = keras_kd.Distiller(teacher_arg, student, temperature=3.0, alpha=0.7)
        d.compile(optimizer=keras.optimizers.SGD(0.1))
        d.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    for a, b in zip(students[0].get_weights(), students[1].get_weights()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])  # float32 runs the members
def test_every_member_is_frozen_and_never_updated(members, data, dtype):
    x, y = data
    before = [[w.copy() for w in m.get_weights()] for m in members]
    student = mlp(8, "student", 5)
    d = keras_kd.Distiller(members, student, temperature=4.0, teacher_weights=[1, 2, 1],
                           teacher_dtype=dtype)
    assert d.teachers == members and list(d.teacher) == members
    d.compile(optimizer=keras.optimizers.Adam(0.05))
    d.fit(x, y, batch_size=8, epochs=2, verbose=0)
    assert {id(v) for v in d.trainable_variables} == {id(v) for v in student.trainable_variables}
    for member, weights in zip(members, before):
        assert not member.trainable
        for a, b in zip(weights, member.get_weights()):
            np.testing.assert_array_equal(a, b)


def test_per_member_preprocessing_equals_feeding_each_its_own_input(rng):
    """Member A expects torch-normalised RGB, member B raw 0-255 pixels."""
    x = rng.uniform(0, 255, size=(8, 9, 9, 3)).astype(np.float32)
    a, b = conv(9, "a", 1, channels=3), conv(9, "b", 2, channels=3)
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    x_a = ((x / 255.0 - mean) / std).astype(np.float32)  # the torch convention, by hand
    T, w = 2.0, [0.25, 0.75]
    expected = np_ensemble([a.predict(x_a, verbose=0), b.predict(x, verbose=0)], w, T)
    view, _ = teachers.logits_view([a, b], preprocessing=["torch", "none"], weights=w,
                                   temperature=T)
    np.testing.assert_allclose(np_softmax(view(x).numpy(), T), expected, rtol=1e-4, atol=1e-6)
    # One teacher with its preprocessing: exactly its logits on its own input.
    single, _ = teachers.logits_view(a, preprocessing="torch")
    np.testing.assert_allclose(single(x).numpy(), a.predict(x_a, verbose=0), rtol=1e-5,
                               atol=1e-5)
    with pytest.raises(ValueError, match="lists 3 specs for 2"):
        teachers.logits_view([a, b], preprocessing=["unit"] * 3, temperature=T)


def test_resize_images_is_bilinear_with_half_pixel_centres():
    x = tf.constant([[0.0, 1.0], [2.0, 3.0]])[None, :, :, None]
    assert preprocessing.resize_images(x, (2, 2)) is x  # its own size: no op at all
    up = preprocessing.resize_images(x, (4, 4))[0, :, :, 0].numpy()
    # Half-pixel centres: output j samples input (j + 0.5) / 2 - 0.5, clamped.
    row = np.array([0.0, 0.25, 0.75, 1.0])
    np.testing.assert_allclose(up, row[None, :] + 2 * row[:, None], atol=1e-6)
    flat = tf.fill([1, 8, 8, 1], 7.0)  # shrinking (antialiased) keeps a flat image flat
    np.testing.assert_allclose(preprocessing.resize_images(flat, (3, 5)).numpy(), 7.0, atol=1e-5)
    # Traced for any size (static height / width unknown): the same rule at run time.
    traced = tf.function(lambda im: preprocessing.resize_images(im, (4, 4)),
                         input_signature=[tf.TensorSpec([None, None, None, 1])])
    np.testing.assert_array_equal(traced(x).numpy()[0, :, :, 0], up)
    same = tf.random.uniform([2, 4, 4, 1])
    np.testing.assert_array_equal(traced(same).numpy(), same.numpy())
    big = tf.random.uniform([2, 9, 7, 1])
    np.testing.assert_array_equal(traced(big).numpy(), preprocessing.resize_images(big, (4, 4)).numpy())


def test_teacher_and_student_at_their_own_resolutions(rng, tmp_path):
    teacher, student = conv(32, "teacher", 1), conv(28, "student", 2)
    d = keras_kd.Distiller(teacher, student, temperature=2.0, alpha=0.5)
    d.compile(optimizer=keras.optimizers.Adam(1e-3))
    x28 = rng.uniform(0, 255, size=(16, 28, 28, 1)).astype(np.float32)
    x32 = rng.uniform(0, 255, size=(16, 32, 32, 1)).astype(np.float32)
    y = rng.integers(0, CLASSES, size=16).astype(np.int32)
    # Each model gets the batch at its own size; at its own size, untouched.
    up = tf.image.resize(x28, (32, 32), method="bilinear").numpy()
    np.testing.assert_allclose(d._plan.teacher_outputs(x28)[0].numpy(),
                               teacher.predict(up, verbose=0), rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(d._plan.teacher_outputs(x32)[0].numpy(),
                                  teacher.predict(x32, verbose=0))
    np.testing.assert_array_equal(d.predict(x28, verbose=0), student.predict(x28, verbose=0))
    down = tf.image.resize(x32, (28, 28), method="bilinear", antialias=True).numpy()
    np.testing.assert_allclose(d.predict(x32, verbose=0), student.predict(down, verbose=0),
                               rtol=1e-5, atol=1e-4)
    before = [w.copy() for w in teacher.get_weights()]
    for x in (x28, x32, x28):
        history = d.fit(x, y, batch_size=8, epochs=1, verbose=0).history
        assert np.isfinite(history["loss"][0])
    for a, b in zip(before, teacher.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert tuple(d.student.inputs[0].shape) == (None, 28, 28, 1)  # exported at its own size
    path = str(tmp_path / "student.tflite")
    export.to_tflite(d.student, path)
    val = tf.data.Dataset.from_tensor_slices((x28, y)).batch(8)
    result = export.verify(path, val, reference_model=d.student)
    assert result["examples"] == 16 and result["agreement"] == 1.0


def test_channel_and_rank_mismatches_are_still_errors():
    with pytest.raises(ValueError, match=r"different channels.*Fix:"):
        keras_kd.Distiller(conv(32, "t", 1, channels=3), conv(28, "s", 2, channels=1))
    with pytest.raises(ValueError, match="different inputs"):
        keras_kd.Distiller(mlp(8, "t", 1), conv(28, "s", 2))
    with pytest.raises(ValueError, match="different channels"):  # between members too
        teachers.logits_view([conv(8, "a", 1, 3), conv(8, "b", 2, 1)], temperature=2.0)


def test_config_round_trip_with_a_list(members, data, tmp_path):
    x, y = data
    d = keras_kd.Distiller(members, mlp(8, "student", 5), temperature=2.0,
                           teacher_preprocessing=["unit", "none", "scale=2"],
                           teacher_weights=[3, 1, 1])
    config = d.get_config()
    assert config["teacher_preprocessing"] == ["unit", "none", "scale=2,offset=0"]
    assert config["teacher_weights"] == [3.0, 1.0, 1.0]
    clone = keras_kd.Distiller.from_config(json.loads(json.dumps(config)))
    assert len(clone.teachers) == 3 and isinstance(clone.teacher, list)
    assert clone.get_config()["teacher_preprocessing"] == config["teacher_preprocessing"]
    assert clone.get_config()["teacher_weights"] == [3.0, 1.0, 1.0]
    d.compile(optimizer="adam")
    d.fit(x, y, batch_size=16, epochs=1, verbose=0)
    d.save(tmp_path / "d.keras")
    back = keras.saving.load_model(tmp_path / "d.keras")
    assert [t.name for t in back.teachers] == [t.name for t in members]
    np.testing.assert_allclose(back._plan.teacher_outputs(x)[0], d._plan.teacher_outputs(x)[0],
                               rtol=1e-6)
    np.testing.assert_allclose(back.predict(x, verbose=0), d.predict(x, verbose=0), rtol=1e-6)


def test_features_with_an_ensemble_preprocessing_or_two_sizes_are_refused(members):
    student = mlp(8, "student", 5)
    with pytest.raises(ValueError, match=r"^features \(feature terms\) read one teacher's "
                                         r"layers; with an ensemble of 3 .*Fix: drop features"):
        keras_kd.Distiller(members, student, features="hint:a=b")
    with pytest.raises(ValueError, match=r"^--features .*ensemble of 2 .*Fix: drop --features"):
        check_settings(temperature=2, alpha=0.5, distillation_loss="kl", features="hint:a=b",
                       num_teachers=2, prefix="--")
    with pytest.raises(ValueError, match="cannot be combined with --teacher_preprocessing='unit'"):
        check_settings(temperature=2, alpha=0.5, distillation_loss="kl", features="hint:a=b",
                       teacher_preprocessing="unit", prefix="--")
    with pytest.raises(ValueError, match=r"feature terms read both models' layers.*\(32, 32\)"):
        keras_kd.Distiller(conv(32, "t", 1), conv(28, "s", 2), features="hint:t_conv=s_conv")


@pytest.mark.parametrize("weights, match", [
    ([1.0], "lists 1 weight"), ([1, -1, 1], ">= 0"), ([0, 0, 0], "all zero"),
    (["a", 1, 1], "list of numbers")])
def test_bad_weights_are_refused(members, weights, match):
    with pytest.raises(ValueError, match=match):
        keras_kd.Distiller(members, mlp(8, "student", 5), teacher_weights=weights)


def test_an_ensemble_view_needs_a_temperature(members):
    with pytest.raises(ValueError, match="needs the temperature"):
        teachers.logits_view(members)
    with pytest.raises(ValueError, match="empty list"):
        keras_kd.Distiller([], mlp(8, "student", 5))


_REPLICA_SCRIPT = r"""
import json
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import numpy as np, keras, keras_kd

def mlp(h, softmax=False):
    i = keras.Input((6,))
    z = keras.layers.Dense(h, activation="relu")(i)
    return keras.Model(i, keras.layers.Dense(3, activation="softmax" if softmax else None)(z))

rng = np.random.default_rng(0)
x = rng.normal(size=(21, 6)).astype("float32")  # the last batch of 5 splits 3/2
y = rng.integers(0, 3, size=21).astype("int32")
out = {}
# One MirroredStrategy object: a second one over the same devices clashes with the first.
for name, strategy in (("one", tf.distribute.OneDeviceStrategy("/cpu:0")),
                       ("two", tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))):
    with strategy.scope():
        keras.utils.set_random_seed(7)
        members, s = [mlp(16), mlp(12, softmax=True)], mlp(8)
        d = keras_kd.Distiller(members, s, temperature=3.0, alpha=0.7, teacher_weights=[2, 1],
                               teacher_preprocessing=["none", "scale=0.5"])
        d.compile(optimizer=keras.optimizers.SGD(0.5))
    h = d.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(8), epochs=2, verbose=0).history
    out[name] = {"w": [v.tolist() for v in s.get_weights()], "loss": h["loss"],
                 "replicas": strategy.num_replicas_in_sync}
print("RESULT" + json.dumps(out))
"""


def test_one_device_equals_two_replicas_with_an_ensemble(tmp_path):
    script = tmp_path / "replicas.py"
    script.write_text(_REPLICA_SCRIPT)
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    line = [l for l in run.stdout.splitlines() if l.startswith("RESULT")][-1]
    res = json.loads(line[len("RESULT"):])
    assert res["one"]["replicas"] == 1 and res["two"]["replicas"] == 2
    for a, b in zip(res["one"]["w"], res["two"]["w"]):
        np.testing.assert_allclose(np.array(a), np.array(b), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(res["one"]["loss"], res["two"]["loss"], rtol=1e-5)


def test_build_distiller_takes_a_list_of_teachers(members, data):
    x, y = data
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    d = keras_kd.build_distiller(strategy, members[:2], lambda: mlp(8, "student", 5),
                                 temperature=2.0, optimizer="sgd")
    assert len(d.teachers) == 2 and all(isinstance(t, keras.Model) for t in d.teachers)
    for copy, member in zip(d.teachers, members):
        for a, b in zip(copy.get_weights(), member.get_weights()):
            np.testing.assert_array_equal(a, b)
    d.fit(x, y, batch_size=16, epochs=1, verbose=0)
