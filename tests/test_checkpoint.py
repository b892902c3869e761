"""Runs survive being killed: atomic backups, resumed phases, clear errors."""

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from keras_kd.checkpoint import AtomicBackupAndRestore, CorruptCheckpointError

ARGS = ["--teacher_arch=cnn:width=0.25", "--student_arch=mlp:hidden=16",
        "--teacher_epochs=1", "--epochs=5", "--batch_size=256", "--verbose=2",
        "--export=false"]


def _cli(ckpt, out):
    return [sys.executable, "-m", "keras_kd", f"--checkpoint_dir={ckpt}",
            f"--output_dir={out}", *ARGS]


def test_sigkill_mid_distillation_then_rerun_completes(tmp_path):
    ckpt, out = tmp_path / "ckpt", tmp_path / "out"
    pointer = ckpt / "distill_backup" / "latest.json"
    proc = subprocess.Popen(_cli(ckpt, out), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    try:
        while time.time() < deadline:
            if pointer.exists() and json.loads(pointer.read_text())["epoch"] >= 2:
                break
            assert proc.poll() is None, "finished before it could be killed"
            time.sleep(0.05)
        else:
            pytest.fail("the distillation never reached epoch 2")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    killed_at = json.loads(pointer.read_text())["epoch"]
    assert 2 <= killed_at < 5
    assert not (out / "metrics.json").exists()

    rerun = subprocess.run(_cli(ckpt, out), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "teacher: loaded" in rerun.stdout and "baseline: loaded" in rerun.stdout
    assert f"Epoch {killed_at + 1}/5" in rerun.stdout
    assert "Epoch 1/5" not in rerun.stdout  # resumed, not restarted
    with open(out / "metrics.json") as f:
        history = json.load(f)["distillation_history"]
    assert len(history["loss"]) == 5  # every epoch recorded once, across the restart
    assert history["loss"][-1] < history["loss"][0]

    # kill + resume == unbroken, bit for bit: the data order and the augmentation draws
    # are a function of (seed, epoch), not of how many epochs this process has read.
    unbroken = subprocess.run(
        [sys.executable, "-m", "keras_kd", f"--output_dir={tmp_path / 'unbroken'}", *ARGS],
        capture_output=True, text=True, timeout=300)
    assert unbroken.returncode == 0, unbroken.stderr[-3000:]
    with open(tmp_path / "unbroken" / "metrics.json") as f:
        assert json.load(f)["distillation_history"] == history
    resumed = keras.saving.load_model(out / "student.keras").get_weights()
    straight = keras.saving.load_model(tmp_path / "unbroken" / "student.keras").get_weights()
    for a, b in zip(resumed, straight, strict=True):
        np.testing.assert_array_equal(a, b)


def test_changed_flags_cannot_resume_a_checkpoint(tmp_path):
    from test_cli import TINY, run_cli

    ckpt = tmp_path / "ckpt"
    assert run_cli(TINY + ["--export=false", f"--checkpoint_dir={ckpt}",
                           f"--output_dir={tmp_path / 'a'}"]) == 0
    assert run_cli(TINY + ["--export=false", "--temperature=9", f"--checkpoint_dir={ckpt}",
                           f"--output_dir={tmp_path / 'b'}"]) == 2


def _model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(3)(inputs))
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def test_backup_restores_weights_optimizer_and_epoch(tmp_path, rng):
    x = rng.normal(size=(32, 4)).astype(np.float32)
    y = rng.integers(0, 3, size=32)
    first = _model()

    class Stop(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 2:
                raise KeyboardInterrupt  # a crash after 3 epochs

    with pytest.raises(KeyboardInterrupt):
        first.fit(x, y, epochs=5, verbose=0,
                  callbacks=[AtomicBackupAndRestore(tmp_path / "b"), Stop()])
    second = _model()
    seen = []

    class Epochs(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            seen.append(epoch)
            if epoch == 3:
                np.testing.assert_allclose(second.get_weights()[0], first.get_weights()[0])
                assert int(second.optimizer.iterations.numpy()) == 3

    second.fit(x, y, epochs=5, verbose=0,
               callbacks=[AtomicBackupAndRestore(tmp_path / "b"), Epochs()])
    assert seen == [3, 4]
    assert not (tmp_path / "b").exists()  # removed once training completed


def test_corrupt_backup_is_a_clear_error_not_a_restart(tmp_path, rng):
    x = rng.normal(size=(8, 4)).astype(np.float32)
    y = rng.integers(0, 3, size=8)
    backup = tmp_path / "b"
    model = _model()
    model.fit(x, y, epochs=1, verbose=0,
              callbacks=[AtomicBackupAndRestore(backup, delete_on_end=False)])
    latest = json.loads((backup / "latest.json").read_text())
    (backup / latest["folder"] / "model.weights.h5").write_bytes(b"garbage")
    with pytest.raises(CorruptCheckpointError, match="delete"):
        _model().fit(x, y, epochs=2, verbose=0, callbacks=[AtomicBackupAndRestore(backup)])
    (backup / "latest.json").write_text("{oops")
    with pytest.raises(CorruptCheckpointError, match="unreadable"):
        _model().fit(x, y, epochs=2, verbose=0, callbacks=[AtomicBackupAndRestore(backup)])


def test_how_it_runs_may_change_between_resumptions(tmp_path):
    from test_cli import TINY, run_cli

    ckpt = tmp_path / "ckpt"
    assert run_cli(TINY + ["--export=false", f"--checkpoint_dir={ckpt}",
                           f"--output_dir={tmp_path / 'a'}"]) == 0
    assert run_cli(TINY + ["--export=false", "--mixed_precision=mixed_bfloat16",
                           "--nodeterministic", f"--checkpoint_dir={ckpt}",
                           f"--output_dir={tmp_path / 'b'}"]) == 0


def _worker_cmd(ports, index, ckpt, out, epochs):
    env = {**os.environ, "TF_CONFIG": json.dumps({
        "cluster": {"worker": [f"localhost:{p}" for p in ports]},
        "task": {"type": "worker", "index": index}})}
    env.pop("KERAS_KD_RESTARTS", None)
    argv = [sys.executable, "-m", "keras_kd", "--strategy=multi_worker",
            f"--checkpoint_dir={ckpt}", f"--output_dir={out}",
            *[a for a in ARGS if not a.startswith(("--epochs", "--export"))],
            f"--epochs={epochs}"]
    return argv, env


def _kill_and_restart(procs, pointer, ports, ckpt, out, epochs):
    """Kills worker 1 at distillation epoch >= 2, reruns it; (epoch, result)."""
    try:
        deadline = time.time() + 240
        while not (pointer.exists() and json.loads(pointer.read_text())["epoch"] >= 2):
            assert procs[1].poll() is None, "finished before it could be killed"
            assert time.time() < deadline, "the distillation never reached epoch 2"
            time.sleep(0.05)
        os.kill(procs[1].pid, signal.SIGKILL)
        procs[1].wait()
        killed_at = json.loads(pointer.read_text())["epoch"]
        assert killed_at < epochs
        assert not (ckpt / "worker-1").exists() and not list(ckpt.glob("*/worker*"))
        argv, env = _worker_cmd(ports, 1, ckpt, out, epochs)
        restarted = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
        assert restarted.returncode == 0, restarted.stdout[-2000:] + restarted.stderr[-3000:]
        assert procs[0].wait(timeout=120) == 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return killed_at, restarted


def test_multi_worker_killed_worker_restarted_job_resumes(tmp_path):
    """SIGKILL worker 1 mid-distillation; restart only it: the job finishes.

    The surviving chief sees the lost peer, restarts itself and waits; both
    resume from the chief's backup, and every epoch is recorded once. This is
    also the test of ``keras-kd --strategy=multi_worker`` end to end (two
    processes, the chief's export verified, worker 1's files kept apart).
    """
    from test_distribute import _free_ports

    ckpt, out, epochs = tmp_path / "ckpt", tmp_path / "out", 4
    pointer = ckpt / "distill_backup" / "latest.json"
    ports = _free_ports(2)
    procs = []
    with contextlib.ExitStack() as stack:
        for i in range(2):
            log = stack.enter_context(open(tmp_path / f"worker{i}.log", "w"))
            argv, env = _worker_cmd(ports, i, ckpt, out, epochs)
            procs.append(subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT))
        killed_at, restarted = _kill_and_restart(procs, pointer, ports, ckpt, out, epochs)
    chief = (tmp_path / "worker0.log").read_text()
    assert "another worker stopped" in chief and "restarting this worker" in chief
    after = chief.split("restarting this worker", 1)[1]
    for text in (after, restarted.stdout):
        assert "teacher: loaded" in text and "baseline: loaded" in text
        assert f"Epoch {killed_at + 1}/{epochs}" in text
        assert f"Epoch 1/{epochs}" not in text  # resumed, not restarted
    with open(out / "metrics.json") as f:
        metrics = json.load(f)
    assert len(metrics["distillation_history"]["loss"]) == epochs
    assert metrics["distribution"]["strategy"] == "multi_worker"
    assert metrics["distribution"]["replicas"] == 2
    assert metrics["tflite"]["agreement"] >= 0.99  # the chief exported and verified
    with open(out / "worker-1" / "metrics.json") as f:  # worker 1 wrote apart
        assert json.load(f)["tflite"] is None  # ... and left the export to the chief
    assert not (out / "worker-1" / "student.tflite").exists()


def test_multi_worker_checkpoint_dirs_must_be_shared(tmp_path):
    """Workers that see different checkpoint contents stop with a clear error."""
    from test_distribute import _free_ports

    ports = _free_ports(2)
    shared = tmp_path / "ckpt0"
    shared.mkdir()
    (shared / "config.json").write_text("{}")  # a run only worker 0 can see
    procs = []
    for i in range(2):
        argv, env = _worker_cmd(ports, i, tmp_path / f"ckpt{i}", tmp_path / "out", 2)
        procs.append(subprocess.Popen(argv, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    results = [p.communicate(timeout=240) for p in procs]
    for p, (_, err) in zip(procs, results):
        assert p.returncode == 2, err[-2000:]
        assert "the workers see different contents in --checkpoint_dir" in err
        assert "storage they all share" in err


# ---------------------------------------------------------------------------
# RunFolder: the resume protocol in one place (the job and the sweep use it).


def test_run_folder_phases_results_and_history(tmp_path, rng):
    import tensorflow as tf

    from keras_kd.checkpoint import RunFolder

    strategy = tf.distribute.get_strategy()
    folder = RunFolder(strategy, tmp_path / "out", tmp_path / "ckpt", {"epochs": 2})
    assert folder.chief and folder.out == str(tmp_path / "out")
    assert folder.finished("trials/0001") is None and folder.result("trials/0001") is None
    x = rng.normal(size=(16, 4)).astype(np.float32)
    y = rng.integers(0, 3, size=16)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    model = _model()
    history = folder.fit(model, ds, "trials/0001", epochs=2, verbose=0)
    assert len(history["loss"]) == 2  # read back from trials/0001_history.csv
    assert (tmp_path / "ckpt" / "trials" / "0001_backup" / "latest.json").exists()
    folder.mark_done("trials/0001", model)
    assert not (tmp_path / "ckpt" / "trials" / "0001_backup").exists()  # dropped once saved
    saved = keras.saving.load_model(folder.finished("trials/0001"))
    for a, b in zip(saved.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert folder.history("trials/0001") == history
    folder.save_result("trials/0001", {"val_accuracy": 0.5})
    assert folder.result("trials/0001") == {"val_accuracy": 0.5}
    # Nothing is kept (and nothing resumes) without a checkpoint folder.
    plain = RunFolder(strategy, tmp_path / "plain")
    assert plain.fit(_model(), ds, "teacher", epochs=1, verbose=0)["loss"]
    plain.mark_done("teacher", model)
    plain.save_result("teacher", {"x": 1})
    assert plain.finished("teacher") is None and plain.result("teacher") is None
    assert os.listdir(tmp_path / "plain") == []


def test_run_folder_fit_names_the_phase_whose_data_is_empty(tmp_path):
    import tensorflow as tf

    from keras_kd import checks
    from keras_kd.checkpoint import RunFolder

    folder = RunFolder(tf.distribute.get_strategy(), tmp_path / "out")
    empty = tf.data.Dataset.from_tensor_slices(
        (np.zeros((0, 4), np.float32), np.zeros((0,), np.int64))).batch(8)
    with pytest.raises(checks.EmptyDataError, match=r"^the baseline phase's training data "
                                                        r"is empty"):
        folder.fit(_model(), empty, "baseline", epochs=1, verbose=0)


def test_a_kill_while_a_phase_is_redone_leaves_it_to_redo(tmp_path, monkeypatch):
    """A phase redone over its earlier <phase>.keras: a kill before the new file is moved
    into place must not leave the old model beside the new checksum (a corrupt checkpoint
    on resume); the phase is simply redone."""
    import tensorflow as tf

    from keras_kd.checkpoint import RunFolder

    folder = RunFolder(tf.distribute.get_strategy(), tmp_path / "out", tmp_path / "ckpt",
                       {"epochs": 2})
    folder.mark_done("teacher", _model())
    other = _model()
    other.set_weights([w + 1.0 for w in other.get_weights()])
    replace = os.replace

    def killed(src, dst):
        if str(dst).endswith(".keras"):
            raise RuntimeError("killed before the move")
        return replace(src, dst)

    with monkeypatch.context() as patch:
        patch.setattr(os, "replace", killed)
        with pytest.raises(RuntimeError, match="killed"):
            folder.mark_done("teacher", other)
    assert folder.finished("teacher") is None  # redone, not CorruptCheckpointError
    folder.mark_done("teacher", other)
    saved = keras.saving.load_model(folder.finished("teacher"))
    for a, b in zip(saved.get_weights(), other.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_check_sha256_against_hashlib(tmp_path):
    from keras_kd import _io

    path = tmp_path / "f.bin"
    path.write_bytes(b"keras_kd" * 1000)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert _io.check_sha256(path, digest) == digest
    for recorded, file, reason in ((None, path, "unrecorded"), ("", path, "unrecorded"),
                                   (digest, tmp_path / "gone", "missing"),
                                   (digest, tmp_path, "unreadable"),
                                   ("0" * 64, path, "changed")):
        with pytest.raises(_io.ChecksumError) as caught:
            _io.check_sha256(file, recorded)
        assert caught.value.reason == reason
    assert caught.value.found == digest and caught.value.recorded == "0" * 64


def test_the_umask_is_read_without_changing_it(monkeypatch):
    """From /proc on Linux; where that is missing, by setting it and putting it back."""
    from keras_kd import _io

    def no_proc(path, *args, **kwargs):
        raise FileNotFoundError(path)

    old = os.umask(0o027)
    try:
        assert _io._umask() == 0o027
        monkeypatch.setattr(_io, "open", no_proc, raising=False)
        assert _io._umask() == 0o027
        assert os.umask(0o027) == 0o027  # still what was set
    finally:
        os.umask(old)


def test_atomic_writes_get_what_open_and_mkdir_would_give(tmp_path):
    """mkstemp/mkdtemp make 0600/0700 temporaries; the moved result has the usual mode,
    the same as a plain ``open`` / ``os.mkdir`` under a non-default umask."""
    from keras_kd import _io

    old = os.umask(0o027)
    try:
        _io.write_text(tmp_path / "a.txt", "x")
        with _io.atomic_dir(tmp_path / "d") as tmp:
            (tmp_path / "d_inner").mkdir()  # a folder made the plain way, for reference
            open(os.path.join(tmp, "f"), "w").close()
        (tmp_path / "plain.txt").write_text("x")
    finally:
        os.umask(old)
    mode = lambda p: os.stat(p).st_mode & 0o777  # noqa: E731
    assert mode(tmp_path / "a.txt") == mode(tmp_path / "plain.txt") == 0o640
    assert mode(tmp_path / "d") == mode(tmp_path / "d_inner") == 0o750
    assert sorted(os.listdir(tmp_path)) == ["a.txt", "d", "d_inner", "plain.txt"]  # no leftovers

_KILLED_MID_WRITE = """
import importlib.util, os, signal, sys
spec = importlib.util.spec_from_file_location("_io", sys.argv[1])
io = importlib.util.module_from_spec(spec)
spec.loader.exec_module(io)  # the module alone: no TensorFlow to import
with io.atomic_path(sys.argv[2]) as tmp:
    open(tmp, "w").write("half")
    with io.atomic_dir(sys.argv[3]) as folder:
        open(os.path.join(folder, "f"), "w").write("half")
        os.kill(os.getpid(), signal.SIGKILL)  # before either finally runs
"""


def test_a_killed_writers_hidden_siblings_are_removed_by_the_next_write(tmp_path):
    """SIGKILL inside atomic_path / atomic_dir leaves hidden siblings; the next write
    of the same path on this host removes them, and keeps those of live writers
    and of other hosts (a shared file system)."""
    from keras_kd import _io

    target, folder = tmp_path / "m.keras", tmp_path / "export"
    killed = subprocess.Popen([sys.executable, "-c", _KILLED_MID_WRITE, _io.__file__,
                               str(target), str(folder)], stderr=subprocess.PIPE, text=True)
    assert killed.wait() == -signal.SIGKILL, killed.stderr.read()
    killed.stderr.close()
    dead, host = killed.pid, _io.host_name()
    left = sorted(os.listdir(tmp_path))
    assert [n.startswith((f".export.{host}-{dead}-", f".m.keras.{host}-{dead}-"))
            for n in left] == [True, True]  # the killed writer's, named for it
    assert not target.exists() and not folder.exists()  # nothing half-written in place
    kept = [f".m.keras.{host}-{os.getppid()}-a.keras",  # a running writer's
            f".m.keras.other_host_0000-{dead}-a.keras",  # another machine's, its writer dead
            f".n.keras.{host}-{dead}-a.keras",  # another file's: its own write sweeps it
            f".m.keras.{host}-{'9' * 30}-a.keras"]  # not a pid: left alone, the write goes on
    for name in kept:
        (tmp_path / name).write_text("x")
    _io.write_text(target, "whole")
    with _io.atomic_dir(folder) as tmp:
        _io.write_text(os.path.join(tmp, "f"), "whole")
    assert target.read_text() == "whole" and (folder / "f").read_text() == "whole"
    assert sorted(os.listdir(tmp_path)) == sorted(["export", "m.keras", *kept])

def test_run_folder_refuses_other_settings_naming_them(tmp_path):
    import tensorflow as tf

    from keras_kd.checkpoint import RunFolder

    strategy = tf.distribute.get_strategy()
    RunFolder(strategy, tmp_path, tmp_path / "s", {"epochs": 2, "seed": 0}, kind="sweep",
              flag="--output_dir")
    RunFolder(strategy, tmp_path, tmp_path / "s", {"epochs": 2, "seed": 0})  # the same: resumes
    with pytest.raises(ValueError, match=r"--output_dir='.*' holds a sweep with other settings "
                                         r"\(epochs, seed differ\).*Fix: use a new --output_dir"):
        RunFolder(strategy, tmp_path, tmp_path / "s", {"epochs": 3, "seed": 1}, kind="sweep",
                  flag="--output_dir")


# ---------------------------------------------------------------------------
# Nothing reused silently: checksums of what a rerun loads, readable settings.


def test_swapped_backup_weights_are_refused(tmp_path, rng):
    """Another model's valid weights file in place of a backup: refused by the sha256
    in latest.json (load_weights alone would restore it silently)."""
    x = rng.normal(size=(8, 4)).astype(np.float32)
    y = rng.integers(0, 3, size=8)
    backup = tmp_path / "b"
    _model().fit(x, y, epochs=1, verbose=0,
                 callbacks=[AtomicBackupAndRestore(backup, delete_on_end=False)])
    latest = json.loads((backup / "latest.json").read_text())
    weights = backup / latest["folder"] / "model.weights.h5"
    assert latest["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    other = _model()
    other.set_weights([w + 1.0 for w in other.get_weights()])
    other.save_weights(weights)  # valid, same architecture, other values
    with pytest.raises(CorruptCheckpointError, match=r"model.weights.h5.*changed after it was "
                                                     r"written.*Fix: delete"):
        _model().fit(x, y, epochs=2, verbose=0, callbacks=[AtomicBackupAndRestore(backup)])


def test_swapped_finished_phase_model_is_refused(tmp_path):
    """A finished phase's <phase>.keras replaced by another valid model: refused."""
    import tensorflow as tf

    from keras_kd.checkpoint import RunFolder

    strategy = tf.distribute.get_strategy()
    folder = RunFolder(strategy, tmp_path / "out", tmp_path / "ckpt", {"epochs": 2})
    model = _model()
    folder.mark_done("teacher", model)
    path = tmp_path / "ckpt" / "teacher.keras"
    recorded = (tmp_path / "ckpt" / "teacher.keras.sha256").read_text().split()
    assert recorded == [hashlib.sha256(path.read_bytes()).hexdigest(), "teacher.keras"]
    assert folder.finished("teacher") == str(path)
    other = _model()
    other.set_weights([w + 1.0 for w in other.get_weights()])
    other.save(path)  # valid, loadable, not the model the phase trained
    with pytest.raises(CorruptCheckpointError, match=r"teacher.keras' changed after its teacher "
                                                     r"phase finished.*Fix: delete .*teacher.keras"):
        folder.finished("teacher")
    os.remove(tmp_path / "ckpt" / "teacher.keras.sha256")
    with pytest.raises(CorruptCheckpointError, match="has no recorded sha256"):
        folder.finished("teacher")


def test_corrupt_checkpoint_config_names_the_file_and_the_fix(tmp_path, capsys):
    import tensorflow as tf
    from test_cli import TINY, run_cli

    from keras_kd.checkpoint import RunFolder

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text('{"epochs": 2,')  # cut short
    with pytest.raises(CorruptCheckpointError, match=r"config.json' is unreadable .*Fix: use a new "
                                                     r"--checkpoint_dir, or delete .*ckpt' to "
                                                     r"start over\.$"):
        RunFolder(tf.distribute.get_strategy(), tmp_path / "out", ckpt, {"epochs": 2})
    assert not (tmp_path / "out").exists()
    assert run_cli(TINY + [f"--checkpoint_dir={ckpt}", f"--output_dir={tmp_path / 'out'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("keras-kd: error: ") and "config.json' is unreadable" in err
    assert len(err.splitlines()) == 1
