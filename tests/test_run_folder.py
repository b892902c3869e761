"""A run folder holds one run: reuse is refused, a checkpointed run resumes into its own
output folder, and a failed run removes the empty folders it created."""

import dataclasses
import json
import os
import shutil
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_kd import _io, checkpoint, distribute, job
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


def _workers(monkeypatch, chief=True, index=0, others=()):
    """This process as one worker of a multi-worker run (no cluster): ``others`` are the
    rows ``[refused, chief, index]`` the other workers contribute to the verdict gather."""
    gathered = []

    def gather(strategy, values):
        gathered.append(list(values))
        return np.array([[int(v) for v in values], *others], dtype=np.int64)

    monkeypatch.setattr(distribute, "is_multi_worker", lambda strategy: True)
    monkeypatch.setattr(distribute, "is_chief", lambda strategy: chief)
    monkeypatch.setattr(distribute, "worker_index", lambda strategy: index)
    monkeypatch.setattr(distribute, "gather_from_workers", gather)
    return gathered


def test_each_worker_checks_its_own_folder(tmp_path, monkeypatch):
    out = tmp_path / "out"
    (out / "worker-1").mkdir(parents=True)
    (out / "worker-1" / "metrics.json").write_text("{}")
    with pytest.raises(ValueError, match=r"is not empty: it holds another run's files \(worker-1"):
        _folder(out)  # one process: worker-1 is an earlier run's
    _workers(monkeypatch)
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


def test_a_failed_run_undoes_its_bookkeeping_in_folders_that_existed(tmp_path):
    """A run failing before any result leaves folders that existed before it as they
    were, so the corrected command (other settings) runs; where something of value was
    written, the marker and the checkpoint it names stay together (the same command
    resumes)."""
    strategy = tf.distribute.get_strategy()
    junk = tmp_path / "junk.keras"
    junk.write_text("not a model")
    out = tmp_path / "out"
    out.mkdir()  # made before the run, checkpoint folder inside it
    bad = job.JobConfig(**TINY, teacher=str(junk), output_dir=str(out),
                        checkpoint_dir=str(out / "ckpt"))
    with pytest.raises(ValueError, match="is not a Keras model file"):
        job.run(bad, log=_quiet)
    assert os.listdir(out) == []
    fixed = dataclasses.replace(bad, teacher=None)  # the corrected command is not refused
    RunFolder(strategy, out, out / "ckpt", fixed.resume_settings())
    ckpt, fresh = tmp_path / "ckpt", tmp_path / "fresh"
    ckpt.mkdir()  # an empty checkpoint folder made before the run
    with pytest.raises(RuntimeError, match="bad --teacher"), \
            RunFolder(strategy, fresh, ckpt, {"teacher": "bad.keras"}):
        raise RuntimeError("bad --teacher")
    assert os.listdir(ckpt) == [] and not fresh.exists()
    RunFolder(strategy, fresh, ckpt, {"teacher": "good.keras"})  # other settings: not refused
    kept, c = tmp_path / "kept", tmp_path / "c"
    kept.mkdir()
    with pytest.raises(RuntimeError, match="crash"), _folder(kept, c):
        (kept / "teacher.keras").write_text("a result")  # e.g. a --teacher file's copy
        raise RuntimeError("crash")
    assert sorted(os.listdir(kept)) == ["checkpoint.json", "teacher.keras"]
    assert sorted(os.listdir(c)) == ["config.json", "run.token"]
    _folder(kept, c)  # the same command resumes into its folder


def test_folders_an_operating_system_made_are_empty(tmp_path):
    mount = tmp_path / "mnt"
    (mount / "lost+found").mkdir(parents=True)  # a fresh file system's mount point
    for name in (".DS_Store", "Thumbs.db"):
        (mount / name).write_text("")
    assert _folder(mount).out == str(mount)
    with pytest.raises(RuntimeError), _folder(mount, mount / "ckpt"):
        raise RuntimeError("failed")
    assert sorted(os.listdir(mount)) == [".DS_Store", "Thumbs.db", "lost+found"]
    (mount / "metrics.json").write_text("{}")
    with pytest.raises(ValueError, match=r"holds another run's files \(metrics.json\)\."):
        _folder(mount)


def test_one_workers_refusal_stops_every_worker(tmp_path, monkeypatch):
    """The output-folder verdicts are gathered (a collective every worker reaches), so a
    refusal on one worker is an error on all, never a hang in the next collective."""
    out, ckpt = tmp_path / "out", tmp_path / "ckpt"
    gathered = _workers(monkeypatch, others=[[1, 0, 1]])  # worker 1 refuses its folder
    for checkpoint_dir in (None, ckpt):
        with pytest.raises(ValueError, match=r"^worker 1's --output_dir is not empty.*Fix: see "
                                             "that worker's error, then rerun every worker"):
            _folder(out, checkpoint_dir)
    assert gathered == [[0, 1, 0]] * 2 and not out.exists() and not ckpt.exists()
    out.mkdir()
    (out / "metrics.json").write_text("{}")
    gathered.clear()
    with pytest.raises(ValueError, match=rf"^--output_dir='{out}' is not empty"):
        _folder(out)  # its own refusal: still at the collective first
    assert gathered == [[1, 1, 0]]
    _workers(monkeypatch, chief=False, index=2, others=[[1, 1, 0]])
    with pytest.raises(ValueError, match=r"^the chief's --output_dir is not empty"):
        _folder(tmp_path / "other")


def test_a_restart_without_checkpoint_says_how_to_go_on(tmp_path, monkeypatch):
    """A restarted worker (same command) without --checkpoint_dir starts over: a folder its
    first attempt wrote is refused, with what to do instead."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "teacher.keras").write_text("the first attempt's")
    _workers(monkeypatch)
    monkeypatch.setenv(distribute.RESTARTS_ENV, "1")
    with pytest.raises(ValueError, match=r"restarted after another worker stopped.*Fix: rerun "
                                         r"every worker with a new --output_dir .*pass "
                                         "--checkpoint_dir so that a restart resumes"):
        _folder(out)
    lost = tf.errors.UnavailableError(None, None, "Socket closed")
    strategy = tf.distribute.get_strategy()
    message = str(checkpoint.as_user_error(lost, strategy, None))
    assert "Fix: restart every worker with a new --output_dir" in message
    assert "pass --checkpoint_dir so that a next restart resumes" in message
    message = str(checkpoint.as_user_error(lost, strategy, "--checkpoint_dir"))
    assert "with its same command; it resumes from the last epoch backup" in message


def test_a_chief_keeping_its_finished_phase_still_joins_the_save(tmp_path, monkeypatch):
    """A sweep's output folder is its checkpoint: the chief keeps <name>.keras as it is, but
    under multi-worker training the others save (a collective), so it saves to scratch."""
    s = tmp_path / "sweep"
    folder = _folder(s, s, **SWEEP)
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    folder.mark_done("teacher", model)
    before = (s / "teacher.keras").read_bytes()
    saves, save = [], _io.save_model
    monkeypatch.setattr(_io, "save_model", lambda m, path: save(m, saves.append(path) or path))
    assert folder.save_output(model, "teacher") == str(s / "teacher.keras") and saves == []
    monkeypatch.setattr(distribute, "is_multi_worker", lambda strategy: True)
    assert folder.save_output(model, "teacher") == str(s / "teacher.keras")
    assert len(saves) == 1 and not os.path.exists(saves[0])  # saved to scratch, then removed
    assert (s / "teacher.keras").read_bytes() == before and folder.finished("teacher")


def test_start_over_fixes_name_the_output_folder_too(tmp_path):
    """Following a refused checkpoint's fix does not lead to a second refusal: with an output
    folder of its own, the fix names it too (its checkpoint.json names the old checkpoint)."""
    out, ckpt, new = tmp_path / "out", tmp_path / "ckpt", tmp_path / "new"
    _folder(out, ckpt)
    (out / "student.keras").write_text("a result")
    strategy = tf.distribute.get_strategy()
    with pytest.raises(ValueError, match=rf"other settings.*Fix: use a new --checkpoint_dir and "
                                         rf"a new --output_dir, or delete '{ckpt}' and '{out}' "
                                         "to start over"):
        RunFolder(strategy, out, ckpt, {"epochs": 2})
    with pytest.raises(ValueError, match=rf"--output_dir='{out}' is not empty"):
        RunFolder(strategy, out, new, {"epochs": 2})  # why the output folder must change too
    RunFolder(strategy, tmp_path / "out2", new, {"epochs": 2})
    (ckpt / "run.token").write_text("garbled")
    with pytest.raises(checkpoint.CorruptCheckpointError, match=rf"Fix: use a new --checkpoint_dir "
                                                                rf"and a new --output_dir, or "
                                                                rf"delete '{ckpt}' and '{out}'"):
        _folder(out, ckpt)
    x = tmp_path / "x"
    _folder(x, x / "ckpt")
    with pytest.raises(ValueError, match=rf"or delete '{x}' \(the checkpoint folder inside it "
                                         r"too\) to start over"):
        RunFolder(strategy, x, x / "ckpt", {"epochs": 2})
    _folder(tmp_path / "s", tmp_path / "s", **SWEEP)
    with pytest.raises(ValueError, match=r"Fix: use a new --output_dir, or delete '.*s' to start "
                                         r"over\.$"):  # a sweep: one folder
        RunFolder(strategy, tmp_path / "s", tmp_path / "s", {"epochs": 2}, **SWEEP)


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


def test_the_payoff_benchmark_takes_a_stored_teacher_for_every_seed(tmp_path, monkeypatch):
    """``--teacher_file`` (e.g. a teacher assistant): that model teaches, under its label."""
    from benchmarks import payoff

    common = ["--datasets=mnist5k", "--teacher_arch=mlp:hidden=16", "--teacher_epochs=1",
              "--students=mlp:hidden=8", "--epochs=1", "--schedules=constant",
              "--augment=none", "--configs=3,0.7", f"--out={tmp_path}"]
    monkeypatch.setattr(sys, "argv", ["payoff", "--seeds=0", *common])
    payoff.main()  # trains and stores seed 0's teacher
    stored = tmp_path / "teachers" / "mnist5k_mlp_hidden=16_e1_s0.keras"
    assert stored.exists()
    monkeypatch.setattr(sys, "argv", ["payoff", "--seeds=1", f"--teacher_file={stored}",
                                      "--teacher_label=assistant", *common])
    payoff.main()
    rows = [json.loads(line) for line in (tmp_path / "payoff.jsonl").read_text().splitlines()]
    assert [r["teacher_arch"] for r in rows] == ["mlp:hidden=16", "assistant"]
    assert rows[1]["seed"] == 1 and rows[1]["teacher_errors"] == rows[0]["teacher_errors"]
    assert not (tmp_path / "teachers" / "mnist5k_mlp_hidden=16_e1_s1.keras").exists()
    # a teacher trained on its own policy is another teacher: its own file and rows
    monkeypatch.setattr(sys, "argv", ["payoff", "--seeds=0", "--teacher_augment=jitter", *common])
    payoff.main()
    rows = [json.loads(line) for line in (tmp_path / "payoff.jsonl").read_text().splitlines()]
    assert rows[-1]["teacher_arch"] == "mlp:hidden=16@jitter" and len(rows) == 3
    assert (tmp_path / "teachers" / "mnist5k_mlp_hidden=16@jitter_e1_s0.keras").exists()
