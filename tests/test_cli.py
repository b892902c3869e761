"""The keras-kd main job end to end, at tiny size."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from keras_kd import cli

TINY = [
    "--epochs=1",
    "--teacher_epochs=1",
    "--teacher_arch=cnn:width=0.25",
    "--student_arch=mlp:hidden=8",
    "--batch_size=128",
    "--verbose=0",
]


def run_cli(argv):
    cli.FLAGS.unparse_flags()
    cli.FLAGS(["keras-kd"] + list(argv))
    return cli.main(["keras-kd"])


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert run_cli(TINY + [f"--output_dir={out}", "--temperature=3", "--alpha=0.8"]) == 0
    return out


def test_main_job_writes_every_artifact(tiny_run):
    names = set(os.listdir(tiny_run))
    assert {
        "teacher.keras", "baseline.keras", "student.keras", "student.tflite",
        "student.labels.txt", "metrics.json", "report.md",
    } <= names
    assert not [n for n in names if n.startswith(".")]  # no temp files left


def test_metrics_json_matches_the_saved_models(tiny_run):
    from keras_kd import data

    with open(tiny_run / "metrics.json") as f:
        metrics = json.load(f)
    rows = {r["model"]: r for r in metrics["models"]}
    assert set(rows) == {"teacher", "baseline", "distilled"}
    assert rows["baseline"]["params"] == rows["distilled"]["params"] < rows["teacher"]["params"]
    assert metrics["config"]["temperature"] == 3.0 and metrics["config"]["alpha"] == 0.8
    assert metrics["flags"]["student_arch"] == "mlp:hidden=8"
    # Recompute the distilled student's accuracy from the saved file.
    (_, _), (x_val, y_val), _ = data.load_arrays("mnist5k")
    student = keras.saving.load_model(tiny_run / "student.keras")
    acc = np.mean(student.predict(x_val.astype(np.float32), verbose=0).argmax(-1) == y_val)
    assert rows["distilled"]["accuracy"] == pytest.approx(acc, abs=1e-9)
    assert rows["distilled"]["errors"] == round((1 - acc) * len(y_val))
    assert metrics["tflite"]["agreement"] >= 0.99
    assert "distillation_loss" in metrics["distillation_history"]


def test_report_has_the_table_and_the_flags(tiny_run):
    text = (tiny_run / "report.md").read_text()
    for needle in ("| teacher |", "| baseline |", "| distilled |", "--temperature=3.0",
                   "--student_arch=mlp:hidden=8", "student.tflite"):
        assert needle in text, needle


def test_a_saved_teacher_is_reused_not_retrained(tiny_run, tmp_path):
    teacher_path = tiny_run / "teacher.keras"
    out = tmp_path / "again"
    assert run_cli(TINY + [f"--teacher={teacher_path}", f"--output_dir={out}",
                           "--teacher_epochs=5"]) == 0
    with open(tiny_run / "metrics.json") as f:
        first = {r["model"]: r for r in json.load(f)["models"]}
    with open(out / "metrics.json") as f:
        second = json.load(f)
    rows = {r["model"]: r for r in second["models"]}
    assert rows["teacher"]["errors"] == first["teacher"]["errors"]
    assert second["timings"]["teacher_s"] < 5


def test_flagfile(tmp_path):
    flagfile = tmp_path / "run.flags"
    flagfile.write_text("\n".join(TINY + ["--alpha=0.25", "--export=false"]) + "\n")
    out = tmp_path / "ff"
    assert run_cli([f"--flagfile={flagfile}", f"--output_dir={out}"]) == 0
    with open(out / "metrics.json") as f:
        metrics = json.load(f)
    assert metrics["config"]["alpha"] == 0.25
    assert not (out / "student.tflite").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--dataset=imagenet"], "mnist5k"),
        (["--teacher=/nope/teacher.keras"], "does not exist"),
        (["--temperature=0"], "temperature"),
        (["--alpha=2"], "alpha"),
        (["--distillation_loss=kld"], "Valid names"),
        (["--student_arch=transformer"], "transformer"),
        (["--augment=cutmixx"], "Valid policies"),
    ],
)
def test_bad_flags_exit_2_with_a_clear_message(argv, message, tmp_path, capsys):
    assert run_cli(TINY + argv + [f"--output_dir={tmp_path}"]) == 2
    assert message in capsys.readouterr().err


def test_teacher_that_does_not_fit_the_data(tmp_path, capsys):
    inputs = keras.Input((32, 32, 3))
    model = keras.Model(inputs, keras.layers.Dense(10)(keras.layers.Flatten()(inputs)))
    model.save(tmp_path / "wrong.keras")
    assert run_cli(TINY + [f"--teacher={tmp_path / 'wrong.keras'}",
                           f"--output_dir={tmp_path / 'o'}"]) == 2
    assert "inputs of shape (32, 32, 3)" in capsys.readouterr().err
    (tmp_path / "junk.keras").write_text("not a model")
    assert run_cli(TINY + [f"--teacher={tmp_path / 'junk.keras'}",
                           f"--output_dir={tmp_path / 'o'}"]) == 2
    assert "could not be loaded" in capsys.readouterr().err


def test_module_entry_point_help():
    result = subprocess.run(
        [sys.executable, "-m", "keras_kd", "--help"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode in (0, 1)  # absl's --help exits with 1
    assert "Traceback" not in result.stderr
    assert "keras-kd --teacher=" in result.stdout  # the usage text
    for flag in ("--temperature", "--alpha", "--teacher_arch", "--output_dir"):
        assert flag in result.stdout + result.stderr, flag


def _png_folder(root, classes=3, per_class=8, size=(12, 12)):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(classes):
        folder = root / f"class_{c}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 60, size=size + (3,), dtype=np.uint8)
            pixels[..., c] += 150  # each class has its own dominant colour
            Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def test_main_job_on_a_folder_of_pngs(tmp_path):
    root = _png_folder(tmp_path / "pngs")
    out = tmp_path / "out"
    assert run_cli(TINY + [f"--dataset=folder:{root}", "--teacher_arch=cnn:width=0.125",
                           "--student_arch=mlp:hidden=4", f"--output_dir={out}",
                           "--teacher_epochs=3", "--epochs=3", "--batch_size=8"]) == 0
    with open(out / "metrics.json") as f:
        metrics = json.load(f)
    assert metrics["dataset"]["input_shape"] == [12, 12, 3]
    assert metrics["dataset"]["num_classes"] == 3
    assert (out / "student.labels.txt").read_text().split() == ["class_0", "class_1", "class_2"]


def test_main_job_on_tfds_mock_data(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    out = tmp_path / "out"
    with tfds.testing.mock_data(num_examples=64):
        assert run_cli(TINY + ["--dataset=tfds:mnist", f"--output_dir={out}",
                               "--batch_size=32"]) == 0
    with open(out / "metrics.json") as f:
        metrics = json.load(f)
    assert metrics["dataset"]["input_shape"] == [28, 28, 1]
    assert metrics["tflite"]["agreement"] >= 0.99


def test_output_dir_that_is_a_file(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert run_cli(TINY + [f"--output_dir={blocker}"]) == 2
    assert "cannot create --output_dir" in capsys.readouterr().err


def test_untrained_teacher_is_refused(tmp_path, capsys):
    assert run_cli(TINY + ["--teacher_epochs=0", f"--output_dir={tmp_path}"]) == 2
    assert "untrained teacher" in capsys.readouterr().err


def test_same_seed_same_run(tmp_path):
    """--deterministic (default): two runs with one seed agree bit for bit."""
    results = []
    for name in ("a", "b"):
        out = tmp_path / name
        assert run_cli(TINY + ["--seed=3", "--export=false", f"--output_dir={out}"]) == 0
        with open(out / "metrics.json") as f:
            metrics = json.load(f)
        results.append((metrics["models"], metrics["distillation_history"]))
    assert results[0] == results[1]
    import tensorflow as tf
    from tensorflow.python.framework import config as tf_config

    assert not tf_config.is_op_determinism_enabled()  # restored afterwards
    del tf


def test_report_tables_are_well_formed_markdown(tiny_run):
    """Every row of each markdown table has its header's number of cells."""
    lines = (tiny_run / "report.md").read_text().splitlines()
    width = None
    for line in lines:
        if not line.startswith("|"):
            width = None
            continue
        cells = line.count("|") - 1
        if width is None:
            width = cells
        assert cells == width, line
    assert "=None" not in "\n".join(lines)
