"""Hyperparameter sweeps against one teacher: ``keras-kd sweep``.

``run(SweepConfig(...))`` trains (or loads) ONE teacher, then distils one
student per point of the grid

    temperature × alpha × distillation_loss × student_arch

and ranks them by validation accuracy. Every trial starts from the same
state: the same data order (the split re-read and shuffled with ``seed``),
the same initial student weights per architecture (``models.build(...,
seed=seed + 1)``, as the main job's baseline and student), the same optimizer
settings and ``epochs``. A trial is therefore the same computation as an
independent ``Distiller(teacher, student, T, alpha, loss).fit(...)`` under
``job.deterministic(seed)`` (tests/test_sweep.py checks it).

With ``augment="none"`` the teacher runs once: its logits on the training
split are stored in ``<output_dir>/teacher_cache`` (:mod:`keras_kd.cache`)
and every trial trains from them (offline distillation). With augmentation
the teacher runs online, on each augmented batch, as in the main job.

Search: keras-tuner's grid oracle drives the trials (objective
``val_accuracy``, maximised), with its state in ``<output_dir>/tuner``
(``overwrite=False``). keras-tuner 1.4.8's ``GridSearchOracle`` does not
persist where it is in the grid, and a search resumed after a crash fails
with ``KeyError`` (keras-team/keras-tuner#1055); :class:`GridOracle` derives
the next point from the persisted set of tried values instead. A trial is
done when its ``result.json`` exists: rerunning the same command after a
crash (or after deleting a trial's ``result.json``) runs only the trials
without one; keras-tuner's own reload puts the interrupted trial back in its
retry queue. The Distiller is never saved: a trial folder holds keras-tuner's
``trial.json``, ``result.json`` (metrics and history) and ``student.keras``
(the student alone).

Outputs (written atomically): ``sweep.md`` (the ranked table), ``sweep.json``
(every row, the teacher's and baselines' figures, the settings),
``best.flags`` (the best configuration as a flagfile of the main
``keras-kd``), ``best_student.keras``, ``teacher.keras`` (if trained here),
``accuracy_vs_temperature.png`` and ``best_curves.png``.
"""

import contextlib
import dataclasses
import io
import itertools
import json
import math
import os
import shutil
import time
import warnings

import keras
import keras_tuner as kt
import numpy as np
import tensorflow as tf

from keras_kd import _io, augment, cache, data, job, models, report
from keras_kd.distiller import Distiller

__all__ = [
    "SweepConfig", "run", "parse_list", "GRID_FLAGS", "GridOracle", "best_flags", "train_trial",
]

#: The grid's axes, named as the main ``keras-kd`` flags they become in best.flags.
GRID_FLAGS = ("temperature", "alpha", "distillation_loss", "student_arch")
_FIELDS = {"temperature": "temperatures", "alpha": "alphas",
           "distillation_loss": "distillation_losses", "student_arch": "student_archs"}
_EXAMPLES = {"temperature": "1,2,4,8", "alpha": "0.5,0.9",
             "distillation_loss": "kl,dkd", "student_arch": "mlp:hidden=400x400,cnn:width=0.25"}
FORMAT = "keras_kd.sweep/1"
PROJECT = "sweep"
RESULT = "result.json"
STUDENT = "student.keras"

_D = job.JobConfig()


@dataclasses.dataclass
class SweepConfig:
    """A sweep: the grid (four tuples) and the settings every trial shares.

    The shared settings mean what the main job's flags of the same name mean
    (:class:`keras_kd.job.JobConfig`). ``baseline``: also train each student
    architecture on the labels alone, for reference. ``use_cache``: with
    ``augment="none"``, train the trials from cached teacher logits (False:
    run the teacher at every step even then).
    """

    temperatures: tuple = (1.0, 2.0, 4.0, 8.0)
    alphas: tuple = (0.5, 0.9)
    distillation_losses: tuple = ("kl",)
    student_archs: tuple = (_D.student_arch,)
    dataset: str = _D.dataset
    data_dir: str | None = None
    image_size: tuple | None = None
    teacher: str | None = None
    teacher_arch: str = _D.teacher_arch
    teacher_epochs: int = _D.teacher_epochs
    epochs: int = _D.epochs
    batch_size: int = _D.batch_size
    augment: str = _D.augment
    optimizer: str = _D.optimizer
    learning_rate: float = _D.learning_rate
    seed: int = _D.seed
    output_dir: str | None = None
    baseline: bool = True
    use_cache: bool = True
    deterministic: bool = True
    verbose: int = 0
    flags_used: dict = dataclasses.field(default_factory=dict)

    def grid(self):
        """``{flag: [values]}`` in :data:`GRID_FLAGS` order."""
        return {flag: list(getattr(self, _FIELDS[flag])) for flag in GRID_FLAGS}

    def job_config(self, **point):
        """The main job's :class:`~keras_kd.job.JobConfig` for one grid point."""
        first = {flag: values[0] for flag, values in self.grid().items() if values}
        return job.JobConfig(
            dataset=self.dataset, data_dir=self.data_dir, image_size=self.image_size,
            teacher=self.teacher, teacher_arch=self.teacher_arch,
            teacher_epochs=self.teacher_epochs, epochs=self.epochs,
            batch_size=self.batch_size, augment=self.augment, optimizer=self.optimizer,
            learning_rate=self.learning_rate, seed=self.seed, export=False,
            **{**first, **point},
        )

    def validate(self):
        """Raises ValueError: an empty or repeated grid value, or one the job refuses.

        Every value is checked with the main job's own validators
        (:meth:`keras_kd.job.JobConfig.validate`: temperature > 0, alpha in
        [0, 1], a registered loss, a valid architecture spec), and so are the
        shared settings. Normalises the grid in place: numbers become floats,
        loss names lower case, specs stripped.
        """
        self.temperatures = tuple(_as_number("temperature", v) for v in self.temperatures)
        self.alphas = tuple(_as_number("alpha", v) for v in self.alphas)
        self.distillation_losses = tuple(str(v).strip().lower() for v in self.distillation_losses)
        self.student_archs = tuple(str(v).strip() for v in self.student_archs)
        keys = {"temperature": float, "alpha": float,
                "distillation_loss": str, "student_arch": _spec_key}
        for flag, values in self.grid().items():
            if not values:
                raise ValueError(f"--{flag} is empty: the grid needs at least one value, "
                                 f"e.g. --{flag}={_EXAMPLES[flag]}.")
            for value in values:
                self.job_config(**{flag: value}).validate()
            seen = {}
            for value in values:
                key = keys[flag](value)
                if key in seen:
                    raise ValueError(
                        f"--{flag} lists {seen[key]!r} twice"
                        + (f" (as {value!r})" if value != seen[key] else "")
                        + ": each grid value must be distinct. Fix: drop the repeat."
                    )
                seen[key] = value
        if self.verbose not in (0, 1, 2):
            raise ValueError(f"--verbose must be 0, 1 or 2, got {self.verbose}.")

    def settings(self):
        """What the results depend on (compared when a sweep is resumed)."""
        out = {k: v for k, v in dataclasses.asdict(self).items()
               if k not in ("output_dir", "verbose", "flags_used")}
        out["image_size"] = list(self.image_size) if self.image_size else None
        for field in _FIELDS.values():
            out[field] = list(out[field])
        return out


def _spec_key(spec):
    """Architecture specs that build the same model compare equal."""
    arch, options = models.parse_spec(spec)
    return arch, tuple(sorted(options.items()))


def _as_number(flag, value):
    if isinstance(value, bool):
        raise ValueError(f"--{flag} values must be numbers, got {value!r}.")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(
            f"--{flag}: {value!r} is not a number. Fix: pass comma-separated "
            f"numbers, e.g. --{flag}={_EXAMPLES[flag]}."
        ) from None
    return number


# ---------------------------------------------------------------------------
# Flags → grid values.


def parse_list(flag, texts):
    """Grid values from the text of a (repeatable) flag: ``["1,2", "4"]`` → ``[1.0, 2.0, 4.0]``.

    Every occurrence of the flag holds one or more comma-separated values.
    ``student_arch`` specs contain commas themselves (``mlp:hidden=8,dropout=0.2``):
    there a comma starts a new spec only if what follows is not a
    ``key=value`` option of the previous one, so
    ``mlp:hidden=400x400,dropout=0.2,cnn:width=0.25`` is two specs. The
    flag may also be repeated, one spec per occurrence.

    Raises:
      ValueError: an empty list or item (e.g. ``--temperature=`` or ``1,,2``),
        or a number that does not parse. Ranges and repeats are checked by
        :meth:`SweepConfig.validate`.
    """
    if flag not in GRID_FLAGS:
        raise ValueError(f"unknown grid flag {flag!r}; valid: {', '.join(GRID_FLAGS)}.")
    if isinstance(texts, str):
        texts = [texts]
    items = []
    for text in texts or []:
        parts = [p.strip() for p in str(text).split(",")]
        if flag == "student_arch":
            grouped = []
            for part in parts:
                if grouped and part and _is_option(part):
                    grouped[-1] += "," + part
                else:
                    grouped.append(part)
            parts = grouped
        items += parts
    if not items or items == [""]:
        raise ValueError(
            f"--{flag} is empty: the grid needs at least one value. Fix: pass "
            f"comma-separated values, e.g. --{flag}={_EXAMPLES[flag]}."
        )
    if "" in items:
        raise ValueError(
            f"--{flag} has an empty item ({','.join(texts)!r}). Fix: separate values "
            f"by single commas, e.g. --{flag}={_EXAMPLES[flag]}."
        )
    if flag in ("temperature", "alpha"):
        return [_as_number(flag, item) for item in items]
    return items


def _is_option(part):
    """``key=value`` with no ``arch:`` before the ``=``: an option, not a spec."""
    key, eq, _ = part.partition("=")
    return bool(eq) and ":" not in key


# ---------------------------------------------------------------------------
# keras-tuner.


class GridOracle(kt.oracles.GridSearchOracle):
    """keras-tuner's grid oracle, resumable after a crash.

    ``GridSearchOracle`` (1.4.8) keeps its position in the grid in memory
    only (``_ordered_ids``, ``_populate_next``), so a search reloaded with
    ``overwrite=False`` fails with ``KeyError`` after its first trial
    (keras-team/keras-tuner#1055). Here the next point is the first
    combination, in grid order (the product of the hyperparameters' values
    in the order given), whose values were never tried: the oracle's
    persisted ``tried_so_far`` hashes, which survive a reload.
    """

    def populate_space(self, trial_id):
        space = self.get_space().space
        names = [hp.name for hp in space]
        for combination in itertools.product(*(hp.values for hp in space)):
            values = dict(zip(names, combination))
            if not self._duplicate(values):
                return {"status": kt.engine.trial.TrialStatus.RUNNING, "values": values}
        if self.ongoing_trials:
            return {"status": kt.engine.trial.TrialStatus.IDLE, "values": None}
        return {"status": kt.engine.trial.TrialStatus.STOPPED, "values": None}


class _TrialFailed(kt.errors.FatalError):
    """A trial raised: stop the search (keras-tuner would otherwise move on)."""

    def __init__(self, trial_id, values, error):
        super().__init__(str(error))
        self.trial_id, self.values, self.error = trial_id, values, error


class _Tuner(kt.engine.base_tuner.BaseTuner):
    """Runs ``trial_fn(trial_id, values, trial_dir) -> result dict`` per trial."""

    def __init__(self, oracle, directory, trial_fn):
        super().__init__(oracle, directory=directory, project_name=PROJECT, overwrite=False)
        self._trial_fn = trial_fn

    def run_trial(self, trial):
        values = dict(trial.hyperparameters.values)
        try:
            # A rerun (result.json deleted) starts from empty metrics: keras-tuner
            # would average the old and new values of the objective otherwise.
            stored = self.oracle.trials[trial.trial_id]
            stored.metrics = type(stored.metrics)()
            result = self._trial_fn(trial.trial_id, values, self.get_trial_dir(trial.trial_id))
        except Exception as err:
            raise _TrialFailed(trial.trial_id, values, err) from err
        return {k: result[k] for k in ("val_accuracy", "val_loss", "teacher_agreement")}

    def save_model(self, trial_id, model, step=0):
        """Nothing: a trial keeps its result.json and student.keras, not the Distiller."""


def _read_result(trial_dir, values):
    """A trial's result.json if it is complete and for these values, else None."""
    try:
        with open(os.path.join(trial_dir, RESULT), encoding="utf-8") as f:
            result = json.load(f)
    except (OSError, ValueError):
        return None
    if result.get("values") != values or not os.path.isfile(os.path.join(trial_dir, STUDENT)):
        return None
    return result


def _open_tuner(config, out, trial_fn):
    """The tuner in ``<out>/tuner``: new, or reloaded with what is still to run."""
    hps = kt.HyperParameters()
    for flag, values in config.grid().items():
        hps.Choice(flag, values, ordered=False)
    oracle = GridOracle(
        objective=kt.Objective("val_accuracy", direction="max"),
        hyperparameters=hps, tune_new_entries=False, allow_new_entries=False,
    )
    with contextlib.redirect_stdout(io.StringIO()):  # "Reloading Tuner from ..."
        try:
            tuner = _Tuner(oracle, os.path.join(out, "tuner"), trial_fn)
        except (ValueError, KeyError, RuntimeError) as err:
            raise RuntimeError(
                f"cannot reload the sweep's keras-tuner state in {out}/tuner ({err}). "
                "Fix: choose a new --output_dir (or delete this one) to start over."
            ) from err
    tuner.oracle.verbose = 0  # keras_kd logs one line per trial instead
    if {hp.name: list(hp.values) for hp in tuner.oracle.get_space().space} != config.grid():
        raise ValueError(
            f"{out}/tuner holds a sweep over another grid. Fix: use a new --output_dir."
        )
    # Trials that have no result.json (interrupted, or the file deleted) run
    # again: keras-tuner's reload queues the interrupted one; queue the rest.
    # (Oracle._retry_queue is keras-tuner's own list of trials to rerun; it
    # pops from the end, so grid order is kept by sorting it descending.)
    queue = oracle._retry_queue
    for trial_id, trial in tuner.oracle.trials.items():
        values = dict(trial.hyperparameters.values)
        if trial_id not in queue and _read_result(tuner.get_trial_dir(trial_id), values) is None:
            queue.append(trial_id)
    queue.sort(reverse=True)
    return tuner


# ---------------------------------------------------------------------------
# The sweep.


def run(config, log=print):
    """Runs the sweep; returns the results dict (also written to ``sweep.json``).

    Raises:
      ValueError: bad settings (see :meth:`SweepConfig.validate`), or an
        ``output_dir`` holding a sweep with other settings.
      RuntimeError: a trial failed (the sweep stops; rerunning the same
        command resumes it).
    """
    config.validate()
    out = _io.ensure_dir(config.output_dir or job.default_output_dir(), "--output_dir")
    _check_resumable(config, out)
    try:
        with job.deterministic(config.seed, config.deterministic):
            return _run(config, out, log)
    except _TrialFailed as err:
        cause = err.error
        if isinstance(cause, tf.errors.OpError):
            cause = job._short(cause)
        raise RuntimeError(
            f"trial {err.trial_id} ({_describe(err.values)}) failed: {cause}. Trials "
            "finished so far are kept: rerun the same command to resume."
        ) from err.error
    except tf.errors.InvalidArgumentError as err:
        raise ValueError(f"TensorFlow stopped the sweep: {job._short(err, 600)}") from err


def _check_resumable(config, out):
    """Ties ``out`` to one sweep's settings; refuses to resume another."""
    path = os.path.join(out, "sweep_config.json")
    current = config.settings()
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
        if saved != current:
            changed = sorted(k for k in set(saved) | set(current)
                             if saved.get(k) != current.get(k))
            raise ValueError(
                f"--output_dir={out!r} holds a sweep with other settings "
                f"({', '.join(changed)} differ), so it cannot be resumed with these "
                "flags. Fix: use a new --output_dir, or delete it to start over."
            )
    else:
        _io.write_json(path, current)


def _check_same_teacher(teacher, out):
    """Finished trials belong to one teacher: its weights' fingerprint is kept
    beside them, and a different teacher (e.g. a retrained ``--teacher`` file
    at the same path) cannot resume the sweep."""
    path = os.path.join(out, "teacher_fingerprint.txt")
    fingerprint = cache.teacher_fingerprint(teacher)
    if not os.path.exists(path):
        _io.write_text(path, fingerprint + "\n")
        return
    with open(path, encoding="utf-8") as f:
        saved = f.read().strip()
    if saved != fingerprint:
        raise ValueError(
            f"--output_dir={out!r} holds trials distilled from another teacher "
            "(its weights' fingerprint differs), so they cannot be resumed with "
            "this one. Fix: use a new --output_dir, or delete it to start over."
        )


def _describe(values):
    return (f"T={values['temperature']:g}, alpha={values['alpha']:g}, "
            f"loss={values['distillation_loss']}, student={values['student_arch']}")


def _run(config, out, log):
    started = time.perf_counter()
    keras.utils.set_random_seed(config.seed)
    _, val_ds, info = _load(config)
    log(f"data: {info.name}: {info.num_train} train / {info.num_validation} validation "
        f"images of {tuple(info.input_shape)}, {info.num_classes} classes")
    grid = config.grid()
    total = math.prod(len(v) for v in grid.values())
    log("grid: " + " × ".join(f"{len(v)} {k}" for k, v in grid.items())
        + f" = {total} trial{'s' if total != 1 else ''}")

    t0 = time.perf_counter()
    teacher, teacher_file, teacher_source = _teacher(config, info, out, log)
    teacher_s = time.perf_counter() - t0
    _check_same_teacher(teacher, out)
    labels = np.concatenate([np.asarray(y).reshape(-1) for _, y in val_ds])
    teacher_logits = _logits(models.logits_model(teacher, "teacher")[0], val_ds)
    teacher_scores = _scores(teacher_logits, labels, None)
    log(f"teacher: val accuracy {100 * teacher_scores['val_accuracy']:.2f}%")

    cached, cache_report = _teacher_cache(config, teacher, info, out, log)

    baselines = _baselines(config, info, val_ds, labels, out, log) if config.baseline else {}

    teacher_pred = teacher_logits.argmax(-1)
    counter = {"done": 0}

    def trial_fn(trial_id, values, trial_dir):
        result = _read_result(trial_dir, values)
        if result is not None:  # finished before a crash hid it from the oracle
            return result
        result = train_trial(config, info, teacher, values, val_ds, labels, teacher_pred,
                             trial_dir, cached)
        counter["done"] += 1
        log(f"trial {trial_id}: {_describe(values)}: val accuracy "
            f"{100 * result['val_accuracy']:.2f}%, val loss {result['val_loss']:.4f}, "
            f"agreement {100 * result['teacher_agreement']:.2f}%, {result['time_s']:.1f} s")
        return result

    tuner = _open_tuner(config, out, trial_fn)
    done = sum(_read_result(tuner.get_trial_dir(t), dict(tr.hyperparameters.values)) is not None
               for t, tr in tuner.oracle.trials.items())
    if done:
        log(f"resuming {out}: {done} of {total} trials already done")
    t0 = time.perf_counter()
    tuner.search()
    search_s = time.perf_counter() - t0

    rows = []
    for trial_id, trial in sorted(tuner.oracle.trials.items()):
        values = dict(trial.hyperparameters.values)
        result = _read_result(tuner.get_trial_dir(trial_id), values)
        if result is None:  # pragma: no cover - search() runs every trial or raises
            raise RuntimeError(f"trial {trial_id} ({_describe(values)}) has no result.")
        rows.append(result)
    if len(rows) != total:  # pragma: no cover
        raise RuntimeError(f"the sweep holds {len(rows)} trials, the grid {total}.")
    order = {k: {v: i for i, v in enumerate(vs)} for k, vs in grid.items()}
    rows.sort(key=lambda r: (-r["val_accuracy"], r["val_loss"],
                             [order[k][r["values"][k]] for k in GRID_FLAGS]))
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank
    best = rows[0]

    with _io.atomic_path(os.path.join(out, "best_student.keras")) as tmp:
        shutil.copyfile(os.path.join(tuner.get_trial_dir(best["trial_id"]), STUDENT), tmp)

    results = {
        "format": FORMAT,
        "dataset": {
            "name": info.name, "input_shape": list(info.input_shape),
            "num_classes": info.num_classes, "num_train": info.num_train,
            "num_validation": info.num_validation,
        },
        "grid": grid,
        "teacher": {
            "arch": None if config.teacher else config.teacher_arch,
            "source": teacher_source, "file": os.path.abspath(teacher_file),
            "params": models.count_params(teacher), **teacher_scores,
        },
        "baselines": baselines,
        "teacher_cache": cache_report,
        "rows": rows,
        "best": {k: v for k, v in best.items() if k != "history"},
        "timings": {"teacher_s": round(teacher_s, 2),
                    "search_s": round(search_s, 2),
                    "trials_trained_now": counter["done"],
                    "total_s": round(time.perf_counter() - started, 2)},
        "settings": config.settings(),
        "flags": config.flags_used,
        "output_dir": os.path.abspath(out),
    }
    _write_outputs(results, config, out)
    log(report.sweep_table(rows[:10]))
    if len(rows) > 10:
        log(f"... {len(rows) - 10} more in sweep.md")
    log(f"wrote {out}/: sweep.md, sweep.json, best.flags, best_student.keras, "
        "accuracy_vs_temperature.png, best_curves.png")
    return results


def _write_outputs(results, config, out):
    _io.write_json(os.path.join(out, "sweep.json"), results)
    _io.write_text(os.path.join(out, "best.flags"), best_flags(results, config))
    _io.write_bytes(os.path.join(out, "accuracy_vs_temperature.png"),
                    report.accuracy_vs_temperature_png(results))
    _io.write_bytes(os.path.join(out, "best_curves.png"), report.best_curves_png(results))
    _io.write_text(os.path.join(out, "sweep.md"), report.sweep_markdown(results))


def best_flags(results, config):
    """The best row as a flagfile of the main ``keras-kd`` (``--flagfile=best.flags``).

    It names the sweep's teacher file, so the main job distils from the same
    teacher. The main job shuffles its data as it trains teacher and baseline
    first, so its student matches the configuration, not bit for bit the
    sweep's.
    """
    best = results["best"]
    lines = [
        f"# keras-kd flagfile: the best of {len(results['rows'])} trials of the sweep in",
        f"# {results['output_dir']} (validation accuracy "
        f"{100 * best['val_accuracy']:.2f}%). Run: keras-kd --flagfile=best.flags",
        f"--dataset={config.dataset}",
    ]
    if config.data_dir:
        lines.append(f"--data_dir={config.data_dir}")
    if config.image_size:
        lines.append(f"--image_size={config.image_size[0]},{config.image_size[1]}")
    lines += [
        f"--teacher={results['teacher']['file']}",
        f"--teacher_arch={config.teacher_arch}",
        f"--teacher_epochs={config.teacher_epochs}",
    ]
    for flag in GRID_FLAGS:
        value = best["values"][flag]
        lines.append(f"--{flag}={float(value)!r}" if isinstance(value, float) else
                     f"--{flag}={value}")
    lines += [
        f"--optimizer={config.optimizer}",
        f"--learning_rate={float(config.learning_rate)!r}",
        f"--epochs={config.epochs}",
        f"--batch_size={config.batch_size}",
        f"--augment={config.augment}",
        f"--seed={config.seed}",
    ]
    return "\n".join(lines) + "\n"


def _load(config):
    """``data.load`` with the sweep's settings: (train, val, info)."""
    return data.load(config.dataset, batch_size=config.batch_size, seed=config.seed,
                     data_dir=config.data_dir, image_size=config.image_size)


def _online_train(config, info):
    """A fresh training pipeline: the split shuffled with ``seed``, augmented."""
    train, _, _ = _load(config)
    return augment.apply(train, config.augment, info.input_shape, seed=config.seed,
                         num_classes=info.num_classes)


def _teacher(config, info, out, log):
    """``(teacher, file, source)``: --teacher, this sweep's earlier one, or trained now."""
    if config.teacher:
        model = job.load_teacher(config.teacher, info)
        log(f"teacher: loaded {config.teacher}")
        return model, config.teacher, "loaded"
    path = os.path.join(out, "teacher.keras")
    if os.path.exists(path):
        model = job.load_teacher(path, info)
        log(f"teacher: loaded {path} (trained by an earlier run of this sweep)")
        return model, path, "trained"
    with job.deterministic(config.seed, config.deterministic):
        keras.utils.set_random_seed(config.seed)
        train = _online_train(config, info)
        model = models.build(config.teacher_arch, info.input_shape, info.num_classes,
                             name="teacher", seed=config.seed)
        job._plain_compile(model, config, False, augment.mixes_labels(config.augment))
        log(f"teacher: training {config.teacher_arch} for {config.teacher_epochs} epochs")
        model.fit(train, epochs=config.teacher_epochs, verbose=config.verbose, shuffle=False)
    _io.save_model(model, path)  # at once: a crash later does not lose it
    return model, path, "trained"


def _teacher_cache(config, teacher, info, out, log):
    """``(cached dataset or None, report)``: offline distillation when nothing augments.

    With ``augment="none"`` the teacher's logits on the (ordered) training
    split are computed once into ``<out>/teacher_cache`` (or loaded from
    there) and every trial trains from them; with augmentation the teacher
    must see each augmented batch, so it runs online.
    """
    if augment.parse(config.augment):
        return None, {"used": False, "reason": f"augment={config.augment} (teacher online)"}
    if not config.use_cache:
        return None, {"used": False, "reason": "use_cache=False (teacher online)"}

    train, _, _ = data.load_unbatched(config.dataset, data_dir=config.data_dir,
                                      image_size=config.image_size)
    cached, status = cache.get_or_build(teacher, train, os.path.join(out, "teacher_cache"),
                                        dataset_id=f"{config.dataset} train", log=log)
    return cached, {"used": True, **status}


def _trial_train(config, info, cached):
    """The training batches of one trial: from the cache, or online."""
    if cached is None:
        return _online_train(config, info)
    return data.finish(cached, None, info, batch_size=config.batch_size, seed=config.seed)[0]


def train_trial(config, info, teacher, values, val_ds, labels, teacher_pred, trial_dir,
                cached=None):
    """Distils one student for the grid point ``values``; writes and returns its result.

    The student (``models.build(arch, seed=seed + 1)``) is trained by a
    :class:`~keras_kd.Distiller` for ``config.epochs`` under
    ``job.deterministic(seed)``, on a fresh pipeline (so the data order is
    the same in every trial), then scored on the validation split.
    ``student.keras`` and ``result.json`` (written last: it marks the trial
    done) go to ``trial_dir``.
    """
    t0 = time.perf_counter()
    with job.deterministic(config.seed, config.deterministic):
        keras.utils.set_random_seed(config.seed)
        train = _trial_train(config, info, cached)
        student = models.build(values["student_arch"], info.input_shape, info.num_classes,
                               name="student", seed=config.seed + 1)
        distiller = Distiller(teacher, student, temperature=values["temperature"],
                              alpha=values["alpha"],
                              distillation_loss=values["distillation_loss"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            distiller.compile(optimizer=job.make_optimizer(config.optimizer,
                                                           config.learning_rate),
                              metrics=["accuracy"])
        history = distiller.fit(train, validation_data=val_ds, epochs=config.epochs,
                                verbose=config.verbose, shuffle=False).history
    logits = _logits(student, val_ds)
    scores = _scores(logits, labels, teacher_pred)
    if not math.isfinite(scores["val_loss"]):
        warnings.warn(f"trial {_describe(values)}: the validation loss is not finite.",
                      stacklevel=2)
    result = {
        "trial_id": os.path.basename(trial_dir).removeprefix("trial_"),
        "values": values,
        **{k: values[k] for k in GRID_FLAGS},
        **scores,
        "epochs": config.epochs,
        "params": models.count_params(student),
        "time_s": round(time.perf_counter() - t0, 2),
        "history": {k: [float(x) for x in v] for k, v in history.items()},
    }
    _io.save_model(student, os.path.join(trial_dir, STUDENT))
    _io.write_json(os.path.join(trial_dir, RESULT), result)
    return result


def _baselines(config, info, val_ds, labels, out, log):
    """Each student architecture trained on the labels alone (resumable)."""
    path = os.path.join(out, "baselines.json")
    try:
        with open(path, encoding="utf-8") as f:
            found = json.load(f)
    except (OSError, ValueError):
        found = {}
    results = {}
    for arch in config.student_archs:
        if arch in found:
            results[arch] = found[arch]
            continue
        t0 = time.perf_counter()
        with job.deterministic(config.seed, config.deterministic):
            keras.utils.set_random_seed(config.seed)
            train = _online_train(config, info)
            model = models.build(arch, info.input_shape, info.num_classes,
                                 name="baseline", seed=config.seed + 1)
            job._plain_compile(model, config, False, augment.mixes_labels(config.augment))
            model.fit(train, epochs=config.epochs, verbose=config.verbose, shuffle=False)
        scores = _scores(_logits(model, val_ds), labels, None)
        results[arch] = {**scores, "params": models.count_params(model), "epochs": config.epochs,
                         "time_s": round(time.perf_counter() - t0, 2)}
        log(f"baseline {arch}: val accuracy {100 * scores['val_accuracy']:.2f}% "
            f"(labels only, {config.epochs} epochs)")
        _io.write_json(path, {**found, **results})
    return results


def _logits(model, val_ds):
    """float32 logits of a model on every validation batch, in order."""
    return np.concatenate([np.asarray(model(x, training=False), np.float32) for x, _ in val_ds])


def _scores(logits, labels, teacher_pred):
    """Validation accuracy, errors, mean cross-entropy and (optionally) agreement."""
    pred = logits.argmax(-1)
    z = logits.astype(np.float64)
    z = z - z.max(-1, keepdims=True)
    ce = np.log(np.exp(z).sum(-1)) - z[np.arange(len(labels)), labels]
    scores = {
        "val_accuracy": float(np.mean(pred == labels)),
        "val_errors": int(np.sum(pred != labels)),
        "val_examples": len(labels),
        "val_loss": float(np.mean(ce)),
    }
    if teacher_pred is not None:
        scores["teacher_agreement"] = float(np.mean(pred == teacher_pred))
    return scores
