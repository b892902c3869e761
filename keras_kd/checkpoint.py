"""Runs that survive being killed: atomic backups and resumable phases.

:class:`AtomicBackupAndRestore` is ``keras.callbacks.BackupAndRestore`` with
crash-safe writes: each backup (weights + the epoch reached) goes into a fresh
folder, and a small ``latest.json`` pointer is then replaced atomically
(``os.replace``). A kill at any moment leaves either the previous backup or the
new one, never a mix. A backup that exists but cannot be read raises
:class:`CorruptCheckpointError` instead of silently restarting from zero.

    callback = AtomicBackupAndRestore("ckpt/distill")
    distiller.fit(ds, epochs=10, callbacks=[callback])   # rerun after a kill:
                                                         # resumes at the last epoch
"""

import json
import os
import shutil
import tempfile

import keras

from keras_kd import _io, distribute

__all__ = ["AtomicBackupAndRestore", "CorruptCheckpointError"]


class CorruptCheckpointError(RuntimeError):
    """A backup exists but cannot be restored."""


class AtomicBackupAndRestore(keras.callbacks.Callback):
    """Backs up the model (weights and optimizer state) every epoch, atomically.

    Args:
      backup_dir: folder for the backups of *one* ``fit`` call.
      delete_on_end: remove the backups once ``fit`` completes (default True,
        as Keras's callback does).

    On ``fit`` start, if a backup exists, the model's weights and optimizer
    state are restored and training continues from the epoch after it.

    Under multi-worker training every worker restores from ``backup_dir``,
    which must therefore be storage they all see (a shared or network file
    system), and only the chief keeps backups (the others save into a scratch
    folder, because saving is a collective): the workers step in lockstep, so
    the chief's backup is every worker's state.
    """

    def __init__(self, backup_dir, delete_on_end=True):
        super().__init__()
        if not backup_dir:
            raise ValueError("AtomicBackupAndRestore needs a backup_dir.")
        self.backup_dir = str(backup_dir)
        self.delete_on_end = delete_on_end
        self._pointer = os.path.join(self.backup_dir, "latest.json")

    def _latest(self):
        if not os.path.exists(self._pointer):
            return None
        try:
            with open(self._pointer, encoding="utf-8") as f:
                latest = json.load(f)
            folder = os.path.join(self.backup_dir, latest["folder"])
            return folder, int(latest["epoch"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise CorruptCheckpointError(
                f"the backup pointer {self._pointer!r} is unreadable ({err}). "
                f"Fix: delete {self.backup_dir!r} to restart this phase from "
                "scratch."
            ) from err

    def on_train_begin(self, logs=None):
        latest = self._latest()
        if latest is None:
            return
        folder, epoch = latest
        weights = os.path.join(folder, "model.weights.h5")
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is not None and not optimizer.built:
            optimizer.build(self.model.trainable_variables)
        try:
            self.model.load_weights(weights)
        except Exception as err:  # h5py/Keras raise many kinds
            raise CorruptCheckpointError(
                f"the backup {weights!r} (epoch {epoch}) cannot be restored "
                f"({type(err).__name__}: {err}). Fix: delete {self.backup_dir!r} "
                "to restart this phase from scratch."
            ) from err
        self.model._initial_epoch = epoch

    def _writes(self):
        return distribute.is_chief(self.model.distribute_strategy)

    def on_epoch_end(self, epoch, logs=None):
        if not self._writes():
            # Reading some variables (metrics, sync-on-read) is a collective
            # under multi-worker training: every worker saves, the others
            # into a scratch folder they then delete (as TensorFlow does).
            with tempfile.TemporaryDirectory() as scratch:
                self.model.save_weights(os.path.join(scratch, "model.weights.h5"))
            return
        done = epoch + 1
        folder_name = f"epoch-{done:06d}"
        folder = os.path.join(self.backup_dir, folder_name)
        _io.ensure_dir(self.backup_dir)
        if os.path.exists(folder):  # left by a kill before the pointer moved
            shutil.rmtree(folder)
        os.makedirs(folder)
        self.model.save_weights(os.path.join(folder, "model.weights.h5"))
        previous = self._latest()
        _io.write_json(self._pointer, {"folder": folder_name, "epoch": done})
        if previous is not None and os.path.abspath(previous[0]) != os.path.abspath(folder):
            shutil.rmtree(previous[0], ignore_errors=True)

    def on_train_end(self, logs=None):
        self.model._initial_epoch = None  # a later fit() starts from its own epoch
        if self.delete_on_end and self._writes() and os.path.exists(self.backup_dir):
            shutil.rmtree(self.backup_dir, ignore_errors=True)
