"""keras-kd sweep: a 2×2 grid end to end at tiny size, resume, errors."""

import json
import os
import re
import shutil

import keras
import numpy as np
import pytest

from keras_kd import Distiller, cli, data, diagnostics, distribute, epochs, job, models, sweep

TINY = [
    "--temperature=1,4",
    "--alpha=0.5,0.9",
    "--student_arch=mlp:hidden=8",
    "--teacher_arch=mlp:hidden=32",
    "--teacher_epochs=1",
    "--epochs=1",
    "--batch_size=128",
    "--augment=none",
]
PNG = b"\x89PNG\r\n\x1a\n"


def run_sweep(argv):
    """``keras-kd sweep`` with TINY's flags, overridden by any of the same name in argv."""
    names = {a.split("=")[0] for a in argv}
    cli.SWEEP_FLAGS.unparse_flags()
    cli.SWEEP_FLAGS(["keras-kd"] + [a for a in TINY if a.split("=")[0] not in names] + list(argv))
    return cli.sweep_main(["keras-kd"])


def count_trials(monkeypatch, fail_at=None):
    """Records the grid point of every trial trained; optionally fails one."""
    calls = []
    real = sweep.train_trial

    def counted(state, teacher, values, *args, **kwargs):
        calls.append(dict(values))
        if len(calls) == fail_at:
            raise RuntimeError("simulated crash")
        return real(state, teacher, values, *args, **kwargs)

    monkeypatch.setattr(sweep, "train_trial", counted)
    return calls


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    with pytest.MonkeyPatch.context() as mp:
        calls = count_trials(mp)
        assert run_sweep([f"--output_dir={out}"]) == 0
    assert len(calls) == 4
    with open(out / "sweep.json") as f:
        return out, json.load(f)


def table_rows(markdown):
    """The rows of sweep.md's ranked table as dicts."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| rank |"))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(header, (c.strip() for c in line.strip("|").split("|")))))
    return header, rows


def trial_file(out, trial_id, suffix=".keras"):
    return out / "trials" / f"{trial_id}{suffix}"


def test_sweep_writes_every_output(swept):
    out, _ = swept
    names = set(os.listdir(out))
    assert {"sweep.md", "sweep.json", "best.flags", "best_student.keras", "teacher.keras",
            "accuracy_vs_temperature.png", "best_curves.png", "trials", "teacher_cache",
            "baselines", "config.json", "run.token", "teacher.keras.sha256"} <= names
    assert not [n for n in names if n.startswith(".")]  # no temporary files left
    assert not [n for n in names if n.endswith("_backup")]  # backups dropped when done
    # A student (and its sha256), a result and a history per trial; no Distiller (teacher).
    phase = (".keras", ".keras.sha256", ".json", "_history.csv")
    assert sorted(os.listdir(out / "trials")) == sorted(
        f"{i:04d}{s}" for i in range(4) for s in phase)
    assert sorted(os.listdir(out / "baselines")) == sorted(f"0{s}" for s in phase)


def test_sweep_md_is_sorted_by_validation_accuracy(swept):
    out, results = swept
    text = (out / "sweep.md").read_text()
    header, rows = table_rows(text)
    assert header == ["rank", "temperature", "alpha", "loss", "student arch", "val accuracy",
                      "val loss", "teacher agreement", "epochs", "time"]
    assert [r["rank"] for r in rows] == ["1", "2", "3", "4"]
    acc = [float(r["val accuracy"].rstrip("%")) for r in rows]
    assert acc == sorted(acc, reverse=True)
    assert {(r["temperature"], r["alpha"]) for r in rows} == {
        ("1", "0.5"), ("1", "0.9"), ("4", "0.5"), ("4", "0.9")}
    assert all(r["loss"] == "kl" and r["student arch"] == "mlp:hidden=8" and r["epochs"] == "1"
               for r in rows)
    assert "| teacher |" in text and "| baseline |" in text
    teacher = results["teacher"]
    assert f"{100 * teacher['val_accuracy']:.2f}%" in text
    assert "computed once (`teacher_cache/`)" in text  # augment none: offline
    assert results["teacher_cache"]["used"] and results["teacher_cache"]["status"] == "built"


def test_recorded_accuracy_is_the_students(swept):
    out, results = swept
    (_, _), (x_val, y_val), _ = data.load_arrays("mnist5k")
    _, val, info = data.load("mnist5k", batch_size=128)
    teacher = keras.saving.load_model(out / "teacher.keras")
    teacher_pred = teacher.predict(x_val, verbose=0).argmax(-1)
    assert results["teacher"]["val_accuracy"] == diagnostics.evaluate(teacher, val)["accuracy"]
    assert len(results["rows"]) == 4 and [r["rank"] for r in results["rows"]] == [1, 2, 3, 4]
    for row in results["rows"]:
        student = keras.saving.load_model(trial_file(out, row["trial_id"]))
        assert row["val_accuracy"] == diagnostics.evaluate(student, val)["accuracy"]
        pred = student.predict(x_val, verbose=0).argmax(-1)
        assert row["teacher_agreement"] == pytest.approx(np.mean(pred == teacher_pred), abs=1e-9)
        assert row["history"]["val_accuracy"][-1] == pytest.approx(row["val_accuracy"], abs=1e-6)
    best = keras.saving.load_model(out / "best_student.keras")
    top = results["rows"][0]
    assert diagnostics.evaluate(best, val)["accuracy"] == top["val_accuracy"] == results["best"][
        "val_accuracy"]
    assert "history" not in results["best"]
    assert set(results["baselines"]) == {"mlp:hidden=8"}


def test_a_trial_equals_an_independent_distiller_fit(swept):
    """The trial's student is what Distiller.fit gives with the same config.

    Independent path: online distillation (the sweep trained from the cache),
    the run's stream (keras_kd.epochs), models.build(seed + 1), Keras's CosineDecay
    with a 5 % warm-up, distribute.deterministic(seed).
    """
    out, results = swept
    row = next(r for r in results["rows"] if r["temperature"] == 4.0 and r["alpha"] == 0.5)
    seed = 0
    with distribute.deterministic(seed):
        keras.utils.set_random_seed(seed)
        examples, val, info = data.load_unbatched("mnist5k")
        val = val.batch(128)
        train = epochs.Epochs(examples, batch_size=128, seed=seed)
        teacher = keras.saving.load_model(out / "teacher.keras")
        student = models.build("mlp:hidden=8", info.input_shape, info.num_classes, seed=seed + 1)
        distiller = Distiller(teacher, student, temperature=4.0, alpha=0.5)
        steps = train.steps  # one epoch: 32 steps, the first 2 (5 %) warming up
        schedule = keras.optimizers.schedules.CosineDecay(
            0.0, steps - 2, warmup_target=2e-3, warmup_steps=2)
        distiller.compile(optimizer=keras.optimizers.Adam(schedule), metrics=["accuracy"])
        distiller.fit(train.batches(0, 1), epochs=1, steps_per_epoch=steps, verbose=0)
    swept_student = keras.saving.load_model(trial_file(out, row["trial_id"]))
    for a, b in zip(student.get_weights(), swept_student.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4)
    assert abs(diagnostics.evaluate(student, val)["accuracy"] - row["val_accuracy"]) <= 0.002


def test_best_flags_is_a_main_cli_flagfile(swept):
    out, results = swept
    top = results["rows"][0]
    try:
        cli.FLAGS.unparse_flags()
        cli.FLAGS(["keras-kd", f"--flagfile={out / 'best.flags'}"])
        config = cli.config_from_flags()
    finally:
        cli.FLAGS.unparse_flags()
    config.validate()
    assert (config.temperature, config.alpha) == (top["temperature"], top["alpha"])
    assert config.distillation_loss == top["distillation_loss"] == "kl"
    assert config.student_arch == top["student_arch"] == "mlp:hidden=8"
    assert config.teacher == str(out / "teacher.keras") and os.path.isfile(config.teacher)
    assert (config.epochs, config.batch_size, config.augment) == (1, 128, "none")


def test_plots_are_png_files(swept):
    out, _ = swept
    for name in ("accuracy_vs_temperature.png", "best_curves.png"):
        content = (out / name).read_bytes()
        assert content.startswith(PNG) and len(content) > 5000, name


def test_rerun_trains_nothing(swept, monkeypatch, capsys):
    out, results = swept
    calls = count_trials(monkeypatch)
    assert run_sweep([f"--output_dir={out}"]) == 0
    assert calls == []
    with open(out / "sweep.json") as f:
        again = json.load(f)
    assert [r["val_accuracy"] for r in again["rows"]] == [r["val_accuracy"] for r in results["rows"]]
    assert again["timings"]["trials_trained_now"] == 0
    log = capsys.readouterr().out
    assert "resuming" in log and "4 of 4 trials already done" in log
    assert "teacher: loaded" in log and "teacher cache: loaded" in log


def test_a_deleted_result_is_the_only_trial_rerun(swept, monkeypatch, tmp_path):
    out, results = swept
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    row = results["rows"][2]
    os.remove(trial_file(copy, row["trial_id"], ".json"))
    calls = count_trials(monkeypatch)
    assert run_sweep([f"--output_dir={copy}"]) == 0
    assert calls == [row["values"]]
    with open(copy / "sweep.json") as f:
        again = json.load(f)
    assert [(r["trial_id"], r["val_accuracy"]) for r in again["rows"]] == [
        (r["trial_id"], r["val_accuracy"]) for r in results["rows"]]
    stored = json.loads(trial_file(copy, row["trial_id"], ".json").read_text())
    assert stored["val_accuracy"] == row["val_accuracy"] and stored["values"] == row["values"]


def test_a_crash_mid_sweep_resumes_with_the_missing_trials(swept, monkeypatch, tmp_path, capsys):
    out, results = swept
    argv = [f"--teacher={out / 'teacher.keras'}", "--nobaseline",
                   f"--output_dir={tmp_path / 'crash'}"]
    calls = count_trials(monkeypatch, fail_at=2)
    assert run_sweep(argv) == 2
    err = capsys.readouterr().err
    assert re.search(r"trial 0001 \(T=1, alpha=0.9, .*\) failed: simulated crash", err)
    assert "rerun the same command to resume" in err
    assert len(calls) == 2

    calls = count_trials(monkeypatch)
    assert run_sweep(argv) == 0
    # the interrupted trial and the two never started; not the finished one
    assert calls == [{"temperature": t, "alpha": a, "distillation_loss": "kl",
                      "student_arch": "mlp:hidden=8"} for t, a in ((1.0, 0.9), (4.0, 0.5),
                                                                   (4.0, 0.9))]
    with open(tmp_path / "crash" / "sweep.json") as f:
        resumed = json.load(f)
    # same teacher, same data order, same initial weights: the same results
    assert [(r["values"], r["val_accuracy"]) for r in resumed["rows"]] == [
        (r["values"], r["val_accuracy"]) for r in results["rows"]]
    assert resumed["baselines"] == {} and resumed["teacher"]["source"] == "loaded"


def test_other_settings_in_the_same_folder_are_refused(swept, capsys):
    out, _ = swept
    assert run_sweep(["--epochs=2", f"--output_dir={out}"]) == 2
    assert "holds a sweep with other settings (epochs differ)" in capsys.readouterr().err
    assert run_sweep(["--temperature=1,2", f"--output_dir={out}"]) == 2
    assert "(temperature differ)" in capsys.readouterr().err


def test_a_folder_holding_no_sweep_is_refused_and_a_failed_sweep_leaves_none(tmp_path, capsys):
    other = tmp_path / "job"
    other.mkdir()
    (other / "student.tflite").write_bytes(b"a main job's output")
    assert run_sweep([f"--output_dir={other}"]) == 2
    err = capsys.readouterr().err
    assert f"--output_dir='{other}' is not empty" in err and "made itself" in err
    assert os.listdir(other) == ["student.tflite"]
    (tmp_path / "junk.keras").write_text("not a model")
    new = tmp_path / "new"
    assert run_sweep([f"--teacher={tmp_path / 'junk.keras'}", f"--output_dir={new}"]) == 2
    assert "is not a Keras model file" in capsys.readouterr().err
    assert not new.exists()  # created by the failed sweep, nothing in it but its settings


BAD_GRIDS = [
    (["--temperature="], "--temperature is empty"),
    (["--alpha=0.5,,0.9"], "--alpha has an empty item"),
    (["--temperature=1,x"], "'x' is not a number"),
    (["--temperature=2,0"], "--temperature must be a finite number > 0, got 0.0"),
    (["--temperature=-1"], "--temperature must be a finite number > 0"),
    (["--alpha=0.5,1.5"], "--alpha must be in [0, 1], got 1.5"),
    (["--distillation_loss=kl,kld"], "Valid names: "),
    (["--student_arch=mlp:hidden=8,cnn:depth=3"], "Unknown option 'depth'"),
    (["--student_arch=transformer"], "Unknown architecture 'transformer'"),
    (["--temperature=1,2,1.0"], "--temperature lists 1.0 twice"),
    (["--distillation_loss=kl,KL"], "--distillation_loss lists 'kl' twice"),
    (["--student_arch=mlp:hidden=8", "--student_arch=mlp:hidden=8"],
     "--student_arch lists 'mlp:hidden=8' twice"),
    (["--epochs=0"], "--epochs must be at least 1"),
    (["--teacher=/nope/t.keras"], "does not exist"),
    (["stray"], "unexpected arguments ['stray']"),
]


def test_bad_grids_exit_2_with_one_line(tmp_path, capsys):
    # one test for all cases: each is a flag check, no training
    out = tmp_path / "never"
    for argv, message in BAD_GRIDS:
        if argv == ["stray"]:
            cli.SWEEP_FLAGS.unparse_flags()
            cli.SWEEP_FLAGS(["keras-kd", f"--output_dir={out}"])
            assert cli.sweep_main(["keras-kd", "stray"]) == 2
        else:
            assert run_sweep(argv + [f"--output_dir={out}"]) == 2, argv
        err = capsys.readouterr().err
        assert message in err and err.startswith("keras-kd sweep: error: "), (argv, err)
        assert err.count("\n") == 1, err
        assert not out.exists(), argv


def test_a_feature_sweep_checks_each_student_and_trains(tmp_path):
    out = tmp_path / "features"
    assert run_sweep(["--teacher_arch=cnn:width=0.25", "--temperature=4", "--alpha=0.5",
                      "--student_arch=cnn:width=0.125", "--nobaseline",
                      "--features=hint:block2_conv=block2_conv", f"--output_dir={out}"]) == 0
    row = json.loads((out / "sweep.json").read_text())["rows"][0]
    assert row["history"]["hint_loss"][0] > 0
    assert json.loads((out / "sweep.json").read_text())["teacher_cache"]["used"] is False
    # An architecture of the grid without the layer: refused before the teacher trains.
    bad = tmp_path / "bad"
    assert run_sweep(["--teacher_arch=cnn:width=0.25", "--student_arch=cnn:width=0.125,mlp",
                      "--features=hint:block2_conv=block2_conv", f"--output_dir={bad}"]) == 2
    assert not (bad / "teacher.keras").exists()


def test_arch_lists_keep_their_options():
    assert sweep.parse_list("student_arch", [
        "mlp:hidden=400x400,dropout=0.2,cnn:width=0.25", "cnn", "mlp"]) == [
        "mlp:hidden=400x400,dropout=0.2", "cnn:width=0.25", "cnn", "mlp"]
    assert sweep.parse_list("temperature", ["1,2", "4"]) == [1.0, 2.0, 4.0]
    assert sweep.parse_list("distillation_loss", "kl, dkd") == ["kl", "dkd"]


def test_the_grid_is_walked_in_order_and_checked_by_the_job():
    config = job.JobConfig(temperature=2.0)
    grid = sweep.check_grid(config, {"alpha": [0.5, "0.9"], "temperature": ["1", 4]})
    assert list(grid) == list(sweep.GRID_FLAGS)  # axes in GRID_FLAGS order, left out: the config's
    assert grid == {"temperature": [1.0, 4.0], "alpha": [0.5, 0.9],
                    "distillation_loss": ["kl"], "student_arch": [config.student_arch]}
    assert [(p["temperature"], p["alpha"]) for p in sweep.points(grid)] == [
        (1.0, 0.5), (1.0, 0.9), (4.0, 0.5), (4.0, 0.9)]
    with pytest.raises(ValueError, match="--temperature must be a finite number > 0"):
        sweep.check_grid(config, {"temperature": [1, -1]})  # the job's own rule and text
    with pytest.raises(ValueError, match="unknown grid axes \\['epochs'\\]"):
        sweep.check_grid(config, {"epochs": [1, 2]})
