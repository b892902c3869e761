"""--tune chooses on held-out training data only; --repeats reports honest spreads."""

import json

import numpy as np
import pytest
import tensorflow as tf

from keras_kd import checkpoint, config, distribute, job, report

TINY = dict(teacher_arch="mlp:hidden=16", student_arch="mlp:hidden=8", epochs=1,
            teacher_epochs=1, batch_size=500, augment="none", export=False, verbose=0)


def _poisoned(val):
    """The validation batches, failing the run if anything reads them."""
    def fail(x, y):
        tf.debugging.Assert(False, ["the validation split was read"])
        return x, y
    return val.map(fail)


def test_tune_scores_on_a_held_out_slice_of_the_training_split(tmp_path):
    cfg = job.JobConfig(**TINY, tune="temperature,alpha", tune_epochs=1,
                        output_dir=str(tmp_path / "out"))
    cfg.validate()
    strategy = distribute.get_strategy("auto")
    folder = checkpoint.RunFolder(strategy, cfg.output_dir, None, cfg.resume_settings())
    logs = []
    with distribute.deterministic(0, True):
        run = job.start(cfg, logs.append, strategy, folder)
        members = job.train_teachers(run)
        run.val = _poisoned(run.val)
        found = job.tune(run, members)
    grid = config.TUNE_GRID
    assert [(t["temperature"], t["alpha"]) for t in found["trials"]] == [
        (t, a) for t in grid["temperature"] for a in grid["alpha"]]
    assert found["held_out"] == 800 and found["trained_on"] == 3200
    assert all(t["examples"] == 800 for t in found["trials"])
    best = max(found["trials"], key=lambda t: (t["accuracy"], -t["loss"]))
    assert found["chosen"] == {"temperature": best["temperature"], "alpha": best["alpha"]}
    assert (run.config.temperature, run.config.alpha) == (best["temperature"], best["alpha"])
    assert any(line.startswith("tune: chose") for line in logs)


@pytest.mark.parametrize("tune", ["temperature,temperature", "beta", "temperature;alpha"])
def test_bad_tune_values_name_the_flag(tune):
    with pytest.raises(ValueError, match="--tune"):
        job.JobConfig(tune=tune).validate()
    with pytest.raises(ValueError, match="--tune_epochs"):
        job.JobConfig(tune="alpha", tune_epochs=0).validate()
    with pytest.raises(ValueError, match="--repeats"):
        job.JobConfig(repeats=0).validate()


def test_repeats_first_pair_is_the_single_run_and_the_figures_add_up(tmp_path):
    single = job.run(job.JobConfig(**TINY, output_dir=str(tmp_path / "one")),
                     log=lambda *_: None)
    three = job.run(job.JobConfig(**TINY, repeats=3, output_dir=str(tmp_path / "three")),
                    log=lambda *_: None)
    rows = lambda r: {m["model"]: m["errors"] for m in r["models"]}  # noqa: E731
    assert rows(three) == rows(single)  # pair 1 is the run without --repeats, bit for bit
    rep = three["repeats"]
    assert rep["seeds"] == [0, 1, 2]
    assert rep["baseline_errors"][0] == rows(single)["baseline"]
    assert rep["distilled_errors"][0] == rows(single)["distilled"]
    gain = np.subtract(rep["baseline_errors"], rep["distilled_errors"])
    assert rep["gain"] == gain.tolist()
    assert rep["gain_stats"]["mean"] == pytest.approx(gain.mean())
    assert rep["gain_stats"]["sd"] == pytest.approx(gain.std(ddof=1))
    assert rep["wins"] == int((gain > 0).sum())
    assert rep["gain_exceeds_spread"] == bool(gain.mean() > gain.std(ddof=1))
    saved = json.loads((tmp_path / "three" / "metrics.json").read_text())
    assert saved["repeats"]["summary"] == rep["summary"]
    assert "## Repeats" in (tmp_path / "three" / "report.md").read_text()


def test_repeats_verdict_says_when_the_gain_is_within_the_noise():
    scores = lambda b, d: ({"errors": b}, {"errors": d})  # noqa: E731
    clear = report.repeats(0, [scores(40, 30), scores(42, 31), scores(38, 29)])
    assert clear["gain_exceeds_spread"] and "exceeds its spread" in clear["summary"]
    noisy = report.repeats(5, [scores(40, 30), scores(30, 41), scores(35, 33)])
    assert not noisy["gain_exceeds_spread"] and noisy["outcome"] == "noise"
    assert "does not exceed its spread" in noisy["summary"] and "seeds 5-7" in noisy["summary"]
    assert clear["outcome"] == "gain"


def test_repeats_verdict_says_when_the_teacher_hurts_and_why():
    """A loss larger than its spread is not "noise" (the sklearn digits at 8x8: baseline
    4.3 ± 0.6, distilled 13.7 ± 0.6 errors under a teacher with 11); a teacher no better
    than the baseline is named as the cause, with the fix."""
    scores = lambda b, d: ({"errors": b}, {"errors": d})  # noqa: E731
    pairs = [scores(4, 14), scores(5, 13), scores(4, 14)]
    weak = report.repeats(0, pairs, teacher=11)
    assert weak["outcome"] == "loss" and not weak["gain_exceeds_spread"]
    assert "worse, by more than the spread" in weak["summary"]
    assert "The teacher (11 errors) is no more accurate than the baseline student (4.3)" \
        in weak["summary"] and "--teacher_epochs" in weak["summary"]
    assert "within the run-to-run noise" not in weak["summary"]
    strong = report.repeats(0, pairs, teacher=2)  # a good teacher that still hurt
    assert strong["outcome"] == "loss" and "no more accurate" not in strong["summary"]
    assert "--patient" in strong["summary"]
    # one run: the same reason in its verdict
    rows = [{"model": "teacher", "errors": 30}, {"model": "baseline", "errors": 20},
            {"model": "distilled", "errors": 25}]
    assert "The teacher (30 errors) is no more accurate than the baseline student (20)" \
        in report.verdict(rows)
    rows[0]["errors"] = 10
    assert "no more accurate" not in report.verdict(rows) and "--patient" in report.verdict(rows)
    assert report.teacher_errors([{"model": "a", "errors": 3}, {"model": "ensemble", "errors": 2},
                                  *rows[1:]]) == 2


def test_patient_and_budget_set_the_students_schedule():
    cfg = job.JobConfig(epochs=10, alpha=0.7, augment="jitter")
    assert cfg.effective(63) == cfg  # neither flag: unchanged
    assert cfg.effective(63).epochs == 10
    budget = job.JobConfig(epochs=10, budget=1000).effective(63)
    assert budget.epochs == 16  # ceil(1000 / 63) whole epochs
    patient = job.JobConfig(epochs=10, alpha=0.7, augment="jitter", patient=True).effective(63)
    assert (patient.epochs, patient.alpha) == (10 * config.PATIENCE, 1.0)
    assert patient.augment == "jitter+mixup" and job.teacher_augment(patient) == "jitter"
    assert job.JobConfig(augment="none", patient=True).effective(9).augment == "mixup"
    kept = job.JobConfig(augment="flip_crop+mixup:alpha=1", patient=True).effective(9)
    assert kept.augment == "flip_crop+mixup:alpha=1"  # mixup already there
    both = job.JobConfig(epochs=10, budget=100, patient=True).effective(63)
    assert both.epochs == 2 * config.PATIENCE
    with pytest.raises(ValueError, match="--budget"):
        job.JobConfig(budget=0).validate()
