"""The settings of a run: :class:`JobConfig`, one field per ``keras-kd`` flag.

The main job (:mod:`keras_kd.job`), the sweep (trials are
``dataclasses.replace(config, ...)``) and the CLI (whose flags are generated
from the fields: name, type, default, choices and help) all read it.
:meth:`JobConfig.validate` owns no rule of its own beyond the run's length and
optimizer: it calls each rule where it lives (the Distiller's, the cache's, the
export's, the augmentation's, the strategies') with flag names.
"""

import dataclasses
import math

import keras

from keras_kd import (
    archs,
    augment,
    cache,
    data,
    diagnostics,
    distiller,
    distribute,
    export,
    losses,
    modelfiles,
)
from keras_kd.export import QUANTIZATIONS

__all__ = ["JobConfig", "make_optimizer", "split_list", "OPTIMIZERS", "SCHEDULES"]

OPTIMIZERS = ("adam", "sgd", "rmsprop")
SCHEDULES = ("cosine", "constant")
#: ``--patient`` trains the students this many times longer.
PATIENCE = 4
#: What ``--tune`` can choose, and the values it tries.
TUNE_GRID = {"temperature": (1.0, 2.0, 4.0), "alpha": (0.7, 1.0)}
#: The cosine schedule's linear warm-up: this fraction of the steps (at least one).
WARMUP_FRACTION = 0.05


def _field(default, help, **meta):
    """A config field with its command-line help (``keras_kd.cli`` makes the flags)."""
    return dataclasses.field(default=default, metadata={"help": help, **meta})


@dataclasses.dataclass
class JobConfig:
    """Everything the main job needs; each field is a ``keras-kd`` flag of the same name.

    The defaults are the measured defaults of BUILD_NOTES.md ("Choosing the defaults").
    """

    dataset: str = _field("mnist5k", "mnist5k (embedded), tfds:<name> or folder:<path>.")
    data_dir: str | None = _field(None, "tensorflow-datasets data_dir holding pre-downloaded data.")
    image_size: tuple | None = _field(
        None, "Resize images to H,W (needed for datasets of mixed sizes).",
        parse=data.parse_image_size)
    teacher: str | None = _field(
        None, "Trained teacher(s): a .keras file, a legacy .h5 or a SavedModel folder; "
        "comma-separated for an ensemble. Empty trains --teacher_arch.")
    teacher_arch: str = _field(
        "cnn", "Teacher architecture spec, e.g. cnn:width=2, mlp, resnet_cifar:depth=20; "
        "comma-separated for an ensemble, trained in turn.")
    teacher_preprocessing: str = _field(
        "none", "How the teacher expects its input, applied inside its view (the students "
        "and student.tflite keep raw 0-255 pixels): none, unit (x/255), tf (x/127.5-1), "
        "torch (x/255, ImageNet mean/std), caffe (BGR, ImageNet mean subtracted) or "
        "scale=S,offset=O; comma-separated, one per ensemble member.")
    teacher_weights: str | None = _field(
        None, "Weights of the ensemble members' soft targets, comma-separated (default "
        "equal).")
    teacher_image_size: tuple | None = _field(
        None, "H,W of a teacher trained here, when it differs from the students' "
        "(--image_size); a loaded teacher keeps its own. Each model gets each batch at its "
        "own size (bilinear, antialiased when shrinking).", parse=data.parse_image_size)
    min_teacher_accuracy: float | None = _field(
        None, "Stop before any student trains when the teacher's validation accuracy is "
        "below this fraction (default: twice chance, 2 / classes).")
    student_arch: str = _field(
        "mlp:hidden=100x100",
        "Student architecture spec, e.g. cnn:width=0.25, mlp:hidden=800x800 (the default has "
        "fewer parameters and multiply-adds than the default teacher).")
    temperature: float = _field(
        1.0, f"Softmax temperature T of the soft targets, in [{losses.MIN_TEMPERATURE:g}, "
        f"{losses.MAX_TEMPERATURE:g}] (where the float32 math is exact).")
    alpha: float = _field(
        1.0, "Weight of the distillation loss; 1 - alpha weighs the label loss (the default "
        "1 is pure function matching: the student learns the teacher's outputs only).")
    tune: str | None = _field(
        None, "Choose these settings for your data before the students train: temperature, "
        "alpha, or both (comma-separated), among T in "
        f"{','.join(f'{v:g}' for v in TUNE_GRID['temperature'])} and alpha in "
        f"{','.join(f'{v:g}' for v in TUNE_GRID['alpha'])}, by short "
        "distillations on 80% of the training split scored on the other 20% (never on the "
        "validation split the report compares the models on).")
    tune_epochs: int | None = _field(
        None, "Epochs of each --tune trial (default: a third of --epochs, at least 1).")
    distillation_loss: str = _field(
        "kl", "Distillation loss: kl, soft_ce, mse_logits, mse_probs, dkd or dist.")
    optimizer: str = _field("adam", "Optimizer for all three models.", choices=OPTIMIZERS)
    learning_rate: float = _field(2e-3, "Peak learning rate.")
    lr_schedule: str = _field(
        "cosine", "Learning-rate schedule of every model: cosine (linear warm-up over the first "
        "5% of the steps, then cosine decay to 0 at the last step) or constant.",
        choices=SCHEDULES)
    epochs: int = _field(48, "Epochs for the baseline and the distilled student.")
    budget: int | None = _field(
        None, "Optimizer steps for each student instead of --epochs (rounded up to whole "
        "epochs of the training split): the same length for any dataset size.")
    patient: bool = _field(
        False, "Beyer et al. (2022)'s 'patient and consistent' regime: pure function matching "
        "(alpha=1), mixup added to --augment (the teacher and the student see the same mixed "
        "view), and 4x the students' epochs (or --budget).")
    teacher_epochs: int = _field(12, "Epochs for training the teacher.")
    batch_size: int = _field(64, "Batch size (the global batch under a strategy).")
    augment: str = _field(
        "jitter+mixup", "Augmentation policy for the students (keras_kd.augment.POLICIES, chained "
        "with +, options like jitter:pixels=2); one view per batch for teacher and student.")
    teacher_augment: str | None = _field(
        None, "Augmentation for teacher training (default: --augment without its mixup and "
        "cutmix parts, e.g. jitter for jitter+mixup).")
    teacher_cache: str | None = _field(
        None, "Offline distillation: compute the teacher's logits on the training split "
        "once, store them in DIR, and train the student from them; needs --augment=none. A "
        "DIR holding a cache is reused after checking it is this teacher's and this data's.")
    teacher_cache_top_k: int | None = _field(
        None, "With --teacher_cache: store only the K largest logits per image and the mean "
        "of the rest (unset: all logits).")
    seed: int = _field(0, "Random seed.")
    repeats: int = _field(
        1, "Train the baseline/distilled pair this many times, seeded --seed, --seed+1, ... "
        "(one teacher); the report gives each row's and the gain's mean ± spread. "
        "student.tflite is the first pair's student.")
    output_dir: str | None = _field(None, "Output folder (default ./kd_runs/<timestamp>).")
    export: bool = _field(True, "Export and verify student.tflite.")
    export_quantization: str = _field(
        "auto", "Quantization of student.tflite: none (float32), float16, dynamic (int8 "
        "weights), int8 (full integer, calibrated on training images), or auto: the first of "
        "int8, dynamic, float16, none whose top-1 agreement with the Keras student on the "
        "validation split is at least --min_agreement (default 0.99).",
        choices=("auto", *QUANTIZATIONS))
    min_agreement: float | None = _field(
        None, "Fail the export if student.tflite agrees with the Keras student (top-1, "
        "validation split) less often than this fraction, e.g. 0.99; also the bar of "
        "--export_quantization=auto.")
    deterministic: bool = _field(
        True, "TensorFlow op determinism and a seeded global RNG: the same --seed gives the "
        "same run on the same machine and TensorFlow build.")
    strategy: str = _field(
        "auto", "tf.distribute strategy: auto, mirrored, one_device, multi_worker "
        "(TF_CONFIG), tpu.", choices=distribute.STRATEGIES)
    num_cpu_devices: int | None = _field(
        None, "Split the CPU into N logical devices (multi-replica runs without GPUs).")
    mixed_precision: str = _field(
        "float32", "Keras dtype policy for training.", choices=distribute.MIXED_PRECISION)
    checkpoint_dir: str | None = _field(
        None, "Back up every epoch here; rerunning the same command after a crash or kill "
        "resumes from the last backup.")
    jit_compile: bool = _field(
        False, "XLA-compile the train steps (one replica only; off under multi-replica "
        "strategies). XLA drops the per-batch data checks: a bad batch is then reported at "
        "the end of its epoch. Often slower on CPU.")
    features: str | None = _field(
        None, "Feature distillation terms between named layers, e.g. with "
        "--student_arch=cnn:width=0.5: 'hint:block2_conv=block2_conv,weight=1;attention:"
        "block1_relu=block1_relu' (FitNets hints with a learned projector where shapes "
        "differ; attention transfer). Quote it in a shell.")
    teacher_dtype: str = _field(
        "float32", "Precision of the frozen teacher's inference (float32 also for a teacher "
        "built under --mixed_precision; its logits are cast to float32 before the softmax). "
        "Not with --teacher_cache.", choices=("float32", "bfloat16", "float16"))
    verbose: int = _field(
        1, "Keras verbosity: 0 silent, 1 progress bars, 2 one line per epoch, 3 progress bars "
        "and TensorFlow's own log lines (the TFLite converter's and LiteRT's, kept off the "
        "console otherwise; its C++ start-up INFO lines also need TF_CPP_MIN_LOG_LEVEL=0).")
    tensorboard: bool = _field(
        False, "Write TensorBoard event files of every training phase (teacher, baseline, "
        "distill, tune trials, ...) to <output_dir>/tensorboard/<phase>/; view them with "
        "tensorboard --logdir=<output_dir>/tensorboard.")
    flags_used: dict = dataclasses.field(default_factory=dict, metadata={"cli": False})

    def validate(self):
        """Raises ValueError for values the job cannot run with.

        Each rule lives next to what it checks (the Distiller's, the cache's,
        the export's, the augmentation's); this only calls them with flag names.
        """
        if self.epochs < 1:
            raise ValueError(f"--epochs must be at least 1, got {self.epochs}.")
        if self.teacher_epochs < 1 and not self.teacher:
            raise ValueError(
                f"--teacher_epochs={self.teacher_epochs} would distil from an "
                "untrained teacher. Fix: train it (--teacher_epochs ≥ 1) or load "
                "one with --teacher=path.keras."
            )
        self.tuned()
        if self.tune_epochs is not None and self.tune_epochs < 1:
            raise ValueError(f"--tune_epochs must be at least 1, got {self.tune_epochs}.")
        if self.budget is not None and self.budget < 1:
            raise ValueError(f"--budget must be at least 1 step, got {self.budget}.")
        if self.repeats < 1:
            raise ValueError(f"--repeats must be at least 1, got {self.repeats}.")
        if self.verbose not in (0, 1, 2, 3):
            raise ValueError(f"--verbose must be 0, 1, 2 or 3, got {self.verbose}: 0 silent, 1 "
                             "progress bars, 2 a line per epoch, 3 progress bars and "
                             "TensorFlow's own log lines.")
        if self.batch_size < 1:
            raise ValueError(f"--batch_size must be at least 1, got {self.batch_size}.")
        if not self.learning_rate > 0:
            raise ValueError(
                f"--learning_rate must be > 0, got {self.learning_rate} "
                "(e.g. 2e-3 for adam, 0.05 for sgd)."
            )
        _optimizer_class(self.optimizer)  # before TensorFlow starts (no variables)
        self.teacher_settings()
        distribute.check_settings(strategy=self.strategy, mixed_precision=self.mixed_precision,
                                  prefix="--")
        augment.parse(self.augment)
        augment.parse(self.teacher_augment)
        export.check_settings(self.export_quantization, self.min_agreement,
                              flag="--export_quantization")
        for spec in self.teacher_archs():
            archs.parse_spec(spec)
        archs.parse_spec(self.student_arch)
        for path in self.teacher_paths():
            modelfiles.check_path(path, "--teacher")
        diagnostics.check_bar(self.min_teacher_accuracy, "--min_teacher_accuracy")
        if not self.teacher and set(self.teacher_preprocessings()) != {"none"}:
            raise ValueError(
                "--teacher_preprocessing is for teachers trained elsewhere (--teacher): a "
                "teacher trained here takes raw 0-255 pixels (its normalisation is inside "
                "it). Fix: drop --teacher_preprocessing, or pass --teacher.")
        if self.teacher and self.teacher_image_size:
            raise ValueError(
                "--teacher_image_size is the size of a teacher trained here; a loaded teacher "
                "(--teacher) keeps its own and gets each batch resized to it. Fix: drop "
                "--teacher_image_size.")
        cache.check_usable(
            directory=bool(self.teacher_cache), top_k=self.teacher_cache_top_k,
            augment=self.augment, multi_worker=self.strategy == "multi_worker",
            features=self.features, teacher_dtype=self.teacher_dtype)

    # -- the teacher(s): comma-separated lists ---------------------------------

    def teacher_paths(self):
        """The ``--teacher`` files (several: an ensemble); [] trains ``--teacher_arch``."""
        return [p.strip() for p in self.teacher.split(",")] if self.teacher else []

    def teacher_archs(self):
        """The ``--teacher_arch`` specs to train (several: an ensemble, trained in turn)."""
        return split_list(self.teacher_arch)

    def num_teachers(self):
        return len(self.teacher_paths() or self.teacher_archs())

    def teacher_names(self):
        """The teachers' names (and files, phases): ``teacher``, or ``teacher_1``, ..."""
        n = self.num_teachers()
        return ["teacher"] if n == 1 else [f"teacher_{i + 1}" for i in range(n)]

    def teacher_settings(self):
        """The Distiller's settings, checked by its own rules with flag names
        (:func:`keras_kd.distiller.check_settings`)."""
        try:
            weights = ([float(w) for w in split_list(self.teacher_weights)]
                       if self.teacher_weights else None)
        except ValueError:
            raise ValueError(f"--teacher_weights={self.teacher_weights!r} must be "
                             "comma-separated numbers, e.g. 0.7,0.3.") from None
        return distiller.check_settings(
            temperature=self.temperature, alpha=self.alpha,
            distillation_loss=self.distillation_loss, features=self.features,
            teacher_dtype=self.teacher_dtype, num_teachers=self.num_teachers(),
            teacher_preprocessing=split_list(self.teacher_preprocessing),
            teacher_weights=weights, prefix="--")

    def teacher_preprocessings(self):
        """One canonical preprocessing spec per teacher."""
        specs = self.teacher_settings()["teacher_preprocessing"]
        return list(specs) if isinstance(specs, tuple) else [specs]

    def teacher_weight_list(self):
        """The ensemble's weights, normalised to sum 1 (None: equal)."""
        weights = self.teacher_settings()["teacher_weights"]
        return None if weights is None else list(weights)


    def effective(self, steps_per_epoch):
        """The config the students train with: ``--patient`` and ``--budget`` applied
        (``steps_per_epoch``: batches in one epoch of the training split)."""
        config, epochs = self, self.epochs
        if self.budget:
            epochs = max(1, math.ceil(self.budget / steps_per_epoch))
        if self.patient:
            mixup = "mixup" in {name for name, _ in augment.parse(self.augment)}
            augment_spec = self.augment if mixup else (
                "mixup" if self.augment == "none" else f"{self.augment}+mixup")
            config = dataclasses.replace(config, alpha=1.0, augment=augment_spec)
            epochs *= PATIENCE
        return dataclasses.replace(config, epochs=epochs)

    def tuned(self):
        """The settings ``--tune`` chooses, in :data:`TUNE_GRID` order ([] without it)."""
        names = split_list(self.tune) if self.tune else []
        unknown = [n for n in names if n not in TUNE_GRID]
        if unknown or len(set(names)) != len(names):
            raise ValueError(f"--tune={self.tune!r}: name each of {', '.join(TUNE_GRID)} at "
                             "most once, comma-separated, e.g. --tune=temperature,alpha.")
        return [n for n in TUNE_GRID if n in names]

    def resume_settings(self):
        """What a run's results depend on: compared when a checkpoint is resumed.

        Where and how it runs may change between resumptions (e.g. resume a
        CPU run on several GPUs); what it trains may not.
        """
        settings = {k: v for k, v in dataclasses.asdict(self).items()
                    if k not in _RESUME_IGNORES}
        for key in ("image_size", "teacher_image_size"):
            settings[key] = list(settings[key] or []) or None
        return settings


_RESUME_IGNORES = (
    "output_dir", "verbose", "tensorboard", "checkpoint_dir", "flags_used", "export",
    "export_quantization", "min_agreement", "min_teacher_accuracy",
    "strategy", "num_cpu_devices", "jit_compile", "mixed_precision", "deterministic",
)


def split_list(text):
    """Comma-separated items, where a ``key=value`` part joins the item before it when that
    item has options and not yet this key, so specs keep theirs: ``"mlp:hidden=8,dropout=0.2,
    cnn"``, ``"unit,scale=2,offset=1"`` and ``"scale=2,offset=0,scale=3"`` are two items each."""
    items = []
    for part in (p.strip() for p in str(text).split(",")):
        key, eq, _ = part.partition("=")
        keys = {k.split(":")[-1] for k, _, _ in (o.partition("=") for o in
                                                   items[-1].split(","))} if items else set()
        if items and eq and ":" not in key and "=" in items[-1] and key not in keys:
            items[-1] += "," + part
        else:
            items.append(part)
    return items


def _optimizer_class(name):
    """The Keras optimizer class of a name, and its extra settings; the one rule for names."""
    found = {"adam": (keras.optimizers.Adam, {}),
             "sgd": (keras.optimizers.SGD, {"momentum": 0.9, "nesterov": True}),
             "rmsprop": (keras.optimizers.RMSprop, {})}.get(str(name).lower())
    if found is None:
        raise ValueError(f"unknown optimizer {name!r}; valid: {', '.join(OPTIMIZERS)}.")
    return found


def make_optimizer(name, learning_rate, schedule="constant", steps=None):
    """A fresh Keras optimizer by name (adam, sgd with Nesterov momentum 0.9, rmsprop).

    ``schedule="cosine"`` with ``steps`` (the run's optimizer steps): the learning rate
    rises linearly from 0 over the first :data:`WARMUP_FRACTION` of the steps, then
    follows ``keras.optimizers.schedules.CosineDecay`` to 0 at the last step; resumed
    runs continue it (the step count is the optimizer's, kept in its backups).
    """
    cls, settings = _optimizer_class(name)
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown learning-rate schedule {schedule!r}; valid: "
                         f"{', '.join(SCHEDULES)}.")
    if schedule == "cosine":
        if not steps or steps < 1:
            raise ValueError(f"the cosine schedule needs the number of steps, got {steps!r}.")
        warmup = max(1, round(WARMUP_FRACTION * steps))
        learning_rate = keras.optimizers.schedules.CosineDecay(
            0.0, decay_steps=max(1, steps - warmup), warmup_target=float(learning_rate),
            warmup_steps=warmup)
    return cls(learning_rate, **settings)
