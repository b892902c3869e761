"""Hyperparameter sweeps against one teacher: ``keras-kd sweep``.

``run(config, grid)`` runs the main job's phases (:mod:`keras_kd.job`) for
ONE teacher, then distils one student per point of the grid::

    temperature × alpha × distillation_loss × student_arch

each with the trial's config ``dataclasses.replace(config, **point)``, and
ranks them by validation accuracy. Every trial starts from the same state:
the same data order (the split re-read and shuffled with ``seed``), the same
initial student weights per architecture (``seed + 1``), the same optimizer
settings and ``epochs``: a trial is the computation of an independent
``Distiller(teacher, student, T, alpha, loss).fit(...)`` under
``distribute.deterministic(seed)``.

With ``augment="none"`` the teacher runs once: its logits on the training
split are stored in ``<output_dir>/teacher_cache`` (or ``--teacher_cache``)
and every trial trains from them (offline distillation); with augmentation,
feature terms or a reduced-precision teacher it runs online.

The output folder is the sweep's checkpoint (:class:`keras_kd.checkpoint.RunFolder`):
the teacher (``teacher.keras``), each baseline (``baselines/<i>``) and each
trial (``trials/<i>.keras`` and ``trials/<i>.json``, written last) is a
phase. Rerunning the same command after a crash (or after deleting a trial's
``.json``) runs only what is missing; a folder holding a sweep with other
settings, or trials of another teacher, or anything but a sweep (a non-empty
folder without the sweep's ``config.json``), is refused. A sweep that fails
before its first result removes the folder it created. The grid is walked in
order by a plain loop: keras-tuner's grid oracle added nothing to that and
could not resume (BUILD_NOTES.md, "Sweeps").

Outputs (written atomically): ``sweep.md`` (the ranked table), ``sweep.json``
(every row, the teacher's and baselines' figures, the settings),
``best.flags`` (the best trial as a flagfile of the main ``keras-kd``),
``best_student.keras``, ``accuracy_vs_temperature.png`` and ``best_curves.png``.
"""

import dataclasses
import itertools
import math
import os
import shutil
import time
import warnings

import keras
import tensorflow as tf

from keras_kd import (
    _io,
    archs,
    cache,
    checkpoint,
    diagnostics,
    distribute,
    errors,
    job,
    models,
    report,
)
from keras_kd import config as config_lib

__all__ = ["run", "parse_list", "check_grid", "GRID_FLAGS", "best_flags", "train_trial",
           "TrialFailed"]

#: The grid's axes: fields of :class:`keras_kd.job.JobConfig` (and ``keras-kd`` flags).
GRID_FLAGS = ("temperature", "alpha", "distillation_loss", "student_arch")
_EXAMPLES = {"temperature": "1,2,4,8", "alpha": "0.5,0.9",
             "distillation_loss": "kl,dkd", "student_arch": "mlp:hidden=400x400,cnn:width=0.25"}
FORMAT = "keras_kd.sweep/1"


class TrialFailed(RuntimeError):
    """A trial raised: the sweep stops (finished trials are kept)."""


# ---------------------------------------------------------------------------
# The grid.


def parse_list(flag, texts):
    """Grid values from the text of a (repeatable) flag: ``["1,2", "4"]`` → ``[1.0, 2.0, 4.0]``.

    Every occurrence of the flag holds one or more comma-separated values.
    ``student_arch`` specs contain commas themselves (``mlp:hidden=8,dropout=0.2``):
    there a comma starts a new spec only if what follows is not a
    ``key=value`` option of the previous one, so
    ``mlp:hidden=400x400,dropout=0.2,cnn:width=0.25`` is two specs.

    Raises:
      ValueError: an empty list or item (e.g. ``--temperature=`` or ``1,,2``),
        or a number that does not parse. Ranges and repeats are checked by
        :func:`check_grid`.
    """
    if flag not in GRID_FLAGS:
        raise ValueError(f"unknown grid flag {flag!r}; valid: {', '.join(GRID_FLAGS)}.")
    items = []
    for text in [texts] if isinstance(texts, str) else texts or []:
        items += (config_lib.split_list(text) if flag == "student_arch"
                  else [p.strip() for p in str(text).split(",")])
    if not items or items == [""]:
        raise ValueError(f"--{flag} is empty: the grid needs at least one value. Fix: pass "
                         f"comma-separated values, e.g. --{flag}={_EXAMPLES[flag]}.")
    if "" in items:
        raise ValueError(f"--{flag} has an empty item ({','.join(items)!r}). Fix: separate "
                         f"values by single commas, e.g. --{flag}={_EXAMPLES[flag]}.")
    return [_as_number(flag, i) for i in items] if flag in ("temperature", "alpha") else items


def _as_number(flag, value):
    try:
        if isinstance(value, bool):
            raise TypeError
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"--{flag}: {value!r} is not a number. Fix: pass comma-separated "
                         f"numbers, e.g. --{flag}={_EXAMPLES[flag]}.") from None


def check_grid(config, grid):
    """The grid ``{flag: [values]}`` in :data:`GRID_FLAGS` order, every value checked.

    Each value is checked by the main job's own validation on the trial's
    config (``dataclasses.replace(config, flag=value).validate()``), so the
    rules and their errors are the job's. Numbers become floats, loss names
    lower case, specs stripped; an axis left out is the config's value.

    Raises:
      ValueError: an unknown axis, an empty axis, a repeated value, or a value
        the job refuses.
    """
    unknown = sorted(set(grid) - set(GRID_FLAGS))
    if unknown:
        raise ValueError(f"unknown grid axes {unknown}; valid: {', '.join(GRID_FLAGS)}.")
    norm = {"temperature": lambda v: _as_number("temperature", v),
            "alpha": lambda v: _as_number("alpha", v),
            "distillation_loss": lambda v: str(v).strip().lower(),
            "student_arch": lambda v: str(v).strip()}
    key = {"student_arch": lambda s: (archs.parse_spec(s)[0],
                                      tuple(sorted(archs.parse_spec(s)[1].items())))}
    out = {}
    for flag in GRID_FLAGS:
        values = [norm[flag](v) for v in grid.get(flag, [getattr(config, flag)])]
        if not values:
            raise ValueError(f"--{flag} is empty: the grid needs at least one value, "
                             f"e.g. --{flag}={_EXAMPLES[flag]}.")
        seen = {}
        for value in values:
            dataclasses.replace(config, **{flag: value}).validate()
            k = key.get(flag, lambda v: v)(value)
            if k in seen:
                raise ValueError(
                    f"--{flag} lists {seen[k]!r} twice"
                    + (f" (as {value!r})" if value != seen[k] else "")
                    + ": each grid value must be distinct. Fix: drop the repeat.")
            seen[k] = value
        out[flag] = values
    return out


def points(grid):
    """The grid's points ``{flag: value}``, in order (the last axis varies fastest)."""
    return [dict(zip(grid, combo)) for combo in itertools.product(*grid.values())]


def _describe(values):
    return (f"T={values['temperature']:g}, alpha={values['alpha']:g}, "
            f"loss={values['distillation_loss']}, student={values['student_arch']}")


# ---------------------------------------------------------------------------
# The sweep.


def run(config, grid, *, baseline=True, use_cache=True, log=print):
    """Runs the sweep; returns the results dict (also written to ``sweep.json``).

    Args:
      config: a :class:`keras_kd.job.JobConfig`: what every trial shares
        (``output_dir`` is the sweep's folder; nothing is exported).
      grid: ``{flag: [values]}`` over :data:`GRID_FLAGS`.
      baseline: also train each student architecture on the labels alone.
      use_cache: with ``augment="none"``, train the trials from the teacher's
        stored logits (False: run the teacher at every step even then).

    Raises:
      ValueError: bad settings, or an ``output_dir`` holding a sweep with other
        settings or another teacher's trials.
      TrialFailed: a trial failed (rerunning the same command resumes).
    """
    grid = check_grid(config, grid)
    if config.checkpoint_dir:
        raise ValueError("keras-kd sweep resumes from its --output_dir; drop --checkpoint_dir.")
    if config.repeats != 1:
        raise ValueError("keras-kd sweep ranks its trials on one seed; --repeats is the main "
                         "job's (keras-kd --flagfile=best.flags --repeats=3 checks the best "
                         "one over seeds). Fix: drop --repeats.")
    # The base config is the grid's first point: the teacher is checked (diagnosis at
    # its T, feature layers on its student) with settings a trial uses.
    config = dataclasses.replace(config, export=False, **{k: v[0] for k, v in grid.items()})
    config.validate()
    config = dataclasses.replace(config, output_dir=config.output_dir
                                 or checkpoint.default_output_dir())
    settings = {**config.resume_settings(), **grid, "baseline": baseline, "use_cache": use_cache}
    strategy, folder = checkpoint.open_folder(config, config.output_dir, settings, kind="sweep",
                                       flag="--output_dir")
    with folder:  # a sweep that fails before any result leaves no folder it created
        try:
            with distribute.deterministic(config.seed, config.deterministic):
                state = job.start(config, log, strategy, folder)
                with distribute.mixed_precision(config.mixed_precision), strategy.scope():
                    return _sweep(state, grid, baseline, use_cache)
        except tf.errors.OpError as err:
            raise checkpoint.as_user_error(err, strategy, "--output_dir") from err


def _fresh(state, config, cached=None):
    """Every trial starts from the same state: seeds reset, and the run's stream
    (:func:`keras_kd.job.stream`: the same batches and views in every trial), augmented
    as ``config`` says, or with the ``cached`` teacher logits."""
    keras.utils.set_random_seed(config.seed)
    return job.stream(state, config, examples=cached)


def _sweep(state, grid, baseline, use_cache):
    config, log, out = state.config, state.log, state.folder.out
    started, total = time.perf_counter(), math.prod(len(v) for v in grid.values())
    log("grid: " + " × ".join(f"{len(v)} {k}" for k, v in grid.items())
        + f" = {total} trial{'s' if total != 1 else ''}")
    state.student_archs = grid["student_arch"]  # --features must fit every one
    with distribute.deterministic(config.seed, config.deterministic):
        members = job.train_teachers(
            state, _fresh(state, dataclasses.replace(config, augment=job.teacher_augment(config))))
    job.check_teachers(state, members)
    teacher = job.teacher_view(state, members)
    _check_same_teacher(teacher, out)
    teacher_pred = diagnostics.predictions(teacher, state.val)
    teacher_scores = _val(diagnostics.evaluate(teacher, state.val))
    log(f"teacher: val accuracy {100 * teacher_scores['val_accuracy']:.2f}%")
    cached, cache_report = _teacher_cache(state, teacher, use_cache)

    baselines = {}
    for i, arch in enumerate(grid["student_arch"] if baseline else []):
        baselines[arch] = _baseline(state, dataclasses.replace(config, student_arch=arch), i)

    t0 = time.perf_counter()
    rows, trained = _trials(state, grid, members, teacher_pred, cached)
    search_s = time.perf_counter() - t0
    _rank(rows, grid)
    best = rows[0]
    with _io.atomic_path(os.path.join(out, "best_student.keras")) as tmp:
        shutil.copyfile(state.folder.finished(f"trials/{best['trial_id']}"), tmp)
    info = state.info
    results = {
        "format": FORMAT,
        "dataset": {"name": info.name, "input_shape": list(info.input_shape),
                    "num_classes": info.num_classes, "num_train": info.num_train,
                    "num_validation": info.num_validation},
        "grid": grid,
        "teacher": {"arch": None if config.teacher else config.teacher_arch,
                    "source": "loaded" if config.teacher else "trained",
                    "file": ",".join(os.path.abspath(p) for p in config.teacher_paths() or [
                        os.path.join(out, f"{n}.keras") for n in config.teacher_names()]),
                    "params": models.count_params(teacher), **teacher_scores},
        "baselines": baselines,
        "teacher_cache": cache_report,
        "rows": rows,
        "best": {k: v for k, v in best.items() if k != "history"},
        "timings": {"teacher_s": round(state.timings.get("teacher_s", 0.0), 2),
                    "search_s": round(search_s, 2), "trials_trained_now": trained,
                    "total_s": round(time.perf_counter() - started, 2)},
        "settings": {**config.resume_settings(), **grid},
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


def _trials(state, grid, members, teacher_pred, cached):
    """Every grid point's result, in grid order (trained now, or stored); how many trained."""
    total = math.prod(len(v) for v in grid.values())
    done = [i for i in range(total) if state.folder.result(f"trials/{i:04d}")]
    if done:
        state.log(f"resuming {state.folder.out}: {len(done)} of {total} trials already done")
    rows, trained = [], 0
    for i, point in enumerate(points(grid)):
        result = state.folder.result(f"trials/{i:04d}")
        if result is None or result.get("values") != point:
            try:
                result = train_trial(state, members, point, i, teacher_pred, cached)
            except Exception as err:
                raise TrialFailed(
                    f"trial {i:04d} ({_describe(point)}) failed: {_error_text(err)}. Trials "
                    "finished so far are kept: rerun the same command to resume.") from err
            trained += 1
        rows.append(result)
    return rows, trained


def _rank(rows, grid):
    """Sorts the rows by validation accuracy (ties: lower val loss, then grid order); ranks them."""
    order = {k: {v: i for i, v in enumerate(vs)} for k, vs in grid.items()}
    rows.sort(key=lambda r: (-r["val_accuracy"], r["val_loss"],
                             [order[k][r["values"][k]] for k in GRID_FLAGS]))
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank


def _error_text(err):
    return errors.short(err) if isinstance(err, tf.errors.OpError) else str(err)


def _val(scores):
    """The job's scores under the sweep's names (``val_accuracy``, ..., ``teacher_agreement``)."""
    out = {f"val_{k}": v for k, v in scores.items() if k != "agreement"}
    if "agreement" in scores:
        out["teacher_agreement"] = scores["agreement"]
    return out


def _teacher_cache(state, teacher, use_cache):
    """``(cached logits or None, report)``: offline distillation when nothing augments."""
    config = state.config
    try:  # the cache's own rules, then the sweep's: T varies, an ensemble's targets with it
        cache.check_usable(augment=config.augment, features=config.features,
                           teacher_dtype=config.teacher_dtype,
                           multi_worker=config.strategy == "multi_worker")
        why_not = ((not use_cache and "use_cache=False")
                   or (config.num_teachers() > 1 and "an ensemble (its soft targets depend on T)"))
    except ValueError as err:
        why_not = str(err).split(":")[0]
    if why_not:
        return None, {"used": False, "reason": f"{why_not} (teacher online)"}
    directory = config.teacher_cache or os.path.join(state.folder.out, "teacher_cache")
    return job.cached_logits(state, teacher, directory)  # teacher: the view


def _baseline(state, config, index):
    """One student architecture on the labels alone (resumable): its scores."""
    phase = f"baselines/{index}"
    result = state.folder.result(phase)
    if result is not None and result.get("arch") == config.student_arch:
        return result
    t0 = time.perf_counter()
    with distribute.deterministic(config.seed, config.deterministic):
        model, _, _ = job.train_baseline(state, config, _fresh(state, config), phase)
    result = {"arch": config.student_arch, **_val(diagnostics.evaluate(model, state.val)),
              "params": models.count_params(model), "epochs": config.epochs,
              "time_s": round(time.perf_counter() - t0, 2)}
    state.log(f"baseline {config.student_arch}: val accuracy "
              f"{100 * result['val_accuracy']:.2f}% (labels only, {config.epochs} epochs)")
    state.folder.save_result(phase, result)
    return result


def train_trial(state, members, values, index, teacher_pred, cached=None):
    """Distils one student for the grid point ``values``; stores and returns its result.

    The trial's config is ``dataclasses.replace(state.config, **values)``;
    the student trains from a fresh pipeline under
    ``distribute.deterministic(seed)`` (from the cached logits if given), is
    scored on the validation split and saved as ``trials/<index>.keras``; the
    result (``trials/<index>.json``, written last) marks the trial done.
    """
    config, t0 = dataclasses.replace(state.config, **values), time.perf_counter()
    trial = f"trials/{index:04d}"
    with distribute.deterministic(config.seed, config.deterministic):
        train = _fresh(state, config, cached)
        source = "the teacher cache" if cached is not None else "the teacher"
        student, history = job.distil(state, members, train, config, trial,
                                      validation_data=state.val, source=source)
    scores = _val(diagnostics.evaluate(student, state.val, teacher_pred))
    if not math.isfinite(scores["val_loss"]):
        warnings.warn(f"trial {_describe(values)}: the validation loss is not finite.",
                      stacklevel=2)
    result = {"trial_id": f"{index:04d}", "values": values, **values, **scores,
              "epochs": config.epochs, "params": models.count_params(student),
              "time_s": round(time.perf_counter() - t0, 2),
              "history": {k: [float(x) for x in v] for k, v in history.items()}}
    state.folder.save_result(trial, result)
    state.log(f"trial {index:04d}: {_describe(values)}: val accuracy "
              f"{100 * result['val_accuracy']:.2f}%, val loss {result['val_loss']:.4f}, "
              f"agreement {100 * result['teacher_agreement']:.2f}%, {result['time_s']:.1f} s")
    return result


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
        if f.read().strip() != fingerprint:
            raise ValueError(
                f"--output_dir={out!r} holds trials distilled from another teacher "
                "(its weights' fingerprint differs), so they cannot be resumed with "
                "this one. Fix: use a new --output_dir, or delete it to start over.")


def _write_outputs(results, config, out):
    _io.write_json(os.path.join(out, "sweep.json"), results)
    _io.write_text(os.path.join(out, "best.flags"), best_flags(results, config))
    _io.write_bytes(os.path.join(out, "accuracy_vs_temperature.png"),
                    report.accuracy_vs_temperature_png(results))
    _io.write_bytes(os.path.join(out, "best_curves.png"), report.best_curves_png(results))
    _io.write_text(os.path.join(out, "sweep.md"), report.sweep_markdown(results))


def best_flags(results, config):
    """The best trial's config as a flagfile of the main ``keras-kd`` (``--flagfile=best.flags``).

    Every field that differs from :class:`~keras_kd.job.JobConfig`'s default,
    with ``--teacher`` naming the sweep's teacher file, so the main job
    distils from the same teacher, on the same stream (:func:`keras_kd.job.stream`)
    from the same initial weights: its student is the best trial's.
    """
    best = results["best"]
    chosen = dataclasses.replace(config, teacher=results["teacher"]["file"],
                                 **{k: best["values"][k] for k in GRID_FLAGS})
    lines = [
        f"# keras-kd flagfile: the best of {len(results['rows'])} trials of the sweep in",
        f"# {results['output_dir']} (validation accuracy "
        f"{100 * best['val_accuracy']:.2f}%). Run: keras-kd --flagfile=best.flags",
    ]
    defaults = job.JobConfig()
    for field in dataclasses.fields(job.JobConfig):
        value = getattr(chosen, field.name)
        if (not field.metadata.get("cli", True) or field.name in ("output_dir", "export")
                or (value == getattr(defaults, field.name) and field.name not in GRID_FLAGS)):
            continue
        if isinstance(value, tuple):
            value = ",".join(map(str, value))
        elif isinstance(value, bool):
            value = str(value).lower()
        elif isinstance(value, float):
            value = repr(value)
        lines.append(f"--{field.name}={value}")
    return "\n".join(lines) + "\n"
