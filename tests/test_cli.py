"""The keras-kd main job end to end, at tiny size."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from keras_kd import cli, models

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
        "student.labels.txt", "student.json", "metrics.json", "report.md",
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
    # --export_quantization=auto: int8 first, the first mode that agrees kept.
    tried = metrics["tflite"]["candidates"]
    assert tried[0]["quantization"] == "int8"
    assert metrics["tflite"]["quantization"] == tried[-1]["quantization"]
    with open(tiny_run / "student.json") as f:
        sidecar = json.load(f)
    assert sidecar["quantization"] == metrics["tflite"]["quantization"]
    assert sidecar["verification"]["agreement"] == metrics["tflite"]["agreement"]
    assert sidecar["verification"]["examples"] == 1000
    assert metrics["artifacts"]["tflite_metadata"] == "student.json"


def test_report_has_the_table_and_the_flags(tiny_run):
    text = (tiny_run / "report.md").read_text()
    for needle in ("| teacher |", "| baseline |", "| distilled |", "--temperature=3.0",
                   "--student_arch=mlp:hidden=8", "student.tflite"):
        assert needle in text, needle


def test_a_saved_teacher_is_reused_not_retrained(tiny_run, tmp_path):
    teacher_path = tiny_run / "teacher.keras"
    out = tmp_path / "again"
    assert run_cli(TINY + [f"--teacher={teacher_path}", f"--output_dir={out}",
                           "--teacher_epochs=5", "--export_quantization=dynamic"]) == 0
    with open(tiny_run / "metrics.json") as f:
        first = {r["model"]: r for r in json.load(f)["models"]}
    with open(out / "metrics.json") as f:
        second = json.load(f)
    rows = {r["model"]: r for r in second["models"]}
    assert rows["teacher"]["errors"] == first["teacher"]["errors"]
    assert second["timings"]["teacher_s"] < 5
    assert second["tflite"]["quantization"] == "dynamic" and "candidates" not in second["tflite"]
    assert "## Exported student (`student.tflite`, dynamic)" in (out / "report.md").read_text()


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
        (["--min_agreement=2"], "--min_agreement must be a fraction"),
        (["--min_teacher_accuracy=1.5"], "--min_teacher_accuracy must be a fraction"),
        (["--teacher_preprocessing=unit"], "a teacher trained here takes raw 0-255 pixels"),
        (["--teacher_arch=cnn,mlp", "--teacher_preprocessing=unit,none,tf"],
         "lists 3 specs for 2 teacher(s)"),
        (["--teacher_arch=cnn,mlp", "--teacher_weights=1"], "lists 1 weight(s) for 2"),
        (["--teacher_arch=cnn,mlp", "--features=hint:a=b"], "with an ensemble of 2 teachers"),
        (["--image_size=abc"], "Cannot parse image_size"),  # parsed from the flag's text
        (["--verbose=7"], "--verbose must be 0, 1, 2 or 3"),
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
    assert "--teacher=" in (err := capsys.readouterr().err) and "is not a Keras model file" in err


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
                           "--min_teacher_accuracy=0",  # 4 validation images of random pixels
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
                               "--batch_size=32", "--min_teacher_accuracy=0"]) == 0
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


# keras-kd export: any saved Keras classifier → a verified .tflite


def run_export(argv):
    cli.EXPORT_FLAGS.unparse_flags()
    cli.EXPORT_FLAGS(["keras-kd"] + list(argv))
    return cli.export_main(["keras-kd"])


def test_export_subcommand_writes_a_verified_file(tiny_run, tmp_path, capsys):
    out = tmp_path / "app" / "digits.tflite"
    assert run_export([f"--model={tiny_run / 'student.keras'}", "--quantization=int8",
                       "--dataset=mnist5k", f"--output={out}"]) == 0
    assert sorted(os.listdir(out.parent)) == ["digits.json", "digits.labels.txt",
                                              "digits.tflite"]
    with open(out.parent / "digits.json") as f:
        sidecar = json.load(f)
    assert sidecar["quantization"] == "int8" and sidecar["representative_examples"] == 300
    assert sidecar["verification"]["examples"] == 1000
    assert 0 < sidecar["verification"]["agreement"] <= 1
    assert sidecar["class_names"] == [str(i) for i in range(10)]
    printed = capsys.readouterr().out
    assert "digits.tflite (int8," in printed and "agrees with the Keras model on" in printed


def test_export_subcommand_min_agreement_fails_and_writes_nothing(tmp_path, capsys):
    # An untrained model's logits are close together: int8 rounding flips
    # some of its top-1 choices, so it cannot agree on all 1,000 images.
    from keras_kd import models

    models.build("mlp:hidden=16", (28, 28, 1), 10, seed=0).save(tmp_path / "raw.keras")
    (tmp_path / "raw.tflite").write_bytes(b"the last good export")
    assert run_export([f"--model={tmp_path / 'raw.keras'}", "--quantization=int8",
                       "--dataset=mnist5k", "--min_agreement=1.0"]) == 2
    err = capsys.readouterr().err
    assert "agrees with the Keras model on fewer than 100.00%" in err
    assert (tmp_path / "raw.tflite").read_bytes() == b"the last good export"
    assert sorted(os.listdir(tmp_path)) == ["raw.keras", "raw.tflite"]


def test_export_subcommand_clear_errors(tmp_path, capsys):
    (tmp_path / "junk.keras").write_text("not a model")
    inputs = keras.Input((None, None, 1))
    flexible = keras.Model(
        inputs, keras.layers.Dense(10)(keras.layers.GlobalAveragePooling2D()(inputs)))
    flexible.save(tmp_path / "flexible.keras")
    inputs = keras.Input((32, 32, 3))
    keras.Model(inputs, keras.layers.Dense(10)(keras.layers.Flatten()(inputs))).save(
        tmp_path / "rgb.keras")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    cases = [
        ([], "--model is required"),
        ([f"--model={tmp_path / 'nope.keras'}"], "does not exist"),
        ([f"--model={tmp_path / 'junk.keras'}"], "is not a Keras model file"),
        ([f"--model={tmp_path / 'flexible.keras'}"], "is not fully fixed"),
        ([f"--model={tmp_path / 'rgb.keras'}"], "inputs of shape (32, 32, 3)"),
        ([f"--model={tmp_path / 'rgb.keras'}", f"--output={blocker / 's.tflite'}"],
         "cannot create the folder of --output"),
        ([f"--model={tmp_path / 'rgb.keras'}", "--output=s.bin"], "must end in .tflite"),
        ([f"--model={tmp_path / 'rgb.keras'}", "--min_agreement=99"], "fraction in [0, 1]"),
        ([f"--model={tmp_path / 'rgb.keras'}", "--int8_io"], "int8_io needs"),
    ]
    cases = [(a if a == [] else [*a, "--dataset=mnist5k"], m) for a, m in cases]
    cases.append(([f"--model={tmp_path / 'rgb.keras'}"], "--dataset is required"))
    for argv, message in cases:
        assert run_export(argv) == 2, argv
        assert message in capsys.readouterr().err, (argv, message)
    assert not list(tmp_path.glob("*.tflite"))


def test_export_subcommand_from_the_command_line(tmp_path):
    (tmp_path / "junk.keras").write_text("not a model")
    result = subprocess.run(
        [sys.executable, "-m", "keras_kd", "export", f"--model={tmp_path / 'junk.keras'}",
         "--dataset=mnist5k"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert "keras-kd export: error: --model=" in result.stderr
    assert "is not a Keras model file" in result.stderr
    assert "Traceback" not in result.stderr


def test_export_subcommand_help_lists_only_its_flags(capsys):
    with pytest.raises(SystemExit) as exited:
        cli._parse_export_flags(["keras-kd", "export", "--help"])
    assert exited.value.code == 0
    helped = capsys.readouterr().out
    for flag in ("--quantization", "--min_agreement", "--[no]int8_io", "--[no]allow_flex",
                 "--output", "--model", "--dataset", "keras-kd export --model="):
        assert flag in helped, flag
    assert "--teacher_arch" not in helped  # the main job's flags are not export's


def test_export_must_come_first():
    from absl import app

    with pytest.raises(app.UsageError, match="export subcommand comes first"):
        cli.main(["keras-kd", "export"])


def test_features_and_bad_layer_names_from_the_cli(tmp_path, capsys):
    """--features trains hint + attention terms; a wrong layer name stops the job
    before anything trains, naming the near matches."""
    base = [a for a in TINY if not a.startswith("--student_arch")] + [
        "--student_arch=cnn:width=0.125", "--export=false"]
    bad = tmp_path / "bad"
    assert run_cli(base + [f"--output_dir={bad}", "--features=hint:block2_cnv=block2_conv"]) == 2
    assert "block2_conv" in capsys.readouterr().err
    assert not (bad / "teacher.keras").exists()
    out = tmp_path / "ok"
    spec = "hint:block2_conv=block2_conv;attention:block1_relu=block1_relu"
    assert run_cli(base + [f"--output_dir={out}", f"--features={spec}"]) == 0
    history = json.loads((out / "metrics.json").read_text())["distillation_history"]
    assert history["hint_loss"][0] > 0 and history["attention_loss"][0] > 0
    # The projector (8 -> 16 channels) trained with the student is not in it.
    student = keras.saving.load_model(out / "student.keras")
    assert models.count_params(student) == models.count_params(
        models.build("cnn:width=0.125", (28, 28, 1), 10))


def test_teacher_dtype_flag_and_its_conflicts(tmp_path, capsys):
    out = tmp_path / "bf16"
    assert run_cli(TINY + ["--export=false", "--teacher_dtype=bfloat16",
                           f"--output_dir={out}"]) == 0
    assert json.loads((out / "metrics.json").read_text())["config"]["teacher_dtype"] == "bfloat16"
    assert run_cli(TINY + ["--teacher_dtype=bfloat16", "--features=hint:logits=logits",
                           f"--output_dir={tmp_path / 'x'}"]) == 2
    assert "cannot be combined with --features" in capsys.readouterr().err


def test_flags_are_generated_from_the_config_fields():
    """Every JobConfig field is a keras-kd flag with the field's default and help;
    keras-kd sweep has them too (the grid axes as lists), export the data flags."""
    import dataclasses

    from keras_kd import config

    fields = [f for f in dataclasses.fields(config.JobConfig) if f.metadata.get("cli", True)]
    assert len(fields) >= 30
    for field in fields:
        flag = cli.FLAGS[field.name]
        assert flag.help.endswith(field.metadata["help"]), field.name  # enums: "<a|b>: ..."
        default = field.default if field.name != "image_size" else None
        assert flag.default == default, field.name
        assert field.name in cli.SWEEP_FLAGS or field.name in (
            "export", "export_quantization", "min_agreement", "checkpoint_dir"), field.name
    assert cli.SWEEP_FLAGS["temperature"].default == ["1,2,4,8"]  # a list: a grid axis
    assert cli.SWEEP_FLAGS["verbose"].default == 0
    assert set(cli.DATA_FIELDS) <= set(cli.EXPORT_FLAGS) and "epochs" not in cli.EXPORT_FLAGS
    assert set(cli.FLAGS["optimizer"].parser.enum_values) == set(config.OPTIMIZERS)
    # Parsed text becomes the field's type: image_size "32,48" -> (32, 48).
    try:
        cli.FLAGS.unparse_flags()
        cli.FLAGS(["keras-kd", "--image_size=32,48", "--teacher="])
        made = cli.config_from_flags()
    finally:
        cli.FLAGS.unparse_flags()
    assert made.image_size == (32, 48) and made.teacher is None


# ---------------------------------------------------------------- nothing silent, nothing noisy


#: Lines TensorFlow, its converter and LiteRT print about their own workings.
TF_CHATTER = ("signature_serialization", "Assets written", "Using new converter",
              "fully_quantize", "XNNPACK delegate", "cpu_feature_guard", "INFO:tensorflow",
              "Reading SavedModel", "Sharding callback")


def test_the_default_console_has_progress_bars_and_our_lines_only(tmp_path):
    """keras-kd at its default verbosity, exporting (int8 tried first), as a user runs
    it (no TF_CPP_MIN_LOG_LEVEL set): none of TensorFlow's own INFO lines."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "keras_kd", "--epochs=1", "--teacher_epochs=1",
         "--teacher_arch=mlp:hidden=8", "--student_arch=mlp:hidden=8", "--batch_size=256",
         "--min_teacher_accuracy=0", f"--output_dir={out}"],
        capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    said = result.stdout + result.stderr
    for chatter in TF_CHATTER:
        assert chatter not in said, (chatter, result.stderr[-3000:])
    assert "data: mnist5k" in result.stdout and f"wrote {out}/" in result.stdout
    assert "━" in result.stdout  # Keras's progress bars
    tried = json.loads((out / "metrics.json").read_text())["tflite"]["candidates"]
    assert tried[0]["quantization"] == "int8"  # the quantizer ran (and was quiet)
    assert not [n for n in os.listdir(out) if n.startswith(".")]  # no temporary folder


def test_verbose_3_shows_progress_bars_and_tensorflows_own_lines(tmp_path, capfd):
    assert run_cli(TINY + ["--verbose=3", "--export_quantization=int8",
                           f"--output_dir={tmp_path}"]) == 0
    said = capfd.readouterr()
    assert "━" in said.out  # Keras verbose 1 (its 3 shows no progress at all)
    assert "fully_quantize" in said.err  # the int8 quantizer's line, not filtered


def _events(folder):
    """The scalar tags in the TensorBoard event files under ``folder``."""
    import tensorflow as tf

    tags = set()
    for root, _, files in os.walk(folder):
        for name in files:
            if name.startswith("events.out.tfevents"):
                for record in tf.data.TFRecordDataset(os.path.join(root, name)):
                    event = tf.compat.v1.Event.FromString(record.numpy())
                    tags |= {v.tag for v in event.summary.value}
    return tags


def test_tensorboard_writes_event_files_for_every_phase(tmp_path):
    out = tmp_path / "tb"
    assert run_cli(TINY + ["--tensorboard", "--export=false", f"--output_dir={out}"]) == 0
    board = out / "tensorboard"
    assert sorted(os.listdir(board)) == ["baseline", "distill", "teacher"]
    for phase in ("teacher", "baseline", "distill"):
        tags = _events(board / phase)
        assert "epoch_loss" in tags and "epoch_accuracy" in tags, (phase, tags)
    assert "epoch_distillation_loss" in _events(board / "distill")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["tensorboard"] is True
    # Without the flag: no event files.
    plain = tmp_path / "plain"
    assert run_cli(TINY + ["--export=false", f"--output_dir={plain}"]) == 0
    assert not (plain / "tensorboard").exists()


def test_tensorboard_without_the_package_is_a_clear_error(tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "tensorboard" else real(name, *a))
    assert run_cli(TINY + ["--tensorboard", f"--output_dir={tmp_path / 'x'}"]) == 2
    assert "pip install tensorboard" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def _interrupt(saved=()):
    """A job.run that saves ``saved`` into its output folder, then gets Ctrl-C."""
    def run(config, log=print):
        os.makedirs(config.output_dir, exist_ok=True)
        for name in saved:
            (open(os.path.join(config.output_dir, name), "w")).close()
        raise KeyboardInterrupt
    return run


def test_ctrl_c_is_one_line_saying_what_was_kept(tmp_path, capsys, monkeypatch):
    from keras_kd import job

    monkeypatch.setattr(job, "run", _interrupt(["teacher.keras"]))
    out = tmp_path / "out"
    assert run_cli(TINY + [f"--output_dir={out}"]) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("keras-kd: interrupted (Ctrl-C); ")
    assert f"{out} holds teacher.keras" in err
    assert f"--teacher={out / 'teacher.keras'}" in err
    assert "add --checkpoint_dir=DIR next time" in err
    # With --checkpoint_dir: rerunning the same command resumes.
    ckpt = tmp_path / "ckpt"
    assert run_cli(TINY + [f"--output_dir={tmp_path / 'o2'}", f"--checkpoint_dir={ckpt}"]) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"kept in --checkpoint_dir={ckpt}: rerun the same command to resume" in err
    # No --output_dir: the line names the folder the run was writing to.
    monkeypatch.chdir(tmp_path)
    assert run_cli(TINY) == 130
    (made,) = os.listdir(tmp_path / "kd_runs")
    assert f"{os.path.join('kd_runs', made)} holds teacher.keras" in capsys.readouterr().err
    # Nothing saved yet: it says so.
    monkeypatch.setattr(job, "run", _interrupt())
    assert run_cli(TINY + [f"--output_dir={tmp_path / 'o3'}"]) == 130
    assert "; nothing was saved; without --checkpoint_dir" in capsys.readouterr().err


def test_ctrl_c_in_export_and_sweep_is_one_line(tmp_path, capsys, monkeypatch):
    from keras_kd import export, sweep

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(export, "export_saved_model", interrupted)
    assert run_export([f"--model={tmp_path / 'm.keras'}", "--dataset=mnist5k"]) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("keras-kd export: interrupted (Ctrl-C); ")
    assert "rerun the same command" in err
    monkeypatch.setattr(sweep, "run", interrupted)
    cli.SWEEP_FLAGS.unparse_flags()
    cli.SWEEP_FLAGS(["keras-kd", f"--output_dir={tmp_path / 's'}"])
    assert cli.sweep_main(["keras-kd"]) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("keras-kd sweep: interrupted (Ctrl-C); ")
    assert f"--output_dir={tmp_path / 's'} to resume" in err


def test_sigterm_takes_the_ctrl_c_path(tmp_path):
    """A real process stopped by SIGTERM while it runs: no traceback, one line naming
    the checkpoint folder to resume from, exit 143."""
    import signal
    import time

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    ckpt = tmp_path / "ckpt"
    proc = subprocess.Popen(
        [sys.executable, "-m", "keras_kd", "--teacher_epochs=200", "--epochs=1",
         "--teacher_arch=mlp:hidden=8", "--student_arch=mlp:hidden=8", "--batch_size=256",
         "--verbose=2", f"--output_dir={tmp_path / 'out'}", f"--checkpoint_dir={ckpt}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.time() + 240
        while time.time() < deadline:  # the run is under way (its folder is set up)
            if (ckpt / "config.json").exists():
                break
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 143, err[-3000:]
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("keras-kd: stopped (SIGTERM); the finished phases and the last "
                           f"epoch backup are kept in --checkpoint_dir={ckpt}"), last


def test_sigterm_ends_a_process_stuck_outside_python(tmp_path):
    """A main thread blocked in C code never runs Python's SIGTERM handler; the
    watchdog ends the process after the grace period (exit 143, one line)."""
    import signal
    import time

    script = tmp_path / "stuck.py"
    script.write_text(
        "import sqlite3, sys\n"
        "from keras_kd import cli\n"
        "cli.SIGTERM_GRACE_S = 1.0\n"
        "with cli._sigterm_as_interrupt():\n"
        "    print('ready', flush=True)\n"
        "    sqlite3.connect(':memory:').execute(  # minutes in C, no return to Python\n"
        "        'WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c '\n"
        "        'WHERE x < 10000000000) SELECT count(*) FROM c').fetchall()\n")
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143, err[-2000:]
    assert "still running 1 s after SIGTERM" in err
