"""The main job, as a short list of phases: ``keras-kd`` and ``python -m keras_kd``.

``run(JobConfig(...))`` runs, in order::

    start      the strategy, the run folder (resume protocol), the data, its stream
    teacher    load --teacher, or a finished phase, or train one (several: an ensemble)
    check      diagnose the teacher(s) on the validation split; stop if it cannot be right
    tune       (--tune) T and/or alpha chosen on a slice held out of the training split
    baseline   the student architecture on the labels alone
    distil     the same architecture, from the same initial weights, on the same batches,
               taught by the teacher (baseline + distil: one pair; --repeats: several)
    evaluate   the models on the validation split
    export     student.tflite, quantized and verified with LiteRT
    report     metrics.json and report.md

Each phase is a function of the :class:`Run` (the config and what earlier
phases produced); :mod:`keras_kd.sweep` runs the same phases with configs made
by ``dataclasses.replace``. The CLI only turns flags into a :class:`JobConfig`
(its flags are generated from :class:`~keras_kd.config.JobConfig`'s fields).
With ``teacher_cache=DIR`` (offline distillation, :mod:`keras_kd.cache`) the
distil phase trains from the teacher's stored logits on the un-augmented,
ordered training split.
"""

import dataclasses
import itertools
import os
import time
import warnings

import keras
import tensorflow as tf

from keras_kd import (
    _io,
    augment,
    cache,
    checkpoint,
    data,
    diagnostics,
    distiller,
    distribute,
    epochs,
    export,
    modelfiles,
    models,
    preprocessing,
    report,
    teachers,
)
from keras_kd.config import TUNE_GRID, JobConfig, make_optimizer

__all__ = ["JobConfig", "Run", "run", "start", "train_teachers", "check_teachers", "teacher_view",
           "tune", "train_baseline", "distil", "train_pair",
           "cached_logits", "load_data", "stream", "export_student", "write_report",
           "new_student", "teacher_augment"]

# --------------------------------------------------------------------------
# The phases
# --------------------------------------------------------------------------


@dataclasses.dataclass
class Run:
    """What the phases share: the config, the folder, the data, and what ran so far."""

    config: JobConfig
    folder: checkpoint.RunFolder
    log: object
    strategy: object
    jit: bool
    examples: object = None  # the training split, unbatched, in a fixed order
    val: object = None
    info: object = None
    timings: dict = dataclasses.field(default_factory=dict)
    trained: list = dataclasses.field(default_factory=list)  # teacher names trained here
    student_archs: list = None  # the students --features must fit (a sweep's several)


def load_data(config):
    """``(the training split unbatched in a fixed order, validation batches, info)``."""
    train, val, info = data.load_unbatched(config.dataset, data_dir=config.data_dir,
                                           image_size=config.image_size)
    return train, data.batched(val, config.batch_size), info


def stream(run, config=None, augment=None, examples=None):
    """The training batches of ``config`` (:class:`keras_kd.epochs.Epochs`): epoch ``e`` a
    function of ``(seed, e)``, so every model of a run (teacher, baseline, distilled
    student, a sweep's trials) sees the same batches in the same order with the same
    views, and a resumed phase reads what the unbroken one would have.

    ``augment``: a policy instead of ``config.augment``; ``examples``: other unbatched
    elements in the order of ``run.examples`` (e.g. with the teacher cache's logits)."""
    config = config or run.config
    return epochs.Epochs(
        run.examples if examples is None else examples, num_examples=run.info.num_train,
        batch_size=config.batch_size, seed=config.seed,
        augment=config.augment if augment is None else augment,
        input_shape=run.info.input_shape, num_classes=run.info.num_classes)


def teacher_augment(config):
    """The teacher's augmentation policy: ``teacher_augment``, or when None the students'
    without label mixing (:func:`keras_kd.augment.without_label_mixing`): the teacher learns
    the labels, and gives soft targets on the students' mixed views."""
    return (augment.without_label_mixing(config.augment) if config.teacher_augment is None
            else config.teacher_augment)


def start(config, log, strategy, folder):
    """Phase 1: the data, its augmentation, and the run's settings in the log."""
    keras.utils.set_random_seed(config.seed)
    jit, note = distribute.resolve_jit_compile(config.jit_compile, strategy)
    run = Run(config, folder, log, strategy, jit)
    run.examples, run.val, info = load_data(config)
    run.info = info
    if config.budget or config.patient:
        run.config = config.effective(stream(run).steps)
        run.log(f"students: {run.config.epochs} epochs"
                + (f" (--budget={config.budget} steps)" if config.budget else "")
                + (f"; --patient: alpha=1, --augment={run.config.augment}" if config.patient
                   else ""))
    log(f"data: {info.name}: {info.num_train} train / {info.num_validation} validation "
        f"images of {tuple(info.input_shape)}, {info.num_classes} classes")
    if config.teacher_cache:  # before the teacher trains: a bad top_k or folder
        cache.precheck(config.teacher_cache, config.teacher_cache_top_k, info.num_classes)
    log(f"strategy: {type(strategy).__name__} with {strategy.num_replicas_in_sync} "
        f"replica(s); dtype policy {config.mixed_precision}; XLA {'on' if jit else 'off'}")
    if note:
        log(note)
    return run


def optimizer(config, train, epochs):
    """A fresh optimizer of ``config`` (its schedule spans ``epochs`` of ``train``)."""
    return make_optimizer(config.optimizer, config.learning_rate, config.lr_schedule,
                          epochs * train.steps)


def _compile_on_labels(model, config, jit, train, epochs):
    """Compiles a model trained on labels alone (sparse ids, or mixed one-hot)."""
    loss = (keras.losses.CategoricalCrossentropy(from_logits=True)
            if augment.mixes_labels(train.augment)
            else keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.compile(optimizer=optimizer(config, train, epochs), loss=loss,
                  metrics=["accuracy"], jit_compile=jit)


def check_features(run, teacher):
    """--features checked on the teacher and a fresh student of each student
    architecture (``run.student_archs``) before anything trains."""
    config = run.config
    for arch in (run.student_archs or [config.student_arch]) if config.features else []:
        student = models.build(arch, run.info.input_shape, run.info.num_classes,
                               name="student")
        trainable = teacher.trainable  # the Distiller freezes it; it may still train
        try:
            distiller.Distiller(teacher, student, features=config.features,
                                teacher_dtype=config.teacher_dtype)
        finally:
            teacher.trainable = trainable


def _train_teacher(run, arch, name, seed, train):
    config, info = run.config, run.info
    size = config.teacher_image_size
    shape = (*size, info.input_shape[-1]) if size else info.input_shape
    teacher = models.build(arch, shape, info.num_classes, name=name, seed=seed)
    check_features(run, teacher)  # before hours of training
    train = stream(run, augment=teacher_augment(config)) if train is None else train
    _compile_on_labels(teacher, config, run.jit, train, config.teacher_epochs)
    run.log(f"{name}: training {arch} for {config.teacher_epochs} epochs")
    if size and tuple(size) != tuple(info.input_shape[:2]):  # each image at the teacher's size
        train = train.replace(input_shape=shape, examples=train.examples.map(
            lambda x, *rest: (preprocessing.resize_images(x[None], size)[0], *rest)))
    run.folder.fit(teacher, train, name, config.teacher_epochs, config.verbose)
    run.folder.mark_done(name, teacher)
    return teacher


def train_teachers(run, train=None):
    """Phase 2: the teacher(s): ``--teacher`` files, this run's finished ones, or trained now.

    Several make an ensemble (trained in turn). Each is saved as
    ``<name>.keras`` at once: a crash later does not lose it. Returns the list.
    """
    config, t0 = run.config, time.perf_counter()
    paths, archs, members = config.teacher_paths(), config.teacher_archs(), []
    for i, name in enumerate(config.teacher_names()):
        path = paths[i] if paths else run.folder.finished(name)
        if path:
            member = teachers.load(path, run.info, "--teacher" if paths else run.folder.flag,
                                   resize_ok=True)
            run.log(f"{name}: loaded {path}")
            check_features(run, member)
        else:
            member = _train_teacher(run, archs[i], name, config.seed + 100 * i, train)
        if not paths:
            run.trained.append(name)
        if not (path and os.path.isdir(path)):  # (a SavedModel folder is kept where it is)
            run.folder.save_output(member, name)
        members.append(member)
    run.timings["teacher_s"] = time.perf_counter() - t0
    return members


def teacher_view(run, members, config=None):
    """The view the students learn from: the teacher (or the ensemble), preprocessed, as logits."""
    config = config or run.config
    return teachers.logits_view(
        members if len(members) > 1 else members[0],
        preprocessing=config.teacher_preprocessings(), weights=config.teacher_weight_list(),
        temperature=config.temperature, input_shape=run.info.input_shape)[0]


def check_teachers(run, members):
    """Phase 2b: each teacher (and the ensemble) diagnosed on the validation split before
    any student trains; one that cannot be right stops the run (:func:`diagnostics.check`)."""
    config, found = run.config, []
    for name, member, spec in zip(config.teacher_names(), members,
                                  config.teacher_preprocessings()):
        view = teachers.logits_view(member, preprocessing=spec,
                                    input_shape=run.info.input_shape, role=name)[0]
        found.append({"model": name, "preprocessing": spec,
                      **diagnostics.diagnose(view, run.val, config.temperature)})
    if len(members) > 1:  # its calibration: of its soft targets (the members' mean at T)
        found.append({"model": "ensemble", **diagnostics.diagnose(
            teacher_view(run, members), run.val, config.temperature,
            calibration_temperature=config.temperature)})
    notes = []
    for row in found:
        run.log(diagnostics.describe(row, row["model"]))
        notes += diagnostics.check(row, config.min_teacher_accuracy, row["model"],
                                   trained=row["model"] in run.trained)
    for note in notes:
        run.log(f"warning: {note}")
    return {"teachers": found, "warnings": notes}


#: The share of the training split that ``--tune`` holds out to score its trials on.
TUNE_HOLDOUT = 0.2


def tune(run, members):
    """Phase 2c (``--tune``): settings chosen for this data before the students train.

    Each point of :data:`keras_kd.config.TUNE_GRID` over the tuned settings is a short
    distillation (``--tune_epochs``) on the first 80 % of the training split (in its
    fixed order), scored on the other 20 %: the validation split, on which the report
    compares the models, is never looked at. The most accurate point wins (ties: the
    lower held-out loss) and becomes ``run.config``. Returns what was tried and chosen
    and what it cost (None without ``--tune``).
    """
    config, t0 = run.config, time.perf_counter()
    names = config.tuned()
    if not names:
        return None
    total = stream(run).num_examples
    held = max(1, round(TUNE_HOLDOUT * total))
    part = dataclasses.replace(
        run, examples=run.examples.take(total - held),
        val=data.batched(run.examples.skip(total - held), config.batch_size),
        info=dataclasses.replace(run.info, num_train=total - held))
    epochs_each = config.tune_epochs or max(1, round(config.epochs / 3))
    trials = []
    for i, values in enumerate(itertools.product(*(TUNE_GRID[n] for n in names))):
        trial = dataclasses.replace(config, epochs=epochs_each, **dict(zip(names, values)))
        keras.utils.set_random_seed(trial.seed)
        student, _ = distil(part, members, stream(part, trial), trial, f"tune/{i:02d}")
        trials.append({**dict(zip(names, values)), **diagnostics.evaluate(student, part.val)})
    best = max(trials, key=lambda t: (t["accuracy"], -t["loss"]))
    chosen = {n: best[n] for n in names}
    run.config = dataclasses.replace(config, **chosen)
    seconds = time.perf_counter() - t0
    run.timings["tune_s"] = seconds
    run.log(f"tune: chose {', '.join(f'{n}={v:g}' for n, v in chosen.items())} (held-out "
            f"accuracy {100 * best['accuracy']:.2f}%; {len(trials)} trials of {epochs_each} "
            f"epoch{'s' if epochs_each != 1 else ''} on {total - held} training images, scored on {held}; {seconds:.0f} s)")
    return {"tuned": names, "chosen": chosen, "trials": trials, "epochs": epochs_each,
            "trained_on": total - held, "held_out": held, "seconds": round(seconds, 1)}


def new_student(config, info, name, initial_weights=None):
    """A student of ``config.student_arch``, seeded with ``seed + 1`` (the same for every run)."""
    student = models.build(config.student_arch, info.input_shape, info.num_classes,
                           name=name, seed=config.seed + 1)
    if initial_weights is not None:
        student.set_weights(initial_weights)
    return student


def train_baseline(run, config=None, train=None, phase="baseline", validation_data=None):
    """Phase 3: the student architecture trained on the labels alone, same schedule.

    Returns ``(baseline, its initial weights, history)``.
    """
    config, t0 = config or run.config, time.perf_counter()
    baseline = new_student(config, run.info, "baseline")
    initial = baseline.get_weights()
    path = run.folder.finished(phase)
    if path:
        baseline = modelfiles.load_model(path, run.folder.flag)
        run.log(f"baseline: loaded {path}")
        history = run.folder.history(phase)
    else:
        train = stream(run, config) if train is None else train
        _compile_on_labels(baseline, config, run.jit, train, config.epochs)
        run.log(f"baseline: training {config.student_arch} on the labels for "
                f"{config.epochs} epochs")
        history = run.folder.fit(baseline, train, phase, config.epochs, config.verbose,
                                 validation_data)
        run.folder.mark_done(phase, baseline)
    run.timings["baseline_s"] = time.perf_counter() - t0
    return baseline, initial, history


def cached_logits(run, view, directory, config=None):
    """``(the ordered training split with the teacher's stored logits, report)``: built once,
    then checked; :func:`stream` (``examples=``) batches it as the baseline's batches."""
    config, ordered = config or run.config, run.examples
    size = f", image_size={config.image_size[0]}x{config.image_size[1]}" \
        if config.image_size else ""
    attached, status = cache.get_or_build(
        view, ordered, directory, top_k=config.teacher_cache_top_k,
        dataset_id=f"{config.dataset} train split{size}", teacher_id=_teacher_id(config),
        log=run.log)
    run.timings["teacher_cache_s"] = status["seconds"]
    return attached, {"used": True, **status}


def _teacher_id(config):
    """The teacher's settings that are not weights (the cache fingerprints those)."""
    specs = config.teacher_preprocessings()
    if config.num_teachers() == 1 and specs == ["none"]:
        return None
    ensemble = config.num_teachers() > 1
    return (f"preprocessing={'/'.join(specs)}"
            + (f"; ensemble weights={config.teacher_weight_list()}, T={config.temperature!r}"
               if ensemble else ""))


def distil(run, members, train, config=None, phase="distill", initial_weights=None,
           validation_data=None, source="the teacher"):
    """Phase 4: the student distilled from the teacher(s) ``members`` on ``train``.

    Returns ``(student, history)``.
    """
    config, t0 = config or run.config, time.perf_counter()
    student = new_student(config, run.info, "student", initial_weights)
    path = run.folder.finished(phase)
    if path:
        run.log(f"distill: loaded {path}")
        return modelfiles.load_model(path, run.folder.flag), run.folder.history(phase)
    specs, single = config.teacher_preprocessings(), len(members) == 1
    kd = distiller.Distiller(
        members[0] if single else members, student, temperature=config.temperature,
        alpha=config.alpha, distillation_loss=config.distillation_loss,
        features=config.features, teacher_dtype=config.teacher_dtype,
        teacher_preprocessing=specs[0] if single else specs,
        teacher_weights=config.teacher_weight_list())
    with warnings.catch_warnings():  # the label-check caveat is in --help
        warnings.simplefilter("ignore", UserWarning)
        kd.compile(optimizer=optimizer(config, train, config.epochs),
                   metrics=["accuracy"], jit_compile=run.jit)
    run.log(f"distill: {config.student_arch} from {source}, T={config.temperature:g}, "
            f"alpha={config.alpha:g}, loss={config.distillation_loss}, {config.epochs} epochs")
    history = run.folder.fit(kd, train, phase, config.epochs, config.verbose, validation_data)
    run.folder.mark_done(phase, student)
    run.timings["distill_s"] = time.perf_counter() - t0
    return student, history


def train_pair(run, members, index=0, cached=None):
    """Phases 3-4 for pair ``index`` (``--repeats``): the baseline, then the student
    distilled from the same initial weights on the same batches, seeded ``--seed + index``;
    ``cached``: the training split with the teacher cache's logits. Returns
    ``(baseline, student, distillation history)``."""
    config = dataclasses.replace(run.config, seed=run.config.seed + index)
    suffix = f"_{index + 1}" if index else ""
    if run.config.repeats > 1:
        run.log(f"pair {index + 1} of {run.config.repeats}: seed {config.seed}")
    baseline, initial, _ = train_baseline(run, config, phase="baseline" + suffix)
    source = "the teacher" if cached is None else f"the teacher cache {config.teacher_cache}"
    student, history = distil(run, members, stream(run, config, examples=cached), config,
                              "distill" + suffix, initial_weights=initial, source=source)
    return baseline, student, history


def export_student(run, student):
    """Phase 6: ``student.tflite`` (the chief only), verified on the validation split.

    Returns ``(figures, paths, error)``: an agreement or runtime failure is
    returned, so that metrics.json and report.md are still written.
    """
    config, t0 = run.config, time.perf_counter()
    if not (config.export and run.folder.chief):
        return None, {}, None
    path = os.path.join(run.folder.out, "student.tflite")
    try:  # un-augmented training images calibrate int8
        figures = export.export_verified(
            student, path, run.val, quantization=config.export_quantization,
            representative_data=stream(run, augment="none").epoch(0),
            min_agreement=config.min_agreement,
            class_names=run.info.class_names, log=run.log)
    except (export.AgreementError, export.RuntimeCheckError) as err:
        return {"error": str(err)}, {}, err
    finally:
        run.timings["export_s"] = time.perf_counter() - t0
    run.log(export.summary(path, figures))
    return figures, {"student_tflite": path, "labels": export.labels_path(path),
                     "tflite_metadata": export.metadata_path(path)}, None


def write_report(run, rows, history, tflite, paths, extra, started):
    """Phase 7: ``metrics.json`` and ``report.md``; the table in the log. Returns the results."""
    config, info, strategy = run.config, run.info, run.strategy
    run.timings["total_s"] = time.perf_counter() - started
    results = {
        "dataset": {"name": info.name, "input_shape": list(info.input_shape),
                    "num_classes": info.num_classes, "num_train": info.num_train,
                    "num_validation": info.num_validation},
        "models": rows,
        "distillation_history": {k: [float(v) for v in vs] for k, vs in history.items()},
        "tflite": tflite,
        "timings": {k: round(v, 2) for k, v in run.timings.items()},
        "distribution": {"strategy": config.strategy,
                         "strategy_class": type(strategy).__name__,
                         "replicas": strategy.num_replicas_in_sync,
                         "mixed_precision": config.mixed_precision, "jit_compile": run.jit},
        "config": {k: v for k, v in dataclasses.asdict(config).items() if k != "flags_used"},
        "flags": config.flags_used,
        **extra,
        "artifacts": {k: os.path.basename(v) for k, v in paths.items()},
        "output_dir": os.path.abspath(run.folder.out),
    }
    out = run.folder.out
    _io.write_json(os.path.join(out, "metrics.json"), results)
    _io.write_text(os.path.join(out, "report.md"), report.markdown(results))
    run.log(report.table(rows))
    if extra.get("repeats"):
        run.log(extra["repeats"]["summary"])
    elif "worse" in report.verdict(rows):
        run.log(report.verdict(rows))
    run.log(f"wrote {out}/: {', '.join(sorted(results['artifacts'].values()))}, "
            "metrics.json, report.md")
    return results


def _phases(run):
    config, started = run.config, time.perf_counter()
    with distribute.mixed_precision(config.mixed_precision), run.strategy.scope():
        members = train_teachers(run)
        diagnosis = check_teachers(run, members)
        tuning = tune(run, members)
        config = run.config  # with what --tune chose
        view = teacher_view(run, members)
        attached, cache_report = None, None
        if config.teacher_cache:  # offline: the stored logits replace the teacher's pass
            attached, cache_report = cached_logits(run, view, config.teacher_cache)
        pairs = [train_pair(run, members, i, attached) for i in range(config.repeats)]
    baseline, student, history = pairs[0]
    rows = [{"model": d["model"], "params": models.count_params(m),
             **{k: d[k] for k in ("accuracy", "errors", "examples")}}
            for d, m in zip(diagnosis["teachers"], [*members, view])]
    scores = [(diagnostics.evaluate(b, run.val), diagnostics.evaluate(s, run.val)) for b, s, _ in pairs]
    rows += [{"model": role, "params": models.count_params(model), **score}
             for role, model, score in (("baseline", baseline, scores[0][0]),
                                        ("distilled", student, scores[0][1]))]
    repeats = (report.repeats(config.seed, scores, report.teacher_errors(rows))
               if len(pairs) > 1 else None)
    paths = {n: p for n in config.teacher_names()
             if os.path.exists(p := os.path.join(run.folder.out, f"{n}.keras"))}
    for name, model in (("baseline", baseline), ("student", student)):
        paths[name] = run.folder.save_output(model, name)
    tflite, exported, export_error = export_student(run, student)
    results = write_report(run, rows, history, tflite, {**paths, **exported},
                           {"teacher_cache": cache_report, "teacher_diagnostics": diagnosis,
                            "tuning": tuning, "repeats": repeats}, started)
    if export_error is not None:
        raise export_error
    return results


def run(config, log=print):
    """Runs the whole path and returns the results dict (also in metrics.json).

    Models are built, compiled and trained inside the chosen
    ``tf.distribute`` strategy's scope and dtype policy; the export runs
    outside both, on the float32-variable student. One run per output folder (RunFolder).
    """
    config.validate()
    strategy, folder = checkpoint.open_folder(config, config.checkpoint_dir, config.resume_settings())
    with folder:  # a failed run removes the folders it created and left empty
        try:
            with distribute.deterministic(config.seed, config.deterministic):
                return _phases(start(config, log, strategy, folder))
        except tf.errors.OpError as err:
            raise checkpoint.as_user_error(err, strategy, config.checkpoint_dir and "--checkpoint_dir") from err
