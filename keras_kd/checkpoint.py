"""Runs that survive being killed: the run folder and its resume protocol.

One :class:`RunFolder` per run (the job, or a sweep) decides once who the
chief is and owns every file that makes a run resumable:

- ``config.json``: the settings the folder belongs to; another run's settings
  are refused (also across workers, which must share the folder);
- ``<phase>.keras``: a finished phase's model (its marker), ``<phase>.json``:
  a finished phase's result;
- ``<phase>_backup/``: epoch backups of the phase being trained
  (:class:`AtomicBackupAndRestore`), and ``<phase>_history.csv``, its history.

::

    folder = RunFolder(strategy, output_dir="out", checkpoint_dir="ckpt", settings={...})
    model = folder.load("teacher") or train()         # a finished phase is loaded
    history = folder.fit(model, dataset, "teacher", epochs=12)   # resumes after a kill
    folder.mark_done("teacher", model)

:class:`AtomicBackupAndRestore` is ``keras.callbacks.BackupAndRestore`` with
crash-safe writes: each backup (weights + the epoch reached) goes into a fresh
folder, and a small ``latest.json`` pointer is then replaced atomically
(``os.replace``). A kill at any moment leaves either the previous backup or the
new one, never a mix. A backup that exists but cannot be read raises
:class:`CorruptCheckpointError` instead of silently restarting from zero.
"""

import csv
import datetime
import json
import os
import random
import shutil
import tempfile
import zlib

import keras
import tensorflow as tf

from keras_kd import _io, distribute, errors, views

__all__ = ["RunFolder", "AtomicBackupAndRestore", "CorruptCheckpointError", "default_output_dir",
           "open_folder", "as_user_error"]


class CorruptCheckpointError(RuntimeError):
    """A backup exists but cannot be restored."""


def default_output_dir():
    """``./kd_runs/<YYYYmmdd-HHMMSS>`` (``-2``, ``-3``, … if it exists)."""
    base = os.path.join("kd_runs", datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))
    path, n = base, 1
    while os.path.exists(path):
        n += 1
        path = f"{base}-{n}"
    return path


class RunFolder:
    """A run's output folder and its checkpoint folder, with the resume protocol.

    Args:
      strategy: the run's ``tf.distribute`` strategy. Whether this process is
        the chief (it writes the shared files) is decided here, once.
      output_dir: where the run's results go (default
        :func:`default_output_dir`); a non-chief worker writes into
        ``<output_dir>/worker-<i>`` instead.
      checkpoint_dir: the folder that makes the run resumable, or None (then
        nothing is kept and nothing resumes). It may be ``output_dir`` itself.
      settings: a JSON-able dict of what the results depend on. The first run
        stores it; a later run with other settings is refused.
      kind, flag: words for the errors ("run", "--checkpoint_dir").

    Under multi-worker training every worker must pass the same
    ``checkpoint_dir`` on storage they all see: the workers compare what they
    find (a token the chief leaves, the settings, the finished phases and
    backups) before anything trains, and a mismatch is an error, not a hang.
    """

    def __init__(self, strategy, output_dir=None, checkpoint_dir=None, settings=None, *,
                 kind="run", flag="--checkpoint_dir"):
        self.strategy = strategy
        self.chief = distribute.is_chief(strategy)
        self.path = str(checkpoint_dir) if checkpoint_dir else None
        self.kind, self.flag = kind, flag
        if self.path:
            _io.ensure_dir(self.path, flag)
            self._check_settings(settings or {})
        out = str(output_dir or default_output_dir())
        if not self.chief:  # the chief writes the run's files; the others keep theirs apart
            out = os.path.join(out, f"worker-{distribute.worker_index(strategy)}")
        self.out = _io.ensure_dir(out, "--output_dir")

    # -- settings and the workers' shared view -------------------------------

    def _check_settings(self, settings):
        path = os.path.join(self.path, "config.json")
        self._check_workers_share()
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                saved = json.load(f)
            if saved != settings:
                changed = sorted(k for k in set(saved) | set(settings)
                                 if saved.get(k) != settings.get(k))
                raise ValueError(
                    f"{self.flag}={self.path!r} holds a {self.kind} with other settings "
                    f"({', '.join(changed)} differ), so it cannot be resumed with these "
                    f"flags. Fix: use a new {self.flag}, or delete it to start over."
                )
        elif self.chief:
            _io.write_json(path, settings)

    def _state(self):
        """One integer summing up what the folder holds (compared across workers)."""
        seen = []
        for root, dirs, files in os.walk(self.path):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(files):
                rel = os.path.relpath(os.path.join(root, name), self.path)
                if name in ("config.json", "latest.json", "workers.token"):
                    with open(os.path.join(root, name), "rb") as f:
                        rel += f":{zlib.crc32(f.read())}"
                elif not name.endswith((".keras", ".json")):
                    continue
                seen.append(rel)
        return zlib.crc32("\n".join(seen).encode())

    def _check_workers_share(self):
        """Raises ValueError if the workers see different folder contents.

        Each worker would otherwise resume from a different point, and the
        collectives would hang. A no-op outside multi-worker training. A fresh
        folder looks the same (empty) to workers on separate disks, so the
        chief first leaves a random token there; after a barrier every worker
        reads it back, and the token is compared with the rest.
        """
        if not distribute.is_multi_worker(self.strategy):
            return
        token_path = os.path.join(self.path, "workers.token")
        if self.chief and not os.path.exists(token_path):
            _io.write_text(token_path, f"{random.getrandbits(62)}\n")
        distribute.gather_from_workers(self.strategy, [0])  # barrier: the token is written
        try:
            with open(token_path, encoding="utf-8") as f:
                token = int(f.read().strip())
        except (OSError, ValueError):
            token = -1
        seen = distribute.gather_from_workers(self.strategy, [token, self._state()])
        if (seen != seen[0]).any():
            raise ValueError(
                f"the workers see different contents in {self.flag}={self.path!r} (per "
                f"worker: {seen.tolist()}). Under --strategy=multi_worker every worker "
                "must pass the same folder on storage they all share (a network file "
                "system or a mounted bucket)."
            )

    # -- phases ----------------------------------------------------------------

    def _file(self, phase, suffix):
        return os.path.join(self.path, f"{phase}{suffix}")

    def finished(self, phase):
        """Path of a finished phase's model, or None (also without a checkpoint folder)."""
        if not self.path:
            return None
        path = self._file(phase, ".keras")
        return path if os.path.exists(path) else None

    def mark_done(self, phase, model):
        """Saves a finished phase's model (the chief), then drops its epoch backups."""
        if not self.path:
            return
        if self.chief:
            _io.save_model(model, self._file(phase, ".keras"))
        else:  # saving is a collective under multi-worker: save, then discard
            with tempfile.TemporaryDirectory() as scratch:
                _io.save_model(model, os.path.join(scratch, "model.keras"))
        self.drop_backup(phase)  # only now: the phase's result is safe

    def drop_backup(self, phase):
        """Removes a phase's epoch backups once its result is safe (chief only)."""
        if self.path and self.chief:
            shutil.rmtree(self._file(phase, "_backup"), ignore_errors=True)

    def result(self, phase):
        """A finished phase's stored result dict, or None."""
        if not self.path:
            return None
        try:
            with open(self._file(phase, ".json"), encoding="utf-8") as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def save_result(self, phase, result):
        """Stores a phase's result dict (written last: it marks the phase done)."""
        if self.path and self.chief:
            _io.ensure_dir(os.path.dirname(self._file(phase, ".json")))
            _io.write_json(self._file(phase, ".json"), result)

    def fit(self, model, dataset, phase, epochs, verbose=1, validation_data=None):
        """``model.fit`` that, with a checkpoint folder, resumes after a kill.

        Returns the full history (all epochs, also across restarts).
        """
        callbacks, start = [], 0
        history_path = self.path and self._file(phase, "_history.csv")
        if self.path:
            _io.ensure_dir(os.path.dirname(history_path))
            # The history row is written before the backup moves on: a kill in
            # between repeats that epoch, and the reader keeps its last row.
            # Only the chief writes the shared history (no collective involved).
            if self.chief:
                callbacks.append(keras.callbacks.CSVLogger(history_path, append=True))
            # Kept until the phase's result is saved (mark_done / drop_backup).
            backup = AtomicBackupAndRestore(self._file(phase, "_backup"), delete_on_end=False,
                                            chief=self.chief)
            callbacks.append(backup)
            start = backup.latest_epoch()
        steps = None
        if hasattr(dataset, "batches"):  # keras_kd.epochs.Epochs: resume at the epoch itself
            dataset, steps = dataset.batches(min(start, epochs - 1), epochs), dataset.steps
        history = distribute.fit(
            model, dataset, epochs=epochs, verbose=verbose, shuffle=False,
            callbacks=callbacks, validation_data=validation_data, steps_per_epoch=steps,
        ).history
        if self.path and self.chief:
            history = read_history(history_path)
        return history

    def history(self, phase):
        """The stored history of a finished phase ({} if none was kept)."""
        path = self.path and self._file(phase, "_history.csv")
        return read_history(path) if path and os.path.exists(path) else {}


def read_history(path):
    """``{metric: [per-epoch values]}`` from a CSVLogger file written in append mode."""
    with open(path, newline="", encoding="utf-8") as f:
        by_epoch = {}
        for row in csv.DictReader(f):
            if row.get("epoch") == "epoch":  # a header repeated by append mode
                continue
            by_epoch[int(row["epoch"])] = row  # a repeated epoch: keep the last
        rows = [by_epoch[e] for e in sorted(by_epoch)]
    keys = [k for k in (rows[0] if rows else {}) if k != "epoch"]
    # CSVLogger writes "NA" for keys an epoch did not log (e.g. no validation).
    keys = [k for k in keys if any(r[k] != "NA" for r in rows)]
    return {k: [float(r[k]) for r in rows] for k in keys}


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
            return folder, int(latest["epoch"])
        except (OSError, ValueError, KeyError, TypeError) as err:
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
        views.set_initial_epoch(self.model, epoch)

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
        self.model.save_weights(os.path.join(folder, "model.weights.h5"))
        previous = self._latest()
        _io.write_json(self._pointer, {"folder": folder_name, "epoch": done})
        if previous is not None and os.path.abspath(previous[0]) != os.path.abspath(folder):
            shutil.rmtree(previous[0], ignore_errors=True)

    def on_train_end(self, logs=None):
        views.set_initial_epoch(self.model, None)  # a later fit() starts from its own epoch
        if self.delete_on_end and self._writes() and os.path.exists(self.backup_dir):
            shutil.rmtree(self.backup_dir, ignore_errors=True)


def open_folder(config, checkpoint_dir, settings, **words):
    """The strategy and the :class:`RunFolder` of a run of ``config``.

    ``words`` go to the folder's errors (``kind``, ``flag``).
    """
    distribute.configure_cpu_devices(config.num_cpu_devices)
    strategy = distribute.get_strategy(config.strategy)
    distribute.check_global_batch(config.batch_size, strategy.num_replicas_in_sync)
    try:
        folder = RunFolder(strategy, config.output_dir, checkpoint_dir, settings, **words)
    except tf.errors.OpError as err:
        flag = checkpoint_dir and words.get("flag", "--checkpoint_dir")
        raise as_user_error(err, strategy, flag) from err
    return strategy, folder


def as_user_error(err, strategy, resumes_from=None):
    """A TensorFlow error turned into the error the user should see; ``resumes_from``:
    the flag of the folder the run resumes from (None: it cannot resume)."""
    if distribute.is_multi_worker(strategy) and distribute.is_worker_lost(err):
        resume = (f"it resumes from the last epoch backup in {resumes_from}" if resumes_from
                  else "it starts over (pass --checkpoint_dir to resume instead)")
        return distribute.WorkerLostError(
            f"another worker stopped ({errors.short(err)}). Fix: restart every stopped "
            f"worker with its same command; {resume}.")
    if isinstance(err, tf.errors.InvalidArgumentError):
        # e.g. the augmentation's value-range check, or a label out of range
        return ValueError(f"TensorFlow stopped the run: {errors.short(err, 600)}")
    return err
