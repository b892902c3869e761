"""Epoch backups that survive being killed: ``AtomicBackupAndRestore``.

:class:`AtomicBackupAndRestore` is ``keras.callbacks.BackupAndRestore`` with
crash-safe writes: each backup (weights + the epoch reached) goes into a fresh
folder, and a small ``latest.json`` pointer (with the weights' sha256) is then
replaced atomically (``os.replace``). A kill at any moment leaves either the
previous backup or the new one, never a mix. A backup that exists but cannot
be read, or whose weights file changed, raises :class:`CorruptCheckpointError`
instead of silently restarting from zero or from other weights.
:class:`keras_kd.checkpoint.RunFolder` uses one per training phase.
"""

import json
import os
import shutil
import tempfile

import keras

from keras_kd import _io, distribute, views

__all__ = ["AtomicBackupAndRestore", "CorruptCheckpointError"]


class CorruptCheckpointError(RuntimeError):
    """A checkpoint file exists but cannot be used: unreadable, or changed since written."""



class AtomicBackupAndRestore(keras.callbacks.Callback):
    """Backs up the model (weights and optimizer state) every epoch, atomically.

    Args:
      backup_dir: folder for the backups of *one* ``fit`` call.
      delete_on_end: remove the backups once ``fit`` completes (default True,
        as Keras's callback does).
      chief: whether this process keeps the backups (default: decided from
        the model's strategy; a :class:`RunFolder` passes its own decision).

    On ``fit`` start, if a backup exists, the model's weights and optimizer
    state are restored and training continues from the epoch after it.

        callback = AtomicBackupAndRestore("ckpt/distill")
        distiller.fit(ds, epochs=10, callbacks=[callback])   # rerun after a kill:
                                                             # resumes at the last epoch

    Under multi-worker training every worker restores from ``backup_dir``,
    which must therefore be storage they all see, and only the chief keeps
    backups (the others save into a scratch folder, because saving is a
    collective): the workers step in lockstep, so the chief's backup is every
    worker's state.
    """

    def __init__(self, backup_dir, delete_on_end=True, chief=None):
        super().__init__()
        if not backup_dir:
            raise ValueError("AtomicBackupAndRestore needs a backup_dir.")
        self.backup_dir = str(backup_dir)
        self.delete_on_end = delete_on_end
        self._chief = chief
        self._pointer = os.path.join(self.backup_dir, "latest.json")

    def _latest(self):
        if not os.path.exists(self._pointer):
            return None
        try:
            with open(self._pointer, encoding="utf-8") as f:
                latest = json.load(f)
            folder = os.path.join(self.backup_dir, latest["folder"])
            return folder, int(latest["epoch"]), latest.get("sha256")
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise CorruptCheckpointError(
                f"the backup pointer {self._pointer!r} is unreadable ({err}). "
                f"Fix: delete {self.backup_dir!r} to restart this phase from "
                "scratch."
            ) from err

    def latest_epoch(self):
        """How many epochs the last backup holds (0: none): where a rerun resumes."""
        latest = self._latest()
        return 0 if latest is None else latest[1]

    def on_train_begin(self, logs=None):
        latest = self._latest()
        if latest is None:
            return
        folder, epoch, recorded = latest
        weights = os.path.join(folder, "model.weights.h5")
        self._check_sha256(weights, epoch, recorded)
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
        views.set_initial_epoch(self.model, epoch)

    def _check_sha256(self, weights, epoch, recorded):
        """CorruptCheckpointError unless ``weights`` has the sha256 ``latest.json`` records."""
        fix = f"Fix: delete {self.backup_dir!r} to restart this phase from scratch."
        try:
            _io.check_sha256(weights, recorded)
        except _io.ChecksumError as err:
            if err.reason == "unrecorded":
                why = (f"the backup pointer {self._pointer!r} records no sha256 of {weights!r} "
                       f"(epoch {epoch}; written by an older keras_kd?), so the backup cannot "
                       "be checked")
            elif err.reason == "changed":
                why = (f"the backup {weights!r} (epoch {epoch}) changed after it was written "
                       f"(its sha256 is {err.found[:12]}…, {self._pointer!r} records "
                       f"{recorded[:12]}…), so it is not this run's state")
            else:
                why = f"the backup {weights!r} (epoch {epoch}) cannot be read ({err.__cause__})"
            raise CorruptCheckpointError(f"{why}. {fix}") from err

    def _writes(self):
        if self._chief is None:
            self._chief = distribute.is_chief(self.model.distribute_strategy)
        return self._chief

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
        weights = os.path.join(folder, "model.weights.h5")
        self.model.save_weights(weights)
        previous = self._latest()
        _io.write_json(self._pointer, {"folder": folder_name, "epoch": done,
                                       "sha256": _io.sha256_file(weights)})
        if previous is not None and os.path.abspath(previous[0]) != os.path.abspath(folder):
            shutil.rmtree(previous[0], ignore_errors=True)

    def on_train_end(self, logs=None):
        views.set_initial_epoch(self.model, None)  # a later fit() starts from its own epoch
        if self.delete_on_end and self._writes() and os.path.exists(self.backup_dir):
            shutil.rmtree(self.backup_dir, ignore_errors=True)
