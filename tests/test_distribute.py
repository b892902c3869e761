"""Strategies by name, TF_CONFIG validation, mixed precision, multi-replica CLI."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_kd
from keras_kd import distribute


def test_unknown_strategy_lists_the_valid_ones():
    with pytest.raises(ValueError, match="valid: auto, mirrored, one_device, multi_worker, tpu"):
        distribute.get_strategy("horovod")


def test_auto_on_one_cpu_is_the_default_strategy():
    import tensorflow as tf

    assert distribute.get_strategy("auto") is tf.distribute.get_strategy()
    assert distribute.get_strategy("one_device").num_replicas_in_sync == 1


@pytest.mark.parametrize(
    "text, match",
    [
        ("", "needs the TF_CONFIG"),
        ("{not json", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        ('{"cluster": {}, "task": {"type": "worker", "index": 0}}', "non-empty"),
        ('{"cluster": {"worker": ["localhost:1"]}, "task": {"type": "ps", "index": 0}}',
         "must name one of"),
        ('{"cluster": {"worker": ["localhost:1"]}, "task": {"type": "worker", "index": 1}}',
         r"\[0, 1\)"),
        ('{"cluster": {"worker": ["localhost"]}, "task": {"type": "worker", "index": 0}}',
         "host:port"),
    ],
)
def test_malformed_tf_config(text, match):
    with pytest.raises(ValueError, match=match):
        distribute.parse_tf_config(text)


def test_valid_tf_config():
    config = distribute.parse_tf_config(json.dumps({
        "cluster": {"worker": ["localhost:1234", "localhost:2345"]},
        "task": {"type": "worker", "index": 1}}))
    assert config["task"]["index"] == 1


def test_multi_worker_without_tf_config(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="needs the TF_CONFIG"):
        distribute.get_strategy("multi_worker")


def test_tpu_without_a_tpu_is_a_clear_error():
    with pytest.raises(ValueError, match="found no TPU"):
        distribute.get_strategy("tpu")


def test_cpu_devices_after_initialisation_is_a_clear_error():
    import tensorflow as tf

    tf.constant(1.0)  # devices are initialised by now in this test process
    with pytest.raises(RuntimeError, match="before any model"):
        distribute.configure_cpu_devices(3)
    with pytest.raises(ValueError, match="positive integer"):
        distribute.configure_cpu_devices(0)


def _tiny_models(seed):
    keras.utils.set_random_seed(seed)

    def mlp(hidden):
        inputs = keras.Input((6,))
        h = keras.layers.Dense(hidden, activation="relu")(inputs)
        return keras.Model(inputs, keras.layers.Dense(3, dtype="float32")(h))

    return mlp(32), mlp(8)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_moves_weights_like_float32(policy, rng):
    x = rng.normal(size=(64, 6)).astype(np.float32)
    y = rng.integers(0, 3, size=64)
    moved = {}
    for name in ("float32", policy):
        with distribute.mixed_precision(name):
            teacher, student = _tiny_models(0)
            before = [w.copy() for w in student.get_weights()]
            d = keras_kd.Distiller(teacher, student, temperature=2.0, alpha=0.5)
            d.compile(optimizer=keras.optimizers.SGD(0.1))
            if name == "mixed_float16":
                assert isinstance(d.optimizer, keras.optimizers.LossScaleOptimizer)
            assert keras.config.dtype_policy().name == name
        history = d.fit(x, y, batch_size=16, epochs=2, verbose=0).history
        assert all(np.isfinite(history["loss"]))
        after = student.get_weights()
        assert all(np.all(np.isfinite(w)) for w in after)
        moved[name] = sum(float(np.abs(a - b).sum()) for a, b in zip(after, before))
    assert keras.config.dtype_policy().name == "float32"  # restored
    ratio = moved[policy] / moved["float32"]
    assert 0.5 < ratio < 2.0, moved


def test_unknown_policy():
    with pytest.raises(ValueError, match="mixed_float16"):
        with distribute.mixed_precision("float8"):
            pass


def test_cli_mirrored_on_two_cpu_devices(tmp_path):
    """`keras-kd --strategy=mirrored --num_cpu_devices=2` runs the whole path."""
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "keras_kd", "--strategy=mirrored", "--num_cpu_devices=2",
         "--epochs=1", "--teacher_epochs=1", "--teacher_arch=cnn:width=0.25",
         "--student_arch=mlp:hidden=8", "--batch_size=128", "--verbose=0",
         f"--output_dir={out}"],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "KERAS_BACKEND": "tensorflow"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with open(out / "metrics.json") as f:
        metrics = json.load(f)
    assert metrics["distribution"] == {
        "strategy": "mirrored", "strategy_class": "MirroredStrategy", "replicas": 2,
        "mixed_precision": "float32", "jit_compile": False}
    assert metrics["tflite"]["agreement"] >= 0.99
    assert "Saved artifact" not in result.stdout  # the converter's chatter is hidden


# The CLI path once (float16: the one with loss scaling); both 16-bit policies
# are tested at the API level above.
@pytest.mark.parametrize("policy", ["mixed_float16"])
def test_cli_mixed_precision_trains_and_exports_float32(policy, tmp_path):
    from test_cli import TINY, run_cli

    out = tmp_path / policy
    assert run_cli(TINY + [f"--mixed_precision={policy}", f"--output_dir={out}"]) == 0
    with open(out / "metrics.json") as f:
        metrics = json.load(f)
    assert metrics["distribution"]["mixed_precision"] == policy
    assert all(np.isfinite(metrics["distillation_history"]["loss"]))
    assert metrics["tflite"]["agreement"] >= 0.97  # 16-bit Keras vs float32 file
    assert keras.config.dtype_policy().name == "float32"


def test_jit_compile_is_dropped_under_several_replicas():
    class Fake:
        num_replicas_in_sync = 2

    jit, note = distribute.resolve_jit_compile(True, Fake())
    assert jit is False and "2 replicas" in note
    assert distribute.resolve_jit_compile(True, distribute.get_strategy("auto")) == (True, None)
    assert distribute.resolve_jit_compile(False, Fake()) == (False, None)


_XLA_REPLICAS_SCRIPT = r"""
import json, warnings
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import numpy as np, keras, keras_kd
from keras_kd.distiller import DataError

rng = np.random.default_rng(0)
x = rng.normal(size=(16, 4)).astype("float32")
y = rng.integers(0, 3, size=16).astype("int32")
x[13, 1] = np.nan  # in the second replica's half of the second batch of 8
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
def mlp(seed):
    keras.utils.set_random_seed(seed)
    i = keras.Input((4,))
    return keras.Model(i, keras.layers.Dense(3)(i))
with strategy.scope():
    d = keras_kd.Distiller(mlp(1), mlp(2))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        d.compile(optimizer="sgd", jit_compile=True)
out = {"jit": d.jit_compile, "warnings": [str(w.message) for w in caught]}
try:
    d.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(8), epochs=1, verbose=0)
    out["error"] = None
except Exception as err:
    out["error"] = [type(err).__name__, str(err)[:300]]
print("RESULT" + json.dumps(out))
"""


def test_distiller_compile_drops_xla_under_two_replicas(tmp_path):
    """compile(jit_compile=True) under 2 replicas: XLA off with one warning naming why
    (resolve_jit_compile, the job's rule), so the NaN in the second replica's share of
    a batch stops fit with the DataError (under XLA the step failed on cross-device
    resources, and its record of a failed check kept the first replica's only)."""
    script = tmp_path / "xla_replicas.py"
    script.write_text(_XLA_REPLICAS_SCRIPT)
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    res = _result(run.stdout)
    assert res["jit"] is False
    (note,) = res["warnings"]
    assert note.startswith("compile(jit_compile=True) ignored: XLA does not compile the step "
                           "under MirroredStrategy with 2 replicas") and "first replica" in note
    name, text = res["error"]
    assert name == "DataError" and text.startswith("the inputs x (images) of this batch"), text


def test_cli_jit_compile_on_one_device(tmp_path):
    from test_cli import TINY, run_cli

    out = tmp_path / "xla"
    assert run_cli(TINY + ["--jit_compile", "--export=false", f"--output_dir={out}"]) == 0
    with open(out / "metrics.json") as f:
        metrics = json.load(f)
    assert metrics["distribution"]["jit_compile"] is True
    assert all(np.isfinite(metrics["distillation_history"]["loss"]))


def test_build_distiller_moves_models_into_the_strategy(rng):
    import tensorflow as tf

    teacher, student = _tiny_models(1)  # built outside any strategy
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    assert not distribute._created_in(strategy, teacher.variables[0])
    d = keras_kd.build_distiller(
        strategy, teacher, lambda: _tiny_models(2)[1], temperature=2.0, alpha=0.5,
        optimizer=keras.optimizers.SGD(0.1), metrics=["accuracy"])
    assert d.teacher is not teacher
    for a, b in zip(d.teacher.get_weights(), teacher.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert all(distribute._created_in(strategy, v) for v in d.variables)
    x = rng.normal(size=(32, 6)).astype(np.float32)
    y = rng.integers(0, 3, size=32)
    history = d.fit(x, y, batch_size=8, epochs=1, verbose=0).history
    assert np.isfinite(history["loss"][0]) and "accuracy" in history
    with pytest.raises(ValueError, match="keras.Model or a function"):
        keras_kd.build_distiller(strategy, "teacher.keras", student)


_WORKER = r"""
import json, os, sys
mode, index, ports = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(",")
if mode == "multi":
    os.environ["TF_CONFIG"] = json.dumps({
        "cluster": {"worker": [f"localhost:{p}" for p in ports]},
        "task": {"type": "worker", "index": index}})
import numpy as np, tensorflow as tf, keras, keras_kd
from keras_kd import distribute, fitting
fitting.LOG_EVERY = 2  # epochs of 3 steps per worker: mid-epoch reads happen too
strategy = distribute.get_strategy("multi_worker" if mode == "multi" else "auto")
keras.utils.set_random_seed(7)
def mlp(h):
    i = keras.Input((6,))
    return keras.Model(i, keras.layers.Dense(3)(keras.layers.Dense(h, activation="relu")(i)))
with strategy.scope():
    d = keras_kd.Distiller(mlp(16), mlp(8), temperature=3.0, alpha=0.7)
    d.compile(optimizer=keras.optimizers.SGD(0.5), metrics=["accuracy"])
rng = np.random.default_rng(0)
x = rng.normal(size=(48, 6)).astype("float32")
y = rng.integers(0, 3, size=48).astype("int32")
ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
h = d.fit(ds, epochs=2, verbose=0, validation_data=ds).history
print("RESULT" + json.dumps({"weights": [w.tolist() for w in d.student.get_weights()],
                             "loss": h["loss"], "val": h["val_loss"],
                             "replicas": strategy.num_replicas_in_sync}), flush=True)
"""


def _free_ports(n):
    import socket

    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _result(stdout):
    line = [l for l in stdout.splitlines() if l.startswith("RESULT")][-1]
    return json.loads(line[len("RESULT"):])


def test_two_workers_train_like_one_process(tmp_path):
    """Multi-worker (2 processes on localhost) == single process, via Distiller.fit."""
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    ports = ",".join(str(p) for p in _free_ports(2))
    procs = [subprocess.Popen([sys.executable, str(script), "multi", str(i), ports],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    outs = [p.communicate(timeout=240) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    single = subprocess.run([sys.executable, str(script), "single", "0", ports],
                            capture_output=True, text=True, timeout=240)
    assert single.returncode == 0, single.stderr[-3000:]
    ref = _result(single.stdout)
    for out, _ in outs:
        res = _result(out)
        assert res["replicas"] == 2
        for a, b in zip(res["weights"], ref["weights"]):
            np.testing.assert_allclose(np.array(a), np.array(b), rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(res["loss"], ref["loss"], rtol=1e-5)
        np.testing.assert_allclose(res["val"], ref["val"], rtol=1e-5)


def test_global_batch_must_split_over_replicas():
    distribute.check_global_batch(64, 2)
    distribute.check_global_batch(7, 1)
    with pytest.raises(ValueError, match="--batch_size=62"):
        distribute.check_global_batch(63, 2)


_DIST_SCRIPT = r"""
import json
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import numpy as np, keras, keras_kd
from keras_kd import losses

def per_replica_dist(t, s, temperature):  # the control: intra over the local batch only
    p = tf.nn.softmax(tf.cast(t, tf.float32) / temperature)
    q = tf.nn.softmax(tf.cast(s, tf.float32) / temperature)
    intra = tf.reduce_mean(losses._pearson_distance(q, p, axis=0))
    return temperature ** 2 * (losses._pearson_distance(q, p, axis=-1) + intra)

rng = np.random.default_rng(0)
x = rng.normal(size=(21, 6)).astype("float32")  # last batch of 5 splits 3/2
y = rng.integers(0, 3, size=21).astype("int32")
out = {}
# One MirroredStrategy for both runs: a second one over the same devices
# reuses its collective instance keys and clashes with the first one's.
strategies = (("one", tf.distribute.OneDeviceStrategy("/cpu:0")),
              ("two", tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])))
for loss_name, loss in (("dist", "dist"), ("control", per_replica_dist)):
    for name, strategy in strategies:
        with strategy.scope():
            keras.utils.set_random_seed(7)
            def mlp(h):
                i = keras.Input((6,))
                return keras.Model(i, keras.layers.Dense(3)(keras.layers.Dense(h, activation="relu")(i)))
            t, s = mlp(16), mlp(8)
            d = keras_kd.Distiller(t, s, temperature=2.0, alpha=0.8, distillation_loss=loss)
            d.compile(optimizer=keras.optimizers.SGD(0.3))
        h = d.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(8), epochs=2, verbose=0).history
        out[f"{loss_name}/{name}"] = {"w": [v.tolist() for v in s.get_weights()], "loss": h["loss"]}
print("RESULT" + json.dumps(out))
"""


def test_dist_intra_class_term_spans_the_global_batch(tmp_path):
    """DIST's intra-class term is a batch statistic: all-gathered, 2 replicas == 1 device;
    the per-replica version (the control) is not."""
    script = tmp_path / "dist.py"
    script.write_text(_DIST_SCRIPT)
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    res = _result(run.stdout)

    def gap(loss_name):
        return max(np.abs(np.array(a) - np.array(b)).max() for a, b in
                   zip(res[f"{loss_name}/one"]["w"], res[f"{loss_name}/two"]["w"]))

    assert gap("dist") < 2e-5  # float32 rounding of the all-reduced sums
    np.testing.assert_allclose(res["dist/one"]["loss"], res["dist/two"]["loss"], rtol=1e-5)
    assert gap("control") > 1e-2


def test_in_scope_keeps_a_model_of_the_strategy_and_copies_others():
    import tensorflow as tf

    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    outside = _tiny_models(1)[0]
    with strategy.scope():
        inside = _tiny_models(2)[0]
        assert distribute.in_scope(strategy, inside, "teacher") is inside
        copy = distribute.in_scope(strategy, outside, "teacher")
    assert copy is not outside
    assert all(distribute._created_in(strategy, v) for v in copy.variables)
    with pytest.raises(ValueError, match="student must be a keras.Model"):
        distribute.in_scope(strategy, 3, "student")


def test_check_settings_is_the_rule_of_get_strategy_and_mixed_precision():
    distribute.check_settings(strategy="mirrored", mixed_precision="mixed_bfloat16")
    with pytest.raises(ValueError, match=r"^unknown --strategy='horovod'; valid: auto, "
                                         r"mirrored, one_device, multi_worker, tpu\.$"):
        distribute.check_settings(strategy="horovod", prefix="--")
    with pytest.raises(ValueError, match=r"^unknown --mixed_precision='float8'; valid: "
                                         r"float32, mixed_float16, mixed_bfloat16\.$"):
        distribute.check_settings(mixed_precision="float8", prefix="--")
    with pytest.raises(ValueError, match=r"^unknown strategy='horovod'; valid: "):
        distribute.get_strategy("horovod")


_BN_SCRIPT = r"""
import json, warnings
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import numpy as np, keras, keras_kd
from keras_kd import models

rng = np.random.default_rng(0)
x = rng.uniform(0, 255, size=(16, 8, 8, 1)).astype("float32")
y = rng.integers(0, 3, size=16).astype("int32")
ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)  # 2 steps of 8 = 4 + 4 per replica
strategies = {"one": tf.distribute.OneDeviceStrategy("/cpu:0"),
              "two": tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])}  # once: see _DIST_SCRIPT
out = {}
for name, sync in (("one", None), ("two", None), ("two", False)):
    with strategies[name].scope():
        teacher = models.build("mlp:hidden=4", (8, 8, 1), 3, seed=1)
        student = models.build("cnn:batchnorm=1,width=0.25", (8, 8, 1), 3, seed=2,
                               synchronized_batchnorm=sync)
        d = keras_kd.Distiller(teacher, student, temperature=2.0, alpha=0.5)
        d.compile(optimizer=keras.optimizers.SGD(0.5))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):  # two fits: warned once
            d.fit(ds, epochs=1, verbose=0)
    out[f"{name}/{sync}"] = {
        "w": [v.tolist() for v in student.get_weights()],
        "names": [v.path for v in student.weights],
        "synchronized": [l.synchronized for l in student.layers
                         if isinstance(l, keras.layers.BatchNormalization)],
        "warnings": [str(w.message) for w in caught if "BatchNormalization" in str(w.message)]}
print("RESULT" + json.dumps(out))
"""


def test_batchnorm_student_two_replicas_train_like_one_device(tmp_path):
    """A BatchNormalization student built by models.build inside a 2-replica scope is
    synchronized and trains the weights one device trains; unsynchronized (the
    control) it does not, and the Distiller warns once."""
    script = tmp_path / "bn.py"
    script.write_text(_BN_SCRIPT)
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    res = _result(run.stdout)
    one, two, plain = res["one/None"], res["two/None"], res["two/False"]
    assert one["synchronized"] == [False] * 3 and two["synchronized"] == [True] * 3
    assert plain["synchronized"] == [False] * 3

    def gaps(a, b):
        return {n: float(np.abs(np.array(u) - np.array(v)).max())
                for n, u, v in zip(one["names"], a["w"], b["w"])}

    assert max(gaps(one, two).values()) < 1e-5, gaps(one, two)
    assert max(gaps(one, plain).values()) > 1e-2, gaps(one, plain)
    assert one["warnings"] == [] and two["warnings"] == []
    assert len(plain["warnings"]) == 1, plain["warnings"]
    assert "2 replicas" in plain["warnings"][0] and "'block1_bn'" in plain["warnings"][0]
    assert "synchronize_batchnorm" in plain["warnings"][0]
