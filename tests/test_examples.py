"""The examples run as documented (at smoke-test size)."""

import importlib.util
import json
import math
import os

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")


def _load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(EXAMPLES, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quickstart_runs_and_its_export_agrees(tmp_path):
    result = _load("quickstart").main(epochs=1, output_dir=str(tmp_path))
    assert os.path.exists(result["path"])
    assert result["tflite"]["agreement"] >= 0.99
    assert result["tflite"]["accuracy"] == pytest.approx(result["keras"]["accuracy"], abs=0.005)


# ---------------------------------------------------------------- hinton_mnist


def test_hinton_bias_shift_helpers_against_numpy():
    hinton = _load("hinton_mnist")
    logits = np.array([[2.0, 0.0, 1.0], [0.0, 3.0, 2.5], [1.0, 0.0, -0.5]])
    labels = np.array([2, 2, 0])
    # A 2 becomes the prediction of row 0 above +1, of row 1 above +0.5, of
    # row 2 (a 0) above +1.5.
    assert hinton.errors(logits, labels, digit=2) == (2, 2)
    np.testing.assert_array_equal(hinton.predictions(logits, 2, 0.75), [0, 2, 0])
    assert hinton.errors(logits, labels, digit=2, shift=0.75) == (1, 1)
    assert hinton.errors(logits, labels, digit=2, shift=1.25) == (0, 0)
    assert hinton.errors(logits, labels, digit=2, shift=2.0) == (1, 0)
    assert hinton.errors(logits, labels) == (2, None)
    # The shift with the fewest errors; the smallest one among ties.
    assert hinton.choose_shift(logits, labels, 2, np.array([0.0, 0.75, 1.25, 2.0])) == 1.25
    assert hinton.choose_shift(logits, labels, 2, np.array([0.0, 1.25, 1.4])) == 1.25
    # The input is not modified.
    np.testing.assert_array_equal(logits[:, 2], [1.0, 2.5, -0.5])


def test_hinton_mnist_runs_and_compares_with_the_paper(tmp_path):
    hinton = _load("hinton_mnist")
    r = hinton.main(teacher_arch="mlp:hidden=64x64,dropout=0.2", student_arch="mlp:hidden=32x32",
                    teacher_epochs=1, epochs=1, output_dir=str(tmp_path),
                    verbose=0)
    # mnist5k: 4,000 training digits (400 per class), 1,000 validation (100 per class).
    assert (r["train_examples"], r["train_threes"]) == (4000, 400)
    assert (r["val_examples"], r["val_threes"]) == (1000, 100)
    # The transfer set truly has no 3s, and lost nothing else.
    assert r["transfer_threes"] == 0 and r["transfer_examples"] == 3600
    for key in ("teacher_errors", "student_alone_errors", "distilled_errors",
                "omitted_errors", "shifted_errors"):
        assert 0 <= r[key] < 800, (key, r[key])  # better than chance (900) after 1 epoch
    assert math.isfinite(r["bias_3"]) and math.isfinite(r["bias_others"])
    # The chosen shift is on the grid, never worse than no shift, and moves
    # predictions toward 3 (more predicted 3s, fewer errors on 3s).
    assert r["chosen_shift"] in hinton.SHIFT_GRID
    assert r["shifted_errors"] <= r["omitted_errors"]
    assert r["predicted_3s_shifted"] >= r["predicted_3s"]
    assert r["shifted_errors_on_3s"] <= r["omitted_errors_on_3s"]
    assert r["paper_shift_errors_on_3s"] <= r["omitted_errors_on_3s"]
    # The table is written, with the paper's figures beside ours.
    table = (tmp_path / "hinton_mnist.md").read_text(encoding="utf-8")
    assert table == r["table"]
    for paper in ("67 / 10,000", "146 / 10,000", "74 / 10,000", "206 / 10,000",
                  "133 / 1,010", "109 / 10,000", "14 / 1,010"):
        assert paper in table, paper
    assert f"{r['distilled_errors']} / 1,000" in table
    assert f"{r['omitted_errors_on_3s']} / 100 " in table
    saved = json.loads((tmp_path / "hinton_mnist.json").read_text(encoding="utf-8"))
    assert saved["paper"]["teacher"] == 67 and saved["distilled_errors"] == r["distilled_errors"]


def test_hinton_transfer_set_filter_removes_only_the_digit():
    import tensorflow as tf

    hinton = _load("hinton_mnist")
    labels = np.arange(25) % 5
    ds = tf.data.Dataset.from_tensor_slices((np.zeros((25, 2, 2, 1), np.float32), labels))
    kept = np.concatenate([y.numpy() for _, y in hinton.without_digit(ds.batch(4), 3, 4)])
    np.testing.assert_array_equal(kept, labels[labels != 3])


# ---------------------------------------------------------------- resnet_to_mobilenet


def test_resnet_to_mobilenet_exports_a_verified_int8_tflite(tmp_path):
    # The example's path (tfds data, flip_crop, a ResNet teacher, distillation,
    # int8 export_verified with min_agreement=0.99) at a tiny size, on random
    # mock images. The student is a tiny CNN, not MobileNetV2: MobileNetV2
    # takes ~30 s more to trace and convert, and an untrained one outputs
    # near-constant logits in inference mode (its BatchNorm moving averages,
    # momentum 0.999, start at 0 / 1), which would make the agreement check
    # trivially 1.0. The run is seeded and deterministic.
    import keras
    import tensorflow_datasets as tfds

    from keras_kd import data, export

    example = _load("resnet_to_mobilenet")
    with tfds.testing.mock_data(num_examples=32):
        r = example.main(
            dataset="tfds:cifar10", augment="flip_crop", quantization="int8",
            learning_rate=1e-3, bn_momentum=0,  # the CIFAR settings, not the digits' defaults
            teacher_arch="resnet_cifar:depth=8,width=0.25",
            student_arch="cnn:width=0.25,gap=1", teacher_epochs=1, epochs=1,
            batch_size=16, steps_per_epoch=1, validation_steps=2,
            output_dir=str(tmp_path), verbose=0,
        )
        # The files on disk agree with each other: the saved .keras student
        # and the .tflite, checked again here on the (mock) validation images.
        _, val, _ = data.load("tfds:cifar10", batch_size=16)
        student = keras.saving.load_model(r["student_path"])
        again = export.verify(r["tflite_path"], val.take(2), reference_model=student)
        logits = student.predict(val.take(2), verbose=0)
    assert r["input_shape"] == [32, 32, 3] and r["num_classes"] == 10
    for key in ("teacher_accuracy", "student_accuracy", "teacher_agreement"):
        assert 0.0 <= r[key] <= 1.0, (key, r[key])
    for name in ("teacher.keras", "student.keras", "student.tflite", "student.json",
                 "student.labels.txt", "results.json"):
        assert (tmp_path / name).is_file(), name
    check = r["tflite"]
    assert check["quantization"] == "int8" and check["examples"] == 32
    assert check["agreement"] >= 0.99 and math.isfinite(check["max_abs_diff"])
    assert again["examples"] == 32 and again["agreement"] >= 0.99
    # ... and the agreement is not that of a constant function.
    assert logits.shape == (32, 10) and logits.std(axis=0).min() > 1e-3
    # Full integer: every convolution and matmul runs an int8 kernel.
    from ai_edge_litert.interpreter import Interpreter

    ops = Interpreter(model_path=r["tflite_path"])._get_ops_details()
    tensors = Interpreter(model_path=r["tflite_path"]).get_tensor_details()
    dtypes = {t["index"]: t["dtype"] for t in tensors}
    heavy = [o for o in ops if o["op_name"] in ("CONV_2D", "FULLY_CONNECTED")]
    assert heavy and all(dtypes[o["inputs"][0]] == np.int8 for o in heavy)
    meta = export.read_metadata(r["tflite_path"])
    assert meta["quantization"] == "int8" and meta["input"]["shape"] == [1, 32, 32, 3]
    saved = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))
    assert saved["tflite"]["agreement"] == check["agreement"]


def _script(name, *args, timeout=300):
    """``python examples/<name>.py args...`` as a user runs it (no network here)."""
    import subprocess
    import sys

    return subprocess.run([sys.executable, os.path.join(EXAMPLES, f"{name}.py"), *args],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def test_resnet_to_mobilenet_runs_offline_out_of_the_box(tmp_path):
    """``python examples/resnet_to_mobilenet.py`` on a fresh machine: its default data
    ships with keras_kd (mnist5k, 32x32, tiled to RGB), nothing is downloaded. Only the
    models and the schedule are shrunk here; the data flags are the defaults."""
    result = _script(
        "resnet_to_mobilenet", "--teacher_arch=resnet_cifar:depth=8,width=0.25",
        "--student_arch=cnn:width=0.25,gap=1", "--teacher_epochs=1", "--epochs=1",
        "--steps_per_epoch=40", "--validation_steps=4", "--verbose=0",
        f"--output_dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    r = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))
    assert r["dataset"] == "mnist5k" and r["input_shape"] == [32, 32, 3]
    assert r["config"]["dataset"] == "mnist5k" and r["num_classes"] == 10
    check = r["tflite"]  # --quantization=auto: the first mode that agrees >= 99 %
    assert check["examples"] == 256 and check["agreement"] >= 0.99
    assert r["teacher_accuracy"] > 0.15  # real digits, 40 steps: above chance (0.1)
    from keras_kd import export

    meta = export.read_metadata(tmp_path / "student.tflite")
    assert meta["input"]["shape"] == [1, 32, 32, 3] and meta["quantization"] == check["quantization"]
    assert f"{tmp_path}/student.tflite: {check['quantization']}" in result.stdout


@pytest.mark.parametrize("name, args, message", [
    ("resnet_to_mobilenet", ["--epoch=3"], "Unknown command line flag 'epoch'"),
    ("resnet_to_mobilenet", ["--dataset=tfds:cifar10", "--data_dir=/nonexistent"],
     "is not prepared"),
    ("quickstart", ["--epochs=many"], "invalid int value"),
    ("hinton_mnist", ["--dataset=nope"], "nope"),
])
def test_examples_fail_with_one_line(name, args, message):
    result = _script(name, *args, timeout=120)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"{name}.py: error: ") and message in last, last
    assert "FATAL" not in result.stderr and "usage:" not in result.stderr


# ---------------------------------------------------------------- distill.ipynb


def test_notebook_is_committed_without_outputs():
    import nbformat

    nb = nbformat.read(os.path.join(EXAMPLES, "distill.ipynb"), as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.outputs == [] and c.execution_count is None for c in code)
    assert "parameters" in code[0].metadata.get("tags", [])


def test_notebook_runs_and_its_exports_verify(tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(os.path.join(EXAMPLES, "distill.ipynb"), as_version=4)
    monkeypatch.setenv("KERAS_KD_SMOKE", "1")  # the kernel inherits the environment
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    # "python3" is the kernel of the Python running the tests (jupyter_client
    # runs it with sys.executable), so the notebook sees this environment.
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    out = tmp_path / "distill_outputs"
    for name in ("teacher.keras", "student.keras", "history.png", "student_none.tflite",
                 "student_int8.tflite", "results.json"):
        assert (out / name).is_file(), name
    r = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert 0.5 < r["teacher_accuracy"] <= 1.0  # one epoch on mnist5k is far above chance
    assert 0.2 < r["student_accuracy"] <= 1.0
    assert len(r["history"]["loss"]) == 1 and all(
        math.isfinite(v) for vs in r["history"].values() for v in vs)
    float32, int8 = r["tflite"]["none"], r["tflite"]["int8"]
    assert (float32["quantization"], int8["quantization"]) == ("none", "int8")
    assert float32["examples"] == int8["examples"] == 1000
    assert float32["agreement"] >= 0.99
    assert float32["accuracy"] == pytest.approx(r["student_accuracy"], abs=0.005)
    # A 1-epoch 32x32 MLP has small logit margins: int8 flips ~2 % of its
    # top-1 answers (the full-size notebook agrees >= 99 %).
    assert int8["agreement"] >= 0.95
    assert int8["size_bytes"] < 0.5 * float32["size_bytes"]
    # The plot really holds pixels (a PNG header and some size).
    png = (out / "history.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
