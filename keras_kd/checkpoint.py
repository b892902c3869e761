"""Runs that survive being killed: the run folder and its resume protocol.

One :class:`RunFolder` per run (the job, or a sweep) decides once who the
chief is and owns every file that makes a run resumable, in the checkpoint
folder:

- ``config.json``: the settings the folder belongs to; another run's settings
  are refused (also across workers, which must share the folder);
- ``run.token``: a random number naming the run (the chief writes it once);
- ``<phase>.keras``: a finished phase's model (its marker), with its sha256 in
  ``<phase>.keras.sha256`` (``sha256sum`` format, checked on every load: a
  different model file swapped in is an error, never silently loaded);
  ``<phase>.json``: a finished phase's result;
- ``<phase>_backup/``: epoch backups of the phase being trained
  (:class:`AtomicBackupAndRestore`), and ``<phase>_history.csv``, its history.

The output folder holds one run: a non-empty one is refused unless it is the
output of the run the checkpoint folder resumes (``checkpoint.json`` in it
names that checkpoint folder and its ``run.token``; a sweep's output folder is
its checkpoint folder). A run that fails before writing anything but this
bookkeeping removes the bookkeeping it wrote and the folders it created
(:meth:`RunFolder.discard`): the corrected command then runs as if it were the first.

::

    folder = RunFolder(strategy, output_dir="out", checkpoint_dir="ckpt", settings={...})
    with folder:                                          # a failed run leaves no empty folder
        path = folder.finished("teacher")                 # a finished phase: loaded, not trained
        history = folder.fit(model, dataset, "teacher", epochs=12)   # resumes after a kill
        folder.mark_done("teacher", model)

Epoch backups are :class:`keras_kd.backups.AtomicBackupAndRestore` (crash-safe,
checksummed); both names are importable from here too.
"""

import contextlib
import csv
import datetime
import importlib.util
import json
import os
import random
import re
import shutil
import tempfile
import zlib

import keras
import tensorflow as tf

from keras_kd import _io, distribute, errors, fitting
from keras_kd.backups import AtomicBackupAndRestore, CorruptCheckpointError

__all__ = ["RunFolder", "AtomicBackupAndRestore", "CorruptCheckpointError", "default_output_dir",
           "open_folder", "as_user_error"]

#: In the checkpoint folder: the run's settings, and its identity (a random number).
CONFIG, TOKEN = "config.json", "run.token"
#: In an output folder written by a checkpointed run: which checkpoint resumes it.
MARKER = "checkpoint.json"
#: Beside a finished phase's ``<phase>.keras``: its sha256.
SHA256 = ".sha256"
_BOOKKEEPING = {CONFIG, TOKEN, MARKER}
#: Entries an operating system makes in any folder (a fresh mount point's ``lost+found``,
#: macOS's and Windows's folder metadata): they make no folder another run's.
_OS_MADE = {".DS_Store", ".Spotlight-V100", ".Trashes", ".fseventsd", "Thumbs.db",
            "desktop.ini", "lost+found"}
_WORKER_FOLDER = re.compile(r"worker-\d+")


def default_output_dir(base="kd_runs"):
    """``<base>/<YYYYmmdd-HHMMSS>`` (``-2``, ``-3``, … if it exists): a fresh folder name."""
    base = os.path.join(base, datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))
    path, n = base, 1
    while os.path.exists(path):
        n += 1
        path = f"{base}-{n}"
    return path


def _same(a, b):
    return os.path.realpath(a) == os.path.realpath(b)


def _inside(path, folder):
    """Whether ``path`` lies inside ``folder`` (and is not ``folder`` itself)."""
    rel = os.path.relpath(os.path.realpath(path), os.path.realpath(folder))
    return rel != os.curdir and rel != os.pardir and not rel.startswith(os.pardir + os.sep)


def _read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


class RunFolder:
    """A run's output folder and its checkpoint folder, with the resume protocol.

    Args:
      strategy: the run's ``tf.distribute`` strategy. Whether this process is
        the chief (it writes the shared files) is decided here, once.
      output_dir: where the run's results go (default
        :func:`default_output_dir`); a non-chief worker writes into
        ``<output_dir>/worker-<i>`` instead. It must be absent or empty (what an
        operating system makes, like ``lost+found`` or ``.DS_Store``, does not
        count), or be the output folder of the run ``checkpoint_dir`` resumes
        (ValueError otherwise, on every worker: a folder holds one run, never a
        mix of two).
      checkpoint_dir: the folder that makes the run resumable, or None (then
        nothing is kept and nothing resumes). It may be ``output_dir`` itself,
        or a folder inside it, or outside it.
      settings: a JSON-able dict of what the results depend on. The first run
        stores it; a later run with other settings is refused.
      kind, flag: words for the errors ("run", "--checkpoint_dir").

    Under multi-worker training every worker must pass the same
    ``checkpoint_dir`` on storage they all see: the workers compare what they
    find (a token the chief leaves, the settings, the finished phases and
    backups) before anything trains, and a mismatch is an error, not a hang.

    Used as a context manager, a run that raises calls :meth:`discard`.
    """

    #: Whether :meth:`fit` writes TensorBoard event files to ``<out>/tensorboard/<phase>/``
    #: (``--tensorboard``; :func:`open_folder` sets it from the config).
    tensorboard = False

    def __init__(self, strategy, output_dir=None, checkpoint_dir=None, settings=None, *,
                 kind="run", flag="--checkpoint_dir"):
        self.strategy = strategy
        self.chief = distribute.is_chief(strategy)
        self.path = str(checkpoint_dir) if checkpoint_dir else None
        self.kind, self.flag = kind, flag
        out = str(output_dir or default_output_dir())
        if not self.chief:  # the chief writes the run's files; the others keep theirs apart
            out = os.path.join(out, f"worker-{distribute.worker_index(strategy)}")
        self.out, self._created, self._wrote = out, [], []
        self._check_output(out)  # before anything is written
        try:
            if self.path:
                self._create(self.path, flag)
                self._check_settings(settings or {})
            self._create(out, "--output_dir")
            if self.path and not _same(out, self.path):
                marker = {"checkpoint_dir": os.path.abspath(self.path), "run_token": self.token()}
                if self._marker(out) != marker:
                    self._write(os.path.join(out, MARKER), marker)
        except BaseException:
            self.discard()
            raise

    def _create(self, folder, what):
        if not os.path.exists(folder):
            self._created.append(folder)
        _io.ensure_dir(folder, what)

    def _write(self, path, content):
        """Writes a bookkeeping file (JSON, or text), remembered for :meth:`discard`."""
        if isinstance(content, str):
            _io.write_text(path, content)
        else:
            _io.write_json(path, content)
        self._wrote.append(path)

    def _start_over(self):
        """How to start over instead of resuming the checkpoint folder: with an output
        folder of its own, that too (its ``checkpoint.json`` names the old checkpoint,
        so a new or emptied checkpoint folder alone is refused there next)."""
        try:
            held = os.path.isdir(self.out) and self._own(self.out)
        except OSError:
            held = True
        if self.flag == "--output_dir" or _same(self.out, self.path) or not held:
            return f"use a new {self.flag}, or delete {self.path!r} to start over"
        if _inside(self.path, self.out):
            return (f"use a new {self.flag} and a new --output_dir, or delete {self.out!r} "
                    "(the checkpoint folder inside it too) to start over")
        return (f"use a new {self.flag} and a new --output_dir, or delete {self.path!r} "
                f"and {self.out!r} to start over")

    # -- one run per output folder ---------------------------------------------

    def token(self):
        """The checkpointed run's identity (``run.token``), or None (none yet, or no checkpoint)."""
        path = self.path and os.path.join(self.path, TOKEN)
        if not (path and os.path.exists(path)):
            return None
        try:
            with open(path, encoding="utf-8") as f:
                return str(int(f.read().strip()))
        except (OSError, ValueError) as err:
            raise CorruptCheckpointError(
                f"{path!r} is unreadable ({err}), so {self.flag}={self.path!r} cannot be "
                f"matched with its output folder. Fix: {self._start_over()}.") from err

    @staticmethod
    def _marker(out):
        """The ``checkpoint.json`` of the output folder ``out`` (None: none, or unreadable)."""
        try:
            marker = _read_json(os.path.join(out, MARKER))
        except (OSError, ValueError):
            return None
        return marker if isinstance(marker, dict) else None

    def _own(self, folder):
        """What ``folder`` holds of its own: not what an operating system made there,
        nor this run's other folder inside it (the checkpoint folder inside the output
        folder, or the reverse), nor, for the chief under multi-worker training, the
        other workers' ``worker-<i>`` folders."""
        skip = set(_OS_MADE)
        for other in (self.path, self.out):
            if other and _inside(other, folder):
                rel = os.path.relpath(os.path.realpath(other), os.path.realpath(folder))
                skip.add(rel.split(os.sep)[0])
        multi = distribute.is_multi_worker(self.strategy)
        return sorted(
            name for name in os.listdir(folder)
            if name not in skip and not (multi and self.chief and _WORKER_FOLDER.fullmatch(name)))

    def _check_output(self, out):
        """Raises ValueError unless ``out`` may take this run's files: absent, empty, or
        the output folder of the run the checkpoint folder resumes.

        Under multi-worker training every worker decides, then all learn each
        other's verdicts (one collective, reached by every worker whatever its own
        verdict): one worker's refusal stops every worker, none waits for it."""
        try:
            refusal = self._refusal(out)
        except Exception as err:  # e.g. an unreadable run.token: a verdict too
            refusal = err
        if distribute.is_multi_worker(self.strategy):
            seen = distribute.gather_from_workers(
                self.strategy,
                [refusal is not None, self.chief, distribute.worker_index(self.strategy)])
            refused = seen[seen[:, 0] != 0]
            if refusal is None and len(refused):
                _, chief, index = (int(v) for v in refused[0])
                who = "the chief" if chief else f"worker {index}"
                refusal = ValueError(
                    f"{who}'s --output_dir is not empty: it holds another run's files (that "
                    "worker's error names them), so every worker stops before anything is "
                    "written: a multi-worker run needs them all. Fix: see that worker's "
                    "error, then rerun every worker with a new --output_dir (or delete the "
                    "old one).")
        if refusal is not None:
            raise refusal

    def _refusal(self, out):
        """The ValueError refusing ``out`` (see :meth:`_check_output`), or None."""
        if not os.path.isdir(out):
            return None  # absent (created later), or a file (ensure_dir's error)
        held = self._own(out)
        if not held:
            return None
        marker = self._marker(out)
        if self.path:
            if _same(out, self.path) and os.path.exists(os.path.join(self.path, CONFIG)):
                return None  # the checkpoint folder is the output folder: its own run's
            token = self.token()
            if token is not None and marker is not None and marker.get("run_token") == token:
                return None  # this run's checkpointed resume
        owner = marker.get("checkpoint_dir") if marker else None
        names = ", ".join(held[:4]) + (", …" if len(held) > 4 else "")
        if owner and self.path and _same(owner, self.path):
            why = (f"; they belong to an earlier run checkpointed in {owner!r} (its {TOKEN} "
                   "differs: that checkpoint folder was deleted or replaced since)")
            owner = None
        elif owner and self.path:
            why = (f"; they belong to the run checkpointed in {owner!r}, not to the one in "
                   f"{self.flag}={self.path!r}")
        elif owner:
            why = f"; they belong to the run checkpointed in {owner!r}"
        elif self.path:
            why = f"; no {self.kind} checkpointed in {self.flag}={self.path!r} wrote them"
        else:
            why = ""
        fix = (f"pass a new --output_dir (or none: ./kd_runs/<timestamp>), or delete "
               f"{out!r}")
        if self.flag == "--output_dir":  # the folder is its own checkpoint (a sweep)
            fix += f" (a {self.kind} resumes only in a folder it made itself)"
        elif owner:
            fix += f", or pass --checkpoint_dir={owner!r} to resume the run that wrote it"
        elif not self.path and distribute.restarts_so_far():
            why += (" (this worker's earlier attempt, maybe: it was restarted after another "
                    "worker stopped, and without --checkpoint_dir a restart starts over, so "
                    "it cannot reuse the folder its first attempt wrote)")
            fix = ("rerun every worker with a new --output_dir (or delete "
                   f"{out!r}), and pass --checkpoint_dir so that a restart resumes instead")
        return ValueError(
            f"--output_dir={out!r} is not empty: it holds another run's files "
            f"({names}){why}. A run folder holds one run: this one would overwrite some "
            f"of those files and leave the others beside its own. Fix: {fix}.")

    # -- cleaning up after a failed run ----------------------------------------

    def discard(self):
        """Undoes what a run that failed before writing a result wrote: the bookkeeping
        files it wrote (``checkpoint.json``, and ``config.json`` / ``run.token`` where it
        wrote them first), then the folders it created, once empty. A rerun of the
        corrected command then runs as if it were the first, also in folders that existed
        before (those are never removed).

        Nothing is removed from a folder holding anything else of value (a saved
        ``teacher.keras``, an epoch backup): the output folder's ``checkpoint.json`` and
        the checkpoint it names are then kept together, so the same command resumes.
        The chief alone cleans the shared checkpoint folder. Returns the folders removed.
        """
        out_bare = self._bare(self.out)
        for path in self._wrote:
            marker = os.path.basename(path) == MARKER
            if out_bare and (marker or self._bare(os.path.dirname(path))):
                with contextlib.suppress(OSError):
                    os.remove(path)
        removed = []
        mine = [f for f in self._created if self.chief or f != self.path]
        for folder in sorted(mine, key=lambda f: -len(os.path.abspath(f))):  # inner first
            try:
                os.rmdir(folder)  # only an empty one
            except OSError:
                continue
            removed.append(folder)
        return removed

    def _bare(self, folder):
        """Whether ``folder`` holds nothing of value: no file but bookkeeping (absent: True)."""
        try:
            return set(self._own(folder)) <= _BOOKKEEPING
        except OSError:
            return not os.path.exists(folder)

    def __enter__(self):
        return self

    def __exit__(self, kind, err, tb):
        if kind is not None:
            self.discard()
        return False

    # -- settings and the workers' shared view -------------------------------

    def _check_settings(self, settings):
        path = os.path.join(self.path, CONFIG)
        if self.chief and not os.path.exists(os.path.join(self.path, TOKEN)):
            self._write(os.path.join(self.path, TOKEN), f"{random.getrandbits(62)}\n")
        self._check_workers_share()
        if os.path.exists(path):
            try:
                saved = _read_json(path)
                if not isinstance(saved, dict):
                    raise ValueError(f"it holds a JSON {type(saved).__name__}, not an object")
            except (OSError, ValueError) as err:
                raise CorruptCheckpointError(
                    f"{path!r} is unreadable ({err}): the settings {self.flag}={self.path!r} "
                    f"was made with are unknown, so its finished phases cannot be reused. "
                    f"Fix: {self._start_over()}."
                ) from err
            if saved != settings:
                changed = sorted(k for k in set(saved) | set(settings)
                                 if saved.get(k) != settings.get(k))
                raise ValueError(
                    f"{self.flag}={self.path!r} holds a {self.kind} with other settings "
                    f"({', '.join(changed)} differ), so it cannot be resumed with these "
                    f"flags. Fix: {self._start_over()}."
                )
        elif self.chief:
            self._write(path, settings)

    def _state(self):
        """One integer summing up what the folder holds (compared across workers)."""
        seen = []
        for root, dirs, files in os.walk(self.path):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(files):
                rel = os.path.relpath(os.path.join(root, name), self.path)
                if name in (CONFIG, "latest.json", TOKEN):
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
        chief first leaves its random ``run.token`` there; after a barrier every
        worker reads it back, and the token is compared with the rest.
        """
        if not distribute.is_multi_worker(self.strategy):
            return
        token_path = os.path.join(self.path, TOKEN)
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
        """Path of a finished phase's model, or None (also without a checkpoint folder).

        The file's sha256 is checked against the one recorded when the phase was
        marked done: CorruptCheckpointError (naming the file and the fix) if it
        changed or none was recorded, never another model loaded silently.
        """
        if not self.path:
            return None
        path = self._file(phase, ".keras")
        if not os.path.exists(path):
            return None
        fix = (f"Fix: delete {path!r}"
               + (f" and {self._file(phase, '.json')!r}"
                  if os.path.exists(self._file(phase, ".json")) else "")
               + f" to redo the {phase} phase; or {self._start_over()}.")
        try:
            with open(path + SHA256, encoding="utf-8") as f:
                recorded = f.read().split()[0]
        except (OSError, IndexError) as err:
            raise CorruptCheckpointError(
                f"{path!r} has no recorded sha256 ({os.path.basename(path)}{SHA256} is missing "
                "or empty: written by an older keras_kd, or copied in), so it cannot be "
                f"trusted as this {self.kind}'s finished {phase} phase. {fix}") from err
        try:
            _io.check_sha256(path, recorded)
        except _io.ChecksumError as err:
            if err.reason == "changed":
                why = (f"changed after its {phase} phase finished (its sha256 is "
                       f"{err.found[:12]}…, {os.path.basename(path)}{SHA256} records "
                       f"{recorded[:12]}…), so it is not the model this {self.kind} trained")
            else:  # gone or unreadable since it was seen
                why = f"cannot be read ({err.__cause__ or err.reason})"
            raise CorruptCheckpointError(f"{path!r} {why}. {fix}") from err
        return path

    def mark_done(self, phase, model):
        """Saves a finished phase's model (the chief) with its sha256, then drops its
        epoch backups.

        The checksum is written first, then the model is moved into place: a kill
        in between leaves no finished phase (it is redone), never an unchecked one.
        A phase redone over an earlier ``<phase>.keras`` removes that file first, so
        that no kill leaves it beside the new checksum.
        """
        if not self.path:
            return
        if self.chief:
            path = self._file(phase, ".keras")
            for old in (path, path + SHA256):  # the model first: no moment without its checksum
                if os.path.lexists(old):
                    os.remove(old)
            with _io.atomic_path(path) as tmp:
                model.save(tmp)
                _io.write_text(path + SHA256,
                               f"{_io.sha256_file(tmp)}  {os.path.basename(path)}\n")
        else:  # saving is a collective under multi-worker: save, then discard
            _scratch_save(model)
        self.drop_backup(phase)  # only now: the phase's result is safe

    def save_output(self, model, name):
        """Saves ``model`` as ``<output folder>/<name>.keras``; returns the path.

        Where that file is this run's finished phase ``name`` itself (the output
        folder is the checkpoint folder, as in a sweep), it is kept as it is:
        saving again would change its bytes and no longer match its sha256.
        """
        path = os.path.join(self.out, f"{name}.keras")
        if (self.path and _same(path, self._file(name, ".keras"))
                and os.path.exists(path + SHA256) and self.finished(name)):
            if distribute.is_multi_worker(self.strategy):
                _scratch_save(model)  # the other workers save (a collective): join them
            return path
        return _io.save_model(model, path)

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
        if self.tensorboard:
            callbacks.append(keras.callbacks.TensorBoard(os.path.join(self.out, "tensorboard", phase)))
        steps = None
        if hasattr(dataset, "batches"):  # keras_kd.epochs.Epochs: resume at the epoch itself
            dataset, steps = dataset.batches(min(start, epochs - 1), epochs), dataset.steps
        history = fitting.fit(  # --verbose=3: progress bars (and TensorFlow's log lines)
            model, dataset, role=f"the {phase} phase's training data", epochs=epochs,
            verbose=1 if verbose >= 3 else verbose, shuffle=False, callbacks=callbacks,
            validation_data=validation_data, steps_per_epoch=steps,
        ).history
        if self.path and self.chief:
            history = read_history(history_path)
        return history

    def history(self, phase):
        """The stored history of a finished phase ({} if none was kept)."""
        path = self.path and self._file(phase, "_history.csv")
        return read_history(path) if path and os.path.exists(path) else {}


def _scratch_save(model):
    """Saves ``model`` into a scratch folder, then deletes it: how a worker joins a save,
    which is a collective under multi-worker training, without keeping a copy."""
    with tempfile.TemporaryDirectory() as scratch:
        _io.save_model(model, os.path.join(scratch, "model.keras"))


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


def open_folder(config, checkpoint_dir, settings, **words):
    """The strategy and the :class:`RunFolder` of a run of ``config``.

    ``words`` go to the folder's errors (``kind``, ``flag``).
    """
    distribute.configure_cpu_devices(config.num_cpu_devices)
    strategy = distribute.get_strategy(config.strategy)
    distribute.check_global_batch(config.batch_size, strategy.num_replicas_in_sync)
    if getattr(config, "tensorboard", False) and importlib.util.find_spec("tensorboard") is None:
        raise ValueError("--tensorboard needs the tensorboard package (tf.summary writes "
                         "through it). Fix: pip install tensorboard, or drop --tensorboard.")
    try:
        folder = RunFolder(strategy, config.output_dir, checkpoint_dir, settings, **words)
        folder.tensorboard = bool(getattr(config, "tensorboard", False))
    except tf.errors.OpError as err:
        flag = checkpoint_dir and words.get("flag", "--checkpoint_dir")
        raise as_user_error(err, strategy, flag) from err
    return strategy, folder


def as_user_error(err, strategy, resumes_from=None):
    """A TensorFlow error turned into the error the user should see; ``resumes_from``:
    the flag of the folder the run resumes from (None: it cannot resume)."""
    if distribute.is_multi_worker(strategy) and distribute.is_worker_lost(err):
        if resumes_from:
            fix = ("restart every stopped worker with its same command; it resumes from the "
                   f"last epoch backup in {resumes_from}")
        else:  # the same command would find its --output_dir holding this attempt's files
            fix = ("restart every worker with a new --output_dir (without --checkpoint_dir "
                   "the run starts over, and cannot reuse a folder its first attempt wrote "
                   "in), and pass --checkpoint_dir so that a next restart resumes instead")
        return distribute.WorkerLostError(
            f"another worker stopped ({errors.short(err)}). Fix: {fix}.")
    if isinstance(err, tf.errors.InvalidArgumentError):
        # e.g. the augmentation's value-range check, or a label out of range
        return ValueError(f"TensorFlow stopped the run: {errors.short(err, 600)}")
    return err
