"""The main job: teacher → baseline student → distilled student → export.

``run(JobConfig(...))`` is what ``keras-kd`` (and ``python -m keras_kd``)
executes; the CLI only turns flags into a :class:`JobConfig`. Steps:

1. load the dataset (:mod:`keras_kd.data`) and its augmentation
   (:mod:`keras_kd.augment`, applied once per batch in the input pipeline);
2. train the teacher from scratch, or load it with ``teacher=path.keras``;
3. train the student architecture alone on the labels (the *baseline*), with
   the same data, augmentation, optimizer and epochs as step 4;
4. distil the same student architecture, from the same initial weights, with
   :class:`keras_kd.Distiller`;
5. evaluate all three on the validation split; save ``teacher.keras``,
   ``baseline.keras``, ``student.keras``; export ``student.tflite`` (quantized
   as ``--export_quantization`` says; ``auto``: the smallest mode that agrees
   with the Keras student) and check it with the LiteRT interpreter on the
   validation split; write ``metrics.json`` and ``report.md``.

With ``teacher_cache=DIR`` (``--teacher_cache``; offline distillation, see
:mod:`keras_kd.cache`) step 4 trains from the teacher's logits on the
un-augmented, ordered training split, computed once after step 2 and stored
in ``DIR`` (loaded, and checked against the teacher and the data, when
``DIR`` already holds them). It needs ``augment="none"`` (checked before
anything runs) and is refused with ``strategy="multi_worker"`` (only one
process may write the cache).

:func:`export_saved_model` is ``keras-kd export``: any saved Keras
classifier → a verified ``.tflite``.
"""

import contextlib
import dataclasses
import datetime
import json
import os
import random
import re
import shutil
import tempfile
import time
import warnings
import zlib

import keras
import numpy as np
import tensorflow as tf

from keras_kd import _io, augment, checkpoint, data, distribute, export, losses, models, report
from keras_kd import cache as teacher_cache
from keras_kd import features as features_lib
from keras_kd.distiller import Distiller

__all__ = [
    "JobConfig", "run", "default_output_dir", "make_optimizer", "export_saved_model", "load_model",
]

OPTIMIZERS = ("adam", "sgd", "rmsprop")


@dataclasses.dataclass
class JobConfig:
    """Everything the main job needs; the CLI flags map one-to-one onto it.

    The defaults are the measured defaults of BUILD_NOTES.md ("Choosing the
    defaults").
    """

    dataset: str = "mnist5k"
    data_dir: str | None = None
    image_size: tuple | None = None
    teacher: str | None = None  # path to a saved .keras teacher
    teacher_arch: str = "cnn"
    student_arch: str = "mlp:hidden=400x400"
    temperature: float = 3.0
    alpha: float = 0.7
    distillation_loss: str = "kl"
    optimizer: str = "adam"
    learning_rate: float = 2e-3
    epochs: int = 12
    teacher_epochs: int = 12
    batch_size: int = 64
    augment: str = "jitter"
    teacher_augment: str | None = None  # None: same as augment
    teacher_cache: str | None = None  # folder of the teacher's stored logits (offline KD)
    teacher_cache_top_k: int | None = None  # store only the k largest logits (+ rest mean)
    seed: int = 0
    output_dir: str | None = None
    export: bool = True
    export_quantization: str = "auto"  # or one of export.QUANTIZATIONS
    min_agreement: float | None = None  # fail the export below this top-1 agreement
    deterministic: bool = True
    strategy: str = "auto"
    num_cpu_devices: int | None = None
    mixed_precision: str = "float32"
    checkpoint_dir: str | None = None
    jit_compile: bool = False
    features: str | None = None  # feature terms, keras_kd.features.parse syntax
    teacher_dtype: str = "float32"  # the frozen teacher's inference precision
    verbose: int = 1
    flags_used: dict = dataclasses.field(default_factory=dict)

    def validate(self):
        """Raises ValueError for values the job cannot run with."""
        if self.epochs < 1:
            raise ValueError(f"--epochs must be at least 1, got {self.epochs}.")
        if self.teacher_epochs < 1 and not self.teacher:
            raise ValueError(
                f"--teacher_epochs={self.teacher_epochs} would distil from an "
                "untrained teacher. Fix: train it (--teacher_epochs ≥ 1) or load "
                "one with --teacher=path.keras."
            )
        if self.batch_size < 1:
            raise ValueError(f"--batch_size must be at least 1, got {self.batch_size}.")
        if not self.learning_rate > 0:
            raise ValueError(
                f"--learning_rate must be > 0, got {self.learning_rate} "
                "(e.g. 2e-3 for adam, 0.05 for sgd)."
            )
        if self.optimizer.lower() not in OPTIMIZERS:
            raise ValueError(
                f"unknown optimizer {self.optimizer!r}; valid: {', '.join(OPTIMIZERS)}."
            )
        if not (self.temperature > 0 and self.temperature < float("inf")):
            raise ValueError(
                f"--temperature must be a finite number > 0, got {self.temperature} "
                "(1 is the plain softmax; 2-8 gives soft targets)."
            )
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(
                f"--alpha must be in [0, 1], got {self.alpha}: it weighs the "
                "distillation loss, and 1 - alpha the label loss."
            )
        losses.get(self.distillation_loss)
        if self.strategy not in distribute.STRATEGIES:
            raise ValueError(
                f"unknown --strategy={self.strategy!r}; valid: "
                f"{', '.join(distribute.STRATEGIES)}."
            )
        if self.mixed_precision not in distribute.MIXED_PRECISION:
            raise ValueError(
                f"unknown --mixed_precision={self.mixed_precision!r}; valid: "
                f"{', '.join(distribute.MIXED_PRECISION)}."
            )
        augment.parse(self.augment)
        augment.parse(self.teacher_augment)
        _check_export_flags(self.export_quantization, self.min_agreement, "--export_quantization")
        models.parse_spec(self.teacher_arch)
        models.parse_spec(self.student_arch)
        self._validate_teacher_cache()
        terms = features_lib.parse(self.features) if self.features else []
        if terms and self.teacher_cache:
            raise ValueError(
                "--features needs the teacher's feature maps, which the teacher "
                "cache does not store. Fix: drop --teacher_cache (online "
                "distillation) or --features."
            )
        if self.teacher_dtype not in models.COMPUTE_DTYPES:
            raise ValueError(
                f"--teacher_dtype={self.teacher_dtype!r}; valid: "
                f"{', '.join(models.COMPUTE_DTYPES)}."
            )
        if self.teacher_cache and self.teacher_dtype != "float32":
            raise ValueError(
                f"--teacher_dtype={self.teacher_dtype} has no effect with "
                "--teacher_cache: the cache stores the teacher's logits, computed "
                "once. Fix: drop --teacher_dtype (the cache already removes the "
                "teacher's cost per step)."
            )
        if terms and self.teacher_dtype != "float32":
            raise ValueError(
                "--teacher_dtype other than float32 cannot be combined with "
                "--features yet. Fix: drop one of them."
            )
        if self.teacher and not os.path.isfile(self.teacher):
            raise ValueError(
                f"--teacher={self.teacher!r} does not exist. Fix: pass the path "
                "of a saved .keras teacher, or leave --teacher empty to train one."
            )

    def _validate_teacher_cache(self):
        """--teacher_cache: no augmentation, not multi-worker, a sane top_k."""
        k = self.teacher_cache_top_k
        if k is not None and not self.teacher_cache:
            raise ValueError(
                f"--teacher_cache_top_k={k} needs --teacher_cache=DIR (the folder "
                "that stores the teacher's logits). Fix: pass both, or neither."
            )
        if not self.teacher_cache:
            return
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise ValueError(
                f"--teacher_cache_top_k must be an integer ≥ 1 (below the number of "
                f"classes), got {k!r}; leave it unset to store every logit."
            )
        teacher_cache.check_no_augmentation(self.augment)
        if self.strategy == "multi_worker":
            raise ValueError(
                "--teacher_cache cannot be used with --strategy=multi_worker: every "
                "worker would build or check the cache at once, and only one may "
                "write it. Fix: drop --teacher_cache (online distillation) for "
                "multi-worker training, or train on one machine (any other "
                "--strategy) with the cache."
            )


def _check_features(config, teacher, info):
    """Names of --features layers and their shapes, checked on the untrained
    models (a fresh student of --student_arch) before anything trains."""
    if not config.features:
        return
    student = models.build(config.student_arch, info.input_shape, info.num_classes,
                           name="student")
    features_lib.FeaturePlan(
        features_lib.parse(config.features), teacher, student,
        models.logits_model(teacher, "teacher")[0],
        models.logits_model(student, "student")[0],
    )


def default_output_dir():
    """``./kd_runs/<YYYYmmdd-HHMMSS>`` (``-2``, ``-3``, … if it exists)."""
    base = os.path.join("kd_runs", datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))
    path, n = base, 1
    while os.path.exists(path):
        n += 1
        path = f"{base}-{n}"
    return path


def make_optimizer(name, learning_rate):
    """A fresh Keras optimizer by name (adam, sgd with momentum 0.9, rmsprop)."""
    name = name.lower()
    if name == "adam":
        return keras.optimizers.Adam(learning_rate)
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate, momentum=0.9, nesterov=True)
    if name == "rmsprop":
        return keras.optimizers.RMSprop(learning_rate)
    raise ValueError(f"unknown optimizer {name!r}; valid: {', '.join(OPTIMIZERS)}.")


@contextlib.contextmanager
def deterministic(seed, enabled=True):
    """Runs the body with TensorFlow's op determinism and a seeded global RNG.

    Same seed → same run, bit for bit (parallel ``tf.data`` maps otherwise
    draw keras-cv's random numbers in a varying order). keras-cv's layers take
    their randomness from ``tf.random``'s global generator, which must be set
    explicitly under op determinism. The previous state is restored on exit.
    """
    if not enabled:
        yield
        return
    from tensorflow.python.framework import config as tf_config

    was_enabled = tf_config.is_op_determinism_enabled()
    tf.config.experimental.enable_op_determinism()
    tf.random.set_global_generator(tf.random.Generator.from_seed(seed))
    try:
        yield
    finally:
        if not was_enabled:
            tf_config.disable_op_determinism()


def load_teacher(path, info):
    """Loads a saved Keras classifier and checks it fits the dataset."""
    model = load_model(path, "--teacher")
    check_fits(model, info, "teacher")
    return model


def check_fits(model, info, role):
    """Raises ValueError if ``model``'s input or classes do not fit ``info``."""
    in_shape = tuple(model.inputs[0].shape[1:])
    if any(a is not None and a != b for a, b in zip(in_shape, info.input_shape)) or (
        len(in_shape) != len(info.input_shape)
    ):
        raise ValueError(
            f"the {role} takes inputs of shape {in_shape}, but {info.name!r} has "
            f"images of shape {tuple(info.input_shape)}. Fix: use the dataset the "
            f"{role} was trained on, or --image_size to resize the images."
        )
    classes = model.outputs[0].shape[-1]
    if classes != info.num_classes:
        raise ValueError(
            f"the {role} outputs {classes} classes, but {info.name!r} has "
            f"{info.num_classes}. Fix: use a {role} trained on this dataset."
        )


def _plain_compile(model, config, jit_compile=False, soft_labels=False):
    """Compiles a model trained on labels alone (sparse ids, or mixed one-hot)."""
    loss = (keras.losses.CategoricalCrossentropy(from_logits=True) if soft_labels
            else keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.compile(
        optimizer=make_optimizer(config.optimizer, config.learning_rate),
        loss=loss,
        metrics=["accuracy"],
        jit_compile=jit_compile,
    )


def evaluate(model, val_ds):
    """Accuracy and error count of a logits model on the validation batches."""
    correct = total = 0
    for images, labels in val_ds:
        logits = model(images, training=False)
        pred = np.argmax(np.asarray(logits), axis=-1)
        correct += int(np.sum(pred == np.asarray(labels).reshape(-1)))
        total += len(pred)
    return {"accuracy": correct / total, "errors": total - correct, "examples": total}


# Flags that may differ between a run and its resumption: where and how it
# runs, not what it trains (e.g. resume a CPU run on several GPUs).
_RESUME_IGNORES = (
    "output_dir", "verbose", "checkpoint_dir", "flags_used", "export",
    "export_quantization", "min_agreement",
    "strategy", "num_cpu_devices", "jit_compile", "mixed_precision", "deterministic",
)


def _check_resumable(config, strategy):
    """Ties --checkpoint_dir to one configuration; refuses a different one.

    Under multi-worker training all workers must see the same folder (shared
    storage): they compare what they find before the chief writes anything.
    """
    if not config.checkpoint_dir:
        return
    _io.ensure_dir(config.checkpoint_dir, "--checkpoint_dir")
    path = os.path.join(config.checkpoint_dir, "config.json")
    current = {
        k: v for k, v in dataclasses.asdict(config).items() if k not in _RESUME_IGNORES
    }
    current["image_size"] = list(current["image_size"] or []) or None
    _check_workers_share(config, strategy)
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
        if saved != current:
            changed = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
            raise ValueError(
                f"--checkpoint_dir={config.checkpoint_dir!r} holds a run with other "
                f"settings ({', '.join(changed)} differ), so it cannot be resumed "
                "with these flags. Fix: use a new --checkpoint_dir, or delete it to "
                "start over."
            )
    if not os.path.exists(path) and distribute.is_chief(strategy):
        _io.write_json(path, current)


def _checkpoint_state(folder):
    """Integers summarising what a checkpoint folder holds (for comparison)."""
    try:
        with open(os.path.join(folder, "config.json"), "rb") as f:
            state = [zlib.crc32(f.read())]
    except OSError:
        state = [-1]
    for phase in ("teacher", "baseline"):
        state.append(int(os.path.exists(os.path.join(folder, f"{phase}.keras"))))
    for phase in ("teacher", "baseline", "distill"):
        try:
            with open(os.path.join(folder, f"{phase}_backup", "latest.json"), encoding="utf-8") as f:
                state.append(int(json.load(f)["epoch"]))
        except (OSError, ValueError, KeyError, TypeError):
            state.append(-1)
    return state


def _check_workers_share(config, strategy):
    """Raises ValueError if the workers see different --checkpoint_dir contents.

    Each worker would otherwise resume from a different point, and the
    collectives would hang. A no-op outside multi-worker training.
    """
    if not distribute.is_multi_worker(strategy):
        return
    # A fresh folder looks the same (empty) to workers on separate disks, so
    # the chief first leaves a random token there; after a barrier every
    # worker reads it back, and the token is compared with the rest.
    token_path = os.path.join(config.checkpoint_dir, "workers.token")
    if distribute.is_chief(strategy) and not os.path.exists(token_path):
        _io.write_text(token_path, f"{random.getrandbits(62)}\n")
    distribute.gather_from_workers(strategy, [0])  # barrier: the token is written
    try:
        with open(token_path, encoding="utf-8") as f:
            token = int(f.read().strip())
    except (OSError, ValueError):
        token = -1
    state = [token, *_checkpoint_state(config.checkpoint_dir)]
    seen = distribute.gather_from_workers(strategy, state)
    if (seen != seen[0]).any():
        raise ValueError(
            f"the workers see different contents in --checkpoint_dir="
            f"{config.checkpoint_dir!r} (per worker: {seen.tolist()}). Under "
            "--strategy=multi_worker every worker must pass the same folder on "
            "storage they all share (a network file system or a mounted bucket)."
        )


def _phase_fit(model, dataset, config, phase, epochs):
    """``model.fit`` that, with --checkpoint_dir, resumes after a kill.

    Returns the full history (all epochs, also across restarts).
    """
    callbacks = []
    chief = distribute.is_chief(model.distribute_strategy)
    if config.checkpoint_dir:
        # The history row is written before the backup moves on: a kill in
        # between repeats that epoch, and _read_history keeps its last row.
        # Only the chief writes the shared history (no collective involved).
        if chief:
            callbacks.append(keras.callbacks.CSVLogger(
                os.path.join(config.checkpoint_dir, f"{phase}_history.csv"), append=True
            ))
        # Kept until the phase's result is saved (_mark_done / _drop_backup).
        callbacks.append(checkpoint.AtomicBackupAndRestore(
            _backup_dir(config, phase), delete_on_end=False
        ))
    history = distribute.fit(
        model, dataset, epochs=epochs, verbose=config.verbose, shuffle=False,
        callbacks=callbacks,
    ).history
    if config.checkpoint_dir and chief:
        history = _read_history(os.path.join(config.checkpoint_dir, f"{phase}_history.csv"))
    return history


def _backup_dir(config, phase):
    return os.path.join(config.checkpoint_dir, f"{phase}_backup")


def _drop_backup(config, phase, strategy):
    """Removes a phase's epoch backups once its result is safe (chief only)."""
    if config.checkpoint_dir and distribute.is_chief(strategy):
        shutil.rmtree(_backup_dir(config, phase), ignore_errors=True)


def _read_history(path):
    import csv

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


def _phase_done(config, name):
    """Path of a finished phase's model in --checkpoint_dir, if it exists."""
    if not config.checkpoint_dir:
        return None
    path = os.path.join(config.checkpoint_dir, f"{name}.keras")
    return path if os.path.exists(path) else None


def _mark_done(config, name, model, strategy):
    if not config.checkpoint_dir:
        return
    if distribute.is_chief(strategy):
        _io.save_model(model, os.path.join(config.checkpoint_dir, f"{name}.keras"))
    else:  # saving is a collective under multi-worker: save, then discard
        with tempfile.TemporaryDirectory() as scratch:
            _io.save_model(model, os.path.join(scratch, f"{name}.keras"))
    _drop_backup(config, name, strategy)  # only now: the phase's result is safe


def run(config, log=print):
    """Runs the whole path and returns the results dict (also in metrics.json).

    Models are built, compiled and trained inside the chosen
    ``tf.distribute`` strategy's scope and dtype policy; the export runs
    outside both, on the float32-variable student.
    """
    config.validate()
    distribute.configure_cpu_devices(config.num_cpu_devices)
    strategy = distribute.get_strategy(config.strategy)
    try:
        _check_resumable(config, strategy)
        with deterministic(config.seed, config.deterministic):
            return _run(config, log, strategy)
    except tf.errors.OpError as err:
        if distribute.is_multi_worker(strategy) and distribute.is_worker_lost(err):
            resume = (
                "it resumes from the last epoch backup in --checkpoint_dir"
                if config.checkpoint_dir else
                "it starts over (pass --checkpoint_dir to resume instead)"
            )
            raise distribute.WorkerLostError(
                f"another worker stopped ({_short(err)}). "
                "Fix: restart every stopped worker with its same command; "
                f"{resume}."
            ) from err
        if isinstance(err, tf.errors.InvalidArgumentError):
            # e.g. the augmentation's value-range check, or a label out of range
            raise ValueError(f"TensorFlow stopped the run: {_short(err, 600)}") from err
        raise


def _cached_train(config, teacher, info, log):
    """The distillation's batches from ``--teacher_cache`` (built there if absent).

    The ordered, unbatched training split is paired with the stored logits,
    then shuffled and batched as :func:`keras_kd.data.load` does, so the
    order (and, with a full cache, the training) is that of online
    distillation without augmentation (for mnist5k and tfds; folder data is
    read in another order, with the same examples). Returns ``(dataset, report)``.
    """
    ordered, _, _ = data.load_unbatched(
        config.dataset, data_dir=config.data_dir, image_size=config.image_size
    )
    size = f", image_size={config.image_size[0]}x{config.image_size[1]}" if config.image_size else ""
    attached, cache_report = teacher_cache.get_or_build(
        teacher, ordered, config.teacher_cache, top_k=config.teacher_cache_top_k,
        dataset_id=f"{config.dataset} train split{size}", log=log,
    )
    train, _ = data.finish(attached, None, info, batch_size=config.batch_size, seed=config.seed)
    return train, cache_report


def _short(err, limit=300):
    """A TensorFlow error's message on one line, without the op prefix."""
    text = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", " ".join(str(err).split()))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _run(config, log, strategy):
    distribute.check_global_batch(config.batch_size, strategy.num_replicas_in_sync)
    out = config.output_dir or default_output_dir()
    if not distribute.is_chief(strategy):  # the chief writes the run's files;
        # the other workers keep theirs apart
        out = os.path.join(out, f"worker-{distribute.worker_index(strategy)}")
    out = _io.ensure_dir(out, "--output_dir")
    keras.utils.set_random_seed(config.seed)
    started = time.perf_counter()
    timings = {}

    train_raw, val_ds, info = data.load(
        config.dataset,
        batch_size=config.batch_size,
        seed=config.seed,
        data_dir=config.data_dir,
        image_size=config.image_size,
    )
    teacher_aug = config.augment if config.teacher_augment is None else config.teacher_augment
    student_train = augment.apply(
        train_raw, config.augment, info.input_shape, seed=config.seed,
        num_classes=info.num_classes,
    )
    teacher_train = augment.apply(
        train_raw, teacher_aug, info.input_shape, seed=config.seed,
        num_classes=info.num_classes,
    )
    log(
        f"data: {info.name}: {info.num_train} train / {info.num_validation} "
        f"validation images of {tuple(info.input_shape)}, {info.num_classes} classes"
    )
    if config.teacher_cache:  # before the teacher trains: a bad top_k or folder
        teacher_cache.precheck(config.teacher_cache, config.teacher_cache_top_k,
                               info.num_classes)

    jit, note = distribute.resolve_jit_compile(config.jit_compile, strategy)
    log(
        f"strategy: {type(strategy).__name__} with {strategy.num_replicas_in_sync} "
        f"replica(s); dtype policy {config.mixed_precision}; XLA {'on' if jit else 'off'}"
    )
    if note:
        log(note)
    with distribute.mixed_precision(config.mixed_precision), strategy.scope():
        # 1. The teacher.
        t0 = time.perf_counter()
        teacher_file = config.teacher or _phase_done(config, "teacher")
        if teacher_file:
            teacher = load_teacher(teacher_file, info)
            log(f"teacher: loaded {teacher_file}")
            _check_features(config, teacher, info)
        else:
            teacher = models.build(
                config.teacher_arch, info.input_shape, info.num_classes,
                name="teacher", seed=config.seed,
            )
            _check_features(config, teacher, info)  # before hours of training
            _plain_compile(teacher, config, jit, augment.mixes_labels(teacher_aug))
            log(f"teacher: training {config.teacher_arch} for {config.teacher_epochs} epochs")
            _phase_fit(teacher, teacher_train, config, "teacher", config.teacher_epochs)
            _mark_done(config, "teacher", teacher, strategy)
        timings["teacher_s"] = time.perf_counter() - t0
        # Saved at once: a crash later in the run does not lose a trained teacher.
        teacher_path = _io.save_model(teacher, os.path.join(out, "teacher.keras"))

        # Offline distillation: the teacher's logits, stored once, replace its
        # forward pass in step 3 (the baseline and the teacher are unchanged).
        distill_train, cache_report = student_train, None
        if config.teacher_cache:
            distill_train, cache_report = _cached_train(config, teacher, info, log)
            timings["teacher_cache_s"] = cache_report["seconds"]

        # 2. The baseline: the student architecture alone, same schedule.
        t0 = time.perf_counter()
        baseline = models.build(
            config.student_arch, info.input_shape, info.num_classes,
            name="baseline", seed=config.seed + 1,
        )
        initial_student_weights = baseline.get_weights()
        baseline_file = _phase_done(config, "baseline")
        if baseline_file:
            baseline = keras.saving.load_model(baseline_file)
            log(f"baseline: loaded {baseline_file}")
        else:
            _plain_compile(baseline, config, jit, augment.mixes_labels(config.augment))
            log(f"baseline: training {config.student_arch} on the labels for "
                f"{config.epochs} epochs")
            _phase_fit(baseline, student_train, config, "baseline", config.epochs)
            _mark_done(config, "baseline", baseline, strategy)
        timings["baseline_s"] = time.perf_counter() - t0

        # 3. The distilled student: same architecture and initial weights.
        t0 = time.perf_counter()
        student = models.build(
            config.student_arch, info.input_shape, info.num_classes,
            name="student", seed=config.seed + 1,
        )
        student.set_weights(initial_student_weights)
        distiller = Distiller(
            teacher, student,
            temperature=config.temperature,
            alpha=config.alpha,
            distillation_loss=config.distillation_loss,
            features=config.features,
            teacher_dtype=config.teacher_dtype,
        )
        with warnings.catch_warnings():  # the label-check caveat is in --help
            warnings.simplefilter("ignore", UserWarning)
            distiller.compile(
                optimizer=make_optimizer(config.optimizer, config.learning_rate),
                metrics=["accuracy"],
                jit_compile=jit,
            )
        source = f"the teacher cache {config.teacher_cache}" if cache_report else "the teacher"
        log(
            f"distill: {config.student_arch} from {source}, T={config.temperature:g}, "
            f"alpha={config.alpha:g}, loss={config.distillation_loss}, {config.epochs} epochs"
        )
        history = _phase_fit(distiller, distill_train, config, "distill", config.epochs)
        _drop_backup(config, "distill", strategy)
        timings["distill_s"] = time.perf_counter() - t0

    # 4. Evaluate, save, export.
    rows = []
    for role, model in (("teacher", teacher), ("baseline", baseline), ("distilled", student)):
        scores = evaluate(model, val_ds)
        rows.append({"model": role, "params": models.count_params(model), **scores})
    paths = {
        "teacher": teacher_path,
        "baseline": _io.save_model(baseline, os.path.join(out, "baseline.keras")),
        "student": _io.save_model(student, os.path.join(out, "student.keras")),
    }
    tflite = export_error = None
    # The chief exports; other workers of a multi-worker job would only
    # repeat the same conversion and check.
    if config.export and distribute.is_chief(strategy):
        t0 = time.perf_counter()
        tflite_path = os.path.join(out, "student.tflite")
        try:
            # Verified on the validation split; the un-augmented training
            # images calibrate int8.
            tflite = export.export_verified(
                student, tflite_path, val_ds,
                quantization=config.export_quantization,
                representative_data=train_raw,
                min_agreement=config.min_agreement,
                class_names=info.class_names,
                log=log,
            )
        except (export.AgreementError, export.RuntimeCheckError) as err:
            # metrics.json and report.md are still written, then the error
            export_error, tflite = err, {"error": str(err)}
        else:
            paths["student_tflite"] = tflite_path
            paths["labels"] = export.labels_path(tflite_path)
            paths["tflite_metadata"] = export.metadata_path(tflite_path)
            log(export_summary(tflite_path, tflite))
        timings["export_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - started

    results = {
        "dataset": {
            "name": info.name,
            "input_shape": list(info.input_shape),
            "num_classes": info.num_classes,
            "num_train": info.num_train,
            "num_validation": info.num_validation,
        },
        "models": rows,
        "distillation_history": {k: [float(v) for v in vs] for k, vs in history.items()},
        "tflite": tflite,
        "timings": {k: round(v, 2) for k, v in timings.items()},
        "distribution": {
            "strategy": config.strategy,
            "strategy_class": type(strategy).__name__,
            "replicas": strategy.num_replicas_in_sync,
            "mixed_precision": config.mixed_precision,
            "jit_compile": jit,
        },
        "config": {
            k: v for k, v in dataclasses.asdict(config).items() if k != "flags_used"
        },
        "flags": config.flags_used,
        "teacher_cache": cache_report,
        "artifacts": {k: os.path.basename(v) for k, v in paths.items()},
        "output_dir": os.path.abspath(out),
    }
    _io.write_json(os.path.join(out, "metrics.json"), results)
    _io.write_text(os.path.join(out, "report.md"), report.markdown(results))
    log(report.table(rows))
    log(f"wrote {out}/: {', '.join(sorted(results['artifacts'].values()))}, metrics.json, report.md")
    if export_error is not None:
        raise export_error
    return results


# --------------------------------------------------------------------------
# Export: the job's last step, and ``keras-kd export`` for any saved model
# --------------------------------------------------------------------------


def _check_export_flags(quantization, min_agreement, flag):
    valid = ("auto", *export.QUANTIZATIONS)
    if quantization not in valid:
        raise ValueError(f"unknown {flag}={quantization!r}; valid: {', '.join(valid)}.")
    if min_agreement is not None and not 0.0 <= min_agreement <= 1.0:
        raise ValueError(
            f"--min_agreement must be a fraction in [0, 1] (e.g. 0.99), got {min_agreement}."
        )


def export_summary(path, figures):
    """One line on an exported file: mode, size, agreement, accuracy, latency."""
    head = (f"export: {os.path.basename(path)} ({figures['quantization']}, "
            f"{figures['size_bytes'] / 1024:.1f} KiB)")
    if "agreement" not in figures:
        return head + ": not verified (Flex ops)."
    return (
        f"{head}: agrees with the Keras model on {100 * figures['agreement']:.2f}% of "
        f"{figures['examples']} validation images, accuracy "
        f"{100 * figures['accuracy']:.2f}%, max |Δ| {figures['max_abs_diff']:.3g}, "
        f"{figures['latency_ms_median']:.3f} ms/image "
        f"({figures['num_threads']} thread{'s' if figures['num_threads'] != 1 else ''})"
    )


def load_model(path, flag="--model"):
    """Loads a saved Keras model; clear ``ValueError``s name ``flag`` and the fix."""
    if not os.path.isfile(path):
        raise ValueError(
            f"{flag}={path!r} does not exist. Fix: pass the path of a saved Keras "
            "model (written by model.save('model.keras'))."
        )
    try:
        model = keras.saving.load_model(path)
    except Exception as err:
        raise ValueError(
            f"{flag}={path!r} is not a Keras model file ({_short(err, 200)}). Fix: pass "
            "a file written by model.save('model.keras')."
        ) from err
    if not isinstance(model, keras.Model):
        raise ValueError(f"{flag}={path!r} holds a {type(model).__name__}, not a keras.Model.")
    return model


def export_saved_model(model_path, *, dataset, data_dir=None, image_size=None,
                       output=None, quantization="auto", min_agreement=None,
                       probabilities=False, allow_flex=False, int8_io=False, log=print):
    """``keras-kd export``: a saved Keras classifier → a verified ``.tflite``.

    Loads ``model_path`` and ``dataset`` (:func:`keras_kd.data.load`), then
    :func:`keras_kd.export.export_verified`: the validation split checks the
    file against the Keras model, the first
    :data:`keras_kd.export.REPRESENTATIVE_LIMIT` training images calibrate
    int8, and the class names come from the dataset. ``output`` defaults to
    ``model_path`` with ``.tflite`` for ``.keras``. Returns the figures
    (:func:`keras_kd.export.verify`'s dict, plus ``quantization`` and ``path``).
    """
    _check_export_flags(quantization, min_agreement, "--quantization")
    if int8_io and quantization != "int8":
        raise ValueError(
            f"--int8_io needs --quantization=int8, got {quantization!r}: only a fully "
            "integer model has int8 input and output tensors."
        )
    output = output or os.path.splitext(model_path)[0] + ".tflite"
    if not output.endswith(".tflite"):
        raise ValueError(f"--output must end in .tflite, got {output!r}.")
    _io.ensure_dir(os.path.dirname(os.path.abspath(output)), f"the folder of --output={output!r}")
    model = load_model(model_path, "--model")
    train, val, info = data.load(
        dataset, batch_size=64, seed=0, data_dir=data_dir, image_size=image_size
    )
    check_fits(model, info, "model")
    log(f"export: {model_path} ({models.count_params(model):,} params) on {info.name}, "
        f"quantization {quantization}")
    figures = export.export_verified(
        model, output, val,
        quantization=quantization,
        representative_data=train,
        min_agreement=min_agreement,
        probabilities=probabilities,
        allow_flex=allow_flex,
        int8_io=int8_io,
        class_names=info.class_names,
        log=log,
    )
    log(export_summary(output, figures))
    log(f"wrote {output}, {export.metadata_path(output)}, {export.labels_path(output)}")
    return {**figures, "path": output}
