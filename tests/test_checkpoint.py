"""Runs survive being killed: atomic backups, resumed phases, clear errors."""

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
        "--teacher_epochs=1", "--epochs=8", "--batch_size=256", "--verbose=2",
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
    assert 2 <= killed_at < 8
    assert not (out / "metrics.json").exists()

    rerun = subprocess.run(_cli(ckpt, out), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "teacher: loaded" in rerun.stdout and "baseline: loaded" in rerun.stdout
    assert f"Epoch {killed_at + 1}/8" in rerun.stdout
    assert "Epoch 1/8" not in rerun.stdout  # resumed, not restarted
    with open(out / "metrics.json") as f:
        history = json.load(f)["distillation_history"]
    assert len(history["loss"]) == 8  # every epoch recorded once, across the restart
    assert history["loss"][-1] < history["loss"][0]


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
