"""A run folder holds one run: reuse is refused, a checkpointed run resumes into its own
output folder, and a failed run removes the empty folders it created."""

import json
import os
import shutil
import sys

import pytest
import tensorflow as tf

from keras_kd import distribute, job
from keras_kd.checkpoint import RunFolder

TINY = dict(teacher_arch="mlp:hidden=16", student_arch="mlp:hidden=8", epochs=1,
            teacher_epochs=1, batch_size=500, augment="none", export=False, verbose=0)
SWEEP = dict(kind="sweep", flag="--output_dir")


def _folder(out, ckpt=None, **words):
    return RunFolder(tf.distribute.get_strategy(), out, ckpt, {"epochs": 1}, **words)


def _quiet(*_):
    pass


def test_a_second_run_into_the_same_output_dir_exits_2_and_changes_nothing(tmp_path, capsys):
    from test_cli import TINY as CLI_TINY
    from test_cli import run_cli

    out = tmp_path / "out"
    job.run(job.JobConfig(**TINY, output_dir=str(out)), log=_quiet)
    before = {name: (out / name).read_bytes() for name in os.listdir(out)}
    assert run_cli(CLI_TINY + ["--export=false", f"--output_dir={out}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith(f"keras-kd: error: --output_dir='{out}' is not empty: it holds "
                          "another run's files (baseline.keras, metrics.json, ")
    assert "Fix: pass a new --output_dir" in err and f"or delete '{out}'" in err
    assert {name: (out / name).read_bytes() for name in os.listdir(out)} == before


def test_a_checkpointed_run_resumes_into_its_own_output_folder_only(tmp_path):
    a, c, d = tmp_path / "a", tmp_path / "c", tmp_path / "d"
    _folder(a, c)
    (a / "teacher.keras").write_text("a result")
    marker = json.loads((a / "checkpoint.json").read_text())
    assert marker == {"checkpoint_dir": str(c), "run_token": (c / "run.token").read_text().strip()}
    _folder(a, c)  # the same run, resumed: it may write its own output folder
    with pytest.raises(ValueError, match=rf"--output_dir='{a}' is not empty.*they belong to the "
                                         rf"run checkpointed in '{c}', not to the one in "
                                         rf"--checkpoint_dir='{d}'.*--checkpoint_dir='{c}' to "
                                         "resume the run that wrote it"):
        _folder(a, d)
    assert not d.exists()  # refused before anything was written
    with pytest.raises(ValueError, match=rf"belong to the run checkpointed in '{c}'"):
        _folder(a)
    _folder(tmp_path / "b", c)  # the same checkpoint may also write a new output folder
    _folder(a, c)  # ... and still its first one
    shutil.rmtree(c)  # a checkpoint folder made again is another run
    with pytest.raises(ValueError, match=rf"earlier run checkpointed in '{c}' \(its run.token"):
        _folder(a, c)


def test_checkpoint_folder_inside_or_equal_to_the_output_folder(tmp_path):
    x = tmp_path / "x"
    _folder(x, x / "ckpt")
    (x / "student.keras").write_text("a result")
    _folder(x, x / "ckpt")  # resumed
    (tmp_path / "y" / "ckpt").mkdir(parents=True)  # y holds only the checkpoint folder
    _folder(tmp_path / "y", tmp_path / "y" / "ckpt")
    s = tmp_path / "sweep"  # a sweep's output folder is its checkpoint folder
    _folder(s, s, **SWEEP)
    (s / "sweep.json").write_text("{}")
    _folder(s, s, **SWEEP)  # the same command again: it resumes
    assert not (s / "checkpoint.json").exists()
    plain = tmp_path / "plain"
    _folder(plain)
    (plain / "metrics.json").write_text("{}")
    with pytest.raises(ValueError, match=r"no sweep checkpointed in --output_dir='.*plain' wrote "
                                         r"them.*\(a sweep resumes only in a folder it made"):
        _folder(plain, plain, **SWEEP)


def test_each_worker_checks_its_own_folder(tmp_path, monkeypatch):
    out = tmp_path / "out"
    (out / "worker-1").mkdir(parents=True)
    (out / "worker-1" / "metrics.json").write_text("{}")
    with pytest.raises(ValueError, match=r"is not empty: it holds another run's files \(worker-1"):
        _folder(out)  # one process: worker-1 is an earlier run's
    monkeypatch.setattr(distribute, "is_multi_worker", lambda strategy: True)
    monkeypatch.setattr(distribute, "is_chief", lambda strategy: True)
    assert _folder(out).out == str(out)  # the chief: the workers' folders are theirs
    monkeypatch.setattr(distribute, "is_chief", lambda strategy: False)
    monkeypatch.setattr(distribute, "worker_index", lambda strategy: 1)
    with pytest.raises(ValueError, match=rf"--output_dir='{out / 'worker-1'}' is not empty"):
        _folder(out)
    monkeypatch.setattr(distribute, "worker_index", lambda strategy: 2)
    assert _folder(out).out == str(out / "worker-2")


def test_the_default_output_dir_is_always_fresh(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first = _folder(None)
    (tmp_path / first.out / "metrics.json").write_text("{}")
    second = _folder(None)
    assert first.out != second.out and os.path.dirname(second.out) == "kd_runs"


def test_a_failed_run_removes_only_the_empty_folders_it_created(tmp_path, monkeypatch):
    junk = tmp_path / "junk.keras"
    junk.write_text("not a model")
    out, ckpt = tmp_path / "out", tmp_path / "ckpt"
    with pytest.raises(ValueError, match="is not a Keras model file"):
        job.run(job.JobConfig(**TINY, teacher=str(junk), output_dir=str(out),
                              checkpoint_dir=str(ckpt)), log=_quiet)
    assert not out.exists() and not ckpt.exists()
    kept = tmp_path / "kept"
    kept.mkdir()  # made before the run: never removed
    with pytest.raises(ValueError, match="is not a Keras model file"):
        job.run(job.JobConfig(**TINY, teacher=str(junk), output_dir=str(kept)), log=_quiet)
    assert os.listdir(kept) == []

    def crash(*args, **kwargs):
        raise RuntimeError("simulated crash")

    # --checkpoint_dir equal to --output_dir: a crash after the teacher is saved keeps it
    config = job.JobConfig(**TINY, output_dir=str(out), checkpoint_dir=str(out))
    with monkeypatch.context() as patch:
        patch.setattr(job, "check_teachers", crash)
        with pytest.raises(RuntimeError, match="simulated crash"):
            job.run(config, log=_quiet)
    assert {"teacher.keras", "teacher.keras.sha256", "config.json"} <= set(os.listdir(out))
    lines = []
    job.run(config, log=lines.append)  # the same command resumes into its own folder
    assert "teacher: loaded" in "\n".join(lines)
    lines.clear()
    job.run(config, log=lines.append)  # every phase's file still matches its checksum
    text = "\n".join(lines)
    assert "baseline: loaded" in text and "distill: loaded" in text


def test_the_payoff_benchmark_can_be_rerun_into_its_out_folder(tmp_path, monkeypatch):
    from benchmarks import payoff

    argv = ["payoff", "--datasets=mnist5k", "--seeds=0", "--teacher_arch=mlp:hidden=16",
            "--teacher_epochs=1", "--students=mlp:hidden=8", "--epochs=1",
            "--schedules=constant", "--augment=none", "--configs=3,0.7", f"--out={tmp_path}"]
    monkeypatch.setattr(sys, "argv", argv)
    payoff.main()
    payoff.main()  # resumes: the row is there, the teacher is reused
    assert len((tmp_path / "payoff.jsonl").read_text().splitlines()) == 1
    assert len(os.listdir(tmp_path / "runs" / "mnist5k_s0")) == 2  # a fresh folder each
