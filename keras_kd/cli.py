"""``keras-kd``: absl flags → :func:`keras_kd.job.run`. No logic of its own.

    keras-kd                                    # the whole path on mnist5k
    keras-kd --temperature=8 --alpha=0.5 --epochs=20
    keras-kd --teacher=kd_runs/x/teacher.keras  # reuse a trained teacher
    keras-kd --augment=none --teacher_cache=kd_cache  # offline: teacher logits stored once
    keras-kd --flagfile=run.flags
    python -m keras_kd --helpfull
    keras-kd export --model=student.keras --quantization=int8 --dataset=mnist5k
    keras-kd export --help                      # the export subcommand's flags
    keras-kd sweep --temperature=1,2,4,8 --alpha=0.5,0.9 --output_dir=kd_runs/sweep
    keras-kd sweep --help                       # the sweep subcommand's flags
"""

import sys

from absl import app, flags

from keras_kd import augment as _augment
from keras_kd import data as _data
from keras_kd import distribute, export, job, losses

_D = job.JobConfig()
FLAGS = flags.FLAGS

flags.DEFINE_string("dataset", _D.dataset, "mnist5k (embedded), tfds:<name> or folder:<path>.")
flags.DEFINE_string("data_dir", None, "tensorflow-datasets data_dir holding pre-downloaded data.")
flags.DEFINE_string("image_size", None, "Resize images to H,W (needed for datasets of mixed sizes).")
flags.DEFINE_string("teacher", None, "Path to a trained .keras teacher; empty trains one.")
flags.DEFINE_string("teacher_arch", _D.teacher_arch, "Teacher architecture spec, e.g. cnn:width=2, mlp, resnet_cifar:depth=20.")
flags.DEFINE_string("student_arch", _D.student_arch, "Student architecture spec, e.g. cnn:width=0.25, mlp:hidden=800x800.")
flags.DEFINE_float("temperature", _D.temperature, "Softmax temperature T of the soft targets (> 0).")
flags.DEFINE_float("alpha", _D.alpha, "Weight of the distillation loss; 1 - alpha weighs the label loss.")
flags.DEFINE_string("distillation_loss", _D.distillation_loss, f"One of {', '.join(losses.available())}.")
flags.DEFINE_enum("optimizer", _D.optimizer, list(job.OPTIMIZERS), "Optimizer for all three models.")
flags.DEFINE_float("learning_rate", _D.learning_rate, "Learning rate.")
flags.DEFINE_integer("epochs", _D.epochs, "Epochs for the baseline and the distilled student.")
flags.DEFINE_integer("teacher_epochs", _D.teacher_epochs, "Epochs for training the teacher.")
flags.DEFINE_integer("batch_size", _D.batch_size, "Batch size.")
flags.DEFINE_string("augment", _D.augment, f"Augmentation policy for the students: {', '.join(sorted(_augment.POLICIES))}, options like jitter:pixels=2.")
flags.DEFINE_string("teacher_augment", None, "Augmentation for teacher training (default: --augment).")
flags.DEFINE_string("teacher_cache", None, "Offline distillation: compute the teacher's logits on the training split once, store them in DIR, and train the student from them; needs --augment=none. A DIR holding a cache is reused after checking it is this teacher's and this data's.")
flags.DEFINE_integer("teacher_cache_top_k", None, "With --teacher_cache: store only the K largest logits per image and the mean of the rest (unset: all logits).")
flags.DEFINE_integer("seed", _D.seed, "Random seed.")
flags.DEFINE_string("output_dir", None, "Output folder (default ./kd_runs/<timestamp>).")
flags.DEFINE_bool("export", True, "Export and verify student.tflite.")
flags.DEFINE_enum("export_quantization", _D.export_quantization, ["auto", *export.QUANTIZATIONS], "Quantization of student.tflite: none (float32), float16, dynamic (int8 weights), int8 (full integer, calibrated on training images), or auto: the first of int8, dynamic, float16, none whose top-1 agreement with the Keras student on the validation split is at least --min_agreement (default 0.99).")
flags.DEFINE_float("min_agreement", None, "Fail the export if student.tflite agrees with the Keras student (top-1, validation split) less often than this fraction, e.g. 0.99; also the bar of --export_quantization=auto.")
flags.DEFINE_bool("deterministic", _D.deterministic, "TensorFlow op determinism and a seeded global RNG: the same --seed gives the same run.")
flags.DEFINE_enum("strategy", _D.strategy, list(distribute.STRATEGIES), "tf.distribute strategy: auto, mirrored, one_device, multi_worker (TF_CONFIG), tpu.")
flags.DEFINE_integer("num_cpu_devices", None, "Split the CPU into N logical devices (multi-replica runs without GPUs).")
flags.DEFINE_enum("mixed_precision", _D.mixed_precision, list(distribute.MIXED_PRECISION), "Keras dtype policy for training.")
flags.DEFINE_string("checkpoint_dir", None, "Back up every epoch here; rerunning the same command after a crash or kill resumes from the last backup.")
flags.DEFINE_integer("max_restarts", 3, lower_bound=0, help="With --strategy=multi_worker: when another worker stops, restart this one (up to N times) to wait for it and resume from --checkpoint_dir.")
flags.DEFINE_bool("jit_compile", _D.jit_compile, "XLA-compile the train steps (one replica only; off under multi-replica strategies). XLA drops the label-range check. Often slower on CPU (issue 7 measures it).")
flags.DEFINE_string("features", None, "Feature distillation terms between named layers, e.g. with --student_arch=cnn:width=0.5: 'hint:block2_conv=block2_conv,weight=1;attention:block1_relu=block1_relu' (FitNets hints with a learned projector where shapes differ; attention transfer). Quote it in a shell.")
flags.DEFINE_enum("teacher_dtype", _D.teacher_dtype, ["float32", "bfloat16", "float16"], "Precision of the frozen teacher's inference (float32 also for a teacher built under --mixed_precision; its logits are cast to float32 before the softmax). Not with --teacher_cache. benchmarks/teacher_dtype.py measures speed and fidelity.")
flags.DEFINE_integer("verbose", _D.verbose, "Keras verbosity: 0 silent, 1 progress bars, 2 one line per epoch.")


def config_from_flags():
    """The :class:`keras_kd.job.JobConfig` the parsed flags describe."""
    ours = {f.name for f in FLAGS.get_flags_for_module(__name__)}
    used = {name: FLAGS[name].value for name in sorted(ours)}
    return job.JobConfig(
        dataset=FLAGS.dataset,
        data_dir=FLAGS.data_dir,
        image_size=_data.parse_image_size(FLAGS.image_size),
        teacher=FLAGS.teacher or None,
        teacher_arch=FLAGS.teacher_arch,
        student_arch=FLAGS.student_arch,
        temperature=FLAGS.temperature,
        alpha=FLAGS.alpha,
        distillation_loss=FLAGS.distillation_loss,
        optimizer=FLAGS.optimizer,
        learning_rate=FLAGS.learning_rate,
        epochs=FLAGS.epochs,
        teacher_epochs=FLAGS.teacher_epochs,
        batch_size=FLAGS.batch_size,
        augment=FLAGS.augment,
        teacher_augment=FLAGS.teacher_augment,
        teacher_cache=FLAGS.teacher_cache or None,
        teacher_cache_top_k=FLAGS.teacher_cache_top_k,
        seed=FLAGS.seed,
        output_dir=FLAGS.output_dir,
        export=FLAGS.export,
        export_quantization=FLAGS.export_quantization,
        min_agreement=FLAGS.min_agreement,
        deterministic=FLAGS.deterministic,
        strategy=FLAGS.strategy,
        num_cpu_devices=FLAGS.num_cpu_devices,
        mixed_precision=FLAGS.mixed_precision,
        checkpoint_dir=FLAGS.checkpoint_dir,
        jit_compile=FLAGS.jit_compile,
        features=FLAGS.features or None,
        teacher_dtype=FLAGS.teacher_dtype,
        verbose=FLAGS.verbose,
        flags_used=used,
    )


def _stderr(message):
    print(f"keras-kd: {message}", file=sys.stderr, flush=True)


def main(argv):
    """Runs the main job; bad flag values exit with a one-line error."""
    if len(argv) > 1:
        sub = next((a for a in argv[1:] if a in ("export", "sweep")), None)
        hint = (f" The {sub} subcommand comes first: keras-kd {sub} --flags... "
                f"(see keras-kd {sub} --help).") if sub else ""
        raise app.UsageError(
            f"unexpected arguments {argv[1:]}; keras-kd takes only --flags "
            f"(see keras-kd --help).{hint}"
        )
    try:
        job.run(config_from_flags())
    except distribute.WorkerLostError as err:
        print(f"keras-kd: {err}", file=sys.stderr)
        distribute.restart_process(FLAGS.max_restarts, log=_stderr)  # returns if exhausted
        print(f"keras-kd: error: gave up after {distribute.restarts_so_far()} restarts "
              "(--max_restarts).", file=sys.stderr)
        return 3
    except (ValueError, OSError, RuntimeError) as err:
        print(f"keras-kd: error: {err}", file=sys.stderr)
        return 2
    return 0


EXPORT_USAGE = """keras-kd export: a saved Keras classifier -> a verified .tflite (LiteRT).

Converts --model, checks the file with the LiteRT interpreter on --dataset's
validation split (accuracy, top-1 agreement with the Keras model, latency)
and only then writes it, with its .json description and .labels.txt beside
it. int8 is calibrated on a few hundred of --dataset's training images.

    keras-kd export --model=kd_runs/x/student.keras --quantization=int8 --dataset=mnist5k
    keras-kd export --model=m.keras --dataset=folder:/data/flowers --image_size=96,96 \\
        --min_agreement=0.99 --output=app/flowers.tflite
"""

# keras-kd export has flags of its own (a separate FlagValues), so that plain
# keras-kd, its flags and its --help stay as they are.
EXPORT_FLAGS = flags.FlagValues()
_E = {"flag_values": EXPORT_FLAGS}
flags.DEFINE_string("model", None, "Path of the saved Keras classifier (.keras) to export.", **_E)
flags.DEFINE_enum("quantization", "auto", ["auto", *export.QUANTIZATIONS], "none (float32), float16, dynamic (int8 weights), int8 (full integer), or auto: the first of int8, dynamic, float16, none whose top-1 agreement with the Keras model is at least --min_agreement (default 0.99).", **_E)
flags.DEFINE_string("dataset", None, "Required: the data the model was trained on: mnist5k, tfds:<name> or folder:<path> (validation split: the check; training images: int8 calibration; class names).", **_E)
flags.DEFINE_string("data_dir", None, "tensorflow-datasets data_dir holding pre-downloaded data.", **_E)
flags.DEFINE_string("image_size", None, "Resize images to H,W (as for training).", **_E)
flags.DEFINE_string("output", None, "The .tflite path to write (default: --model with .tflite).", **_E)
flags.DEFINE_float("min_agreement", None, "Fail (exit 2, nothing written) if the file agrees with the Keras model less often than this fraction, e.g. 0.99.", **_E)
flags.DEFINE_bool("probabilities", False, "The file outputs probabilities (a softmax appended); default logits.", **_E)
flags.DEFINE_bool("allow_flex", False, "Accept TensorFlow (Select TF / Flex) ops that LiteRT's builtins lack; the file is then not verified here.", **_E)
flags.DEFINE_bool("int8_io", False, "With --quantization=int8: int8 input and output tensors (default float32).", **_E)


def export_main(argv):
    """Runs ``keras-kd export`` on the parsed :data:`EXPORT_FLAGS`; returns the exit code."""
    f = EXPORT_FLAGS
    try:
        if len(argv) > 1:
            raise ValueError(f"unexpected arguments {argv[1:]}; keras-kd export takes only --flags.")
        if not f.model:
            raise ValueError("--model is required: the saved Keras classifier to export, "
                             "e.g. --model=kd_runs/x/student.keras.")
        if not f.dataset:
            raise ValueError("--dataset is required: the data the model was trained on "
                             "(its validation split checks the file, its training images "
                             "calibrate int8, its class names go with it), e.g. "
                             "--dataset=mnist5k.")
        job.export_saved_model(
            f.model, dataset=f.dataset, data_dir=f.data_dir,
            image_size=_data.parse_image_size(f.image_size), output=f.output,
            quantization=f.quantization, min_agreement=f.min_agreement,
            probabilities=f.probabilities, allow_flex=f.allow_flex, int8_io=f.int8_io,
        )
    except (ValueError, OSError, RuntimeError) as err:
        print(f"keras-kd export: error: {err}", file=sys.stderr)
        return 2
    return 0


def _parse_subcommand_flags(argv, flag_values, usage, name):
    """absl flags parser for ``keras-kd <name> ...`` (``argv[1] == name``)."""
    args = [argv[0], *argv[2:]]
    if any(a in ("-h", "-?", "--help", "--helpshort", "--helpfull") for a in args[1:]):
        print(usage)
        print(flag_values.get_help())
        sys.exit(0)
    try:
        rest = flag_values(args)
    except flags.Error as err:
        sys.stderr.write(f"FATAL Flags parsing error: {err}\n"
                         f"Pass --help to see the flags of keras-kd {name}.\n")
        sys.exit(1)
    FLAGS(argv[:1])  # absl's own flags (logging) at their defaults
    return rest


def _parse_export_flags(argv):
    """absl flags parser for ``keras-kd export ...`` (``argv[1] == "export"``)."""
    return _parse_subcommand_flags(argv, EXPORT_FLAGS, EXPORT_USAGE, "export")


SWEEP_USAGE = """keras-kd sweep: a grid of distillation settings against one teacher, ranked.

Trains the teacher once (or loads --teacher), then one student per point of
--temperature x --alpha x --distillation_loss x --student_arch, each from the
same initial weights and data order, and ranks them by validation accuracy.
Writes sweep.md, sweep.json, best.flags (for keras-kd --flagfile=best.flags),
best_student.keras and two plots to --output_dir. Rerunning the same command
resumes: finished trials are not trained again. With --augment=none the
teacher's logits are computed once and cached; otherwise it runs online.

Grid flags take comma-separated values and may be repeated. A comma inside a
--student_arch spec stays with it (a key=value after a comma is an option of
the spec before it), or give one spec per --student_arch:

    keras-kd sweep --temperature=1,2,4,8,16 --alpha=0.5,0.9,1.0 --augment=none \\
        --distillation_loss=kl,dkd --student_arch=mlp:hidden=400x400,cnn:width=0.25 \\
        --epochs=6 --output_dir=kd_runs/sweep
    keras-kd sweep --teacher=kd_runs/x/teacher.keras --student_arch=mlp:hidden=800x800,dropout=0.2 \\
        --student_arch=cnn:width=0.25 --temperature=2,4 --alpha=0.7
"""

# keras-kd sweep: its own FlagValues, like export. The grid flags are
# multi-string flags holding comma-separated lists.
SWEEP_FLAGS = flags.FlagValues()
_S = {"flag_values": SWEEP_FLAGS}
flags.DEFINE_multi_string("temperature", ["1,2,4,8"], "Grid: temperatures T (> 0), comma-separated.", **_S)
flags.DEFINE_multi_string("alpha", ["0.5,0.9"], "Grid: alphas in [0, 1], comma-separated (weight of the distillation loss).", **_S)
flags.DEFINE_multi_string("distillation_loss", ["kl"], f"Grid: distillation losses, comma-separated, from {', '.join(losses.available())}.", **_S)
flags.DEFINE_multi_string("student_arch", [_D.student_arch], "Grid: student architecture specs, comma-separated (options stay with their spec: mlp:hidden=800x800,dropout=0.2,cnn:width=0.25 is two specs) or one per repeated flag.", **_S)
flags.DEFINE_string("dataset", _D.dataset, "mnist5k (embedded), tfds:<name> or folder:<path>.", **_S)
flags.DEFINE_string("data_dir", None, "tensorflow-datasets data_dir holding pre-downloaded data.", **_S)
flags.DEFINE_string("image_size", None, "Resize images to H,W.", **_S)
flags.DEFINE_string("teacher", None, "Path to a trained .keras teacher; empty trains one (once, saved as <output_dir>/teacher.keras).", **_S)
flags.DEFINE_string("teacher_arch", _D.teacher_arch, "Teacher architecture spec (when training one).", **_S)
flags.DEFINE_integer("teacher_epochs", _D.teacher_epochs, "Epochs for training the teacher.", **_S)
flags.DEFINE_integer("epochs", _D.epochs, "Epochs per trial (and per baseline).", **_S)
flags.DEFINE_integer("batch_size", _D.batch_size, "Batch size.", **_S)
flags.DEFINE_string("augment", _D.augment, "Augmentation policy for teacher and students; none trains every trial from cached teacher logits.", **_S)
flags.DEFINE_enum("optimizer", _D.optimizer, list(job.OPTIMIZERS), "Optimizer.", **_S)
flags.DEFINE_float("learning_rate", _D.learning_rate, "Learning rate.", **_S)
flags.DEFINE_integer("seed", _D.seed, "Random seed (the same for every trial).", **_S)
flags.DEFINE_string("output_dir", None, "Output folder (default ./kd_runs/<timestamp>); rerun with the same one to resume.", **_S)
flags.DEFINE_bool("baseline", True, "Also train each student architecture on the labels alone, for reference.", **_S)
flags.DEFINE_integer("verbose", 0, "Keras verbosity of each fit: 0 silent (one line per trial), 1 progress bars, 2 one line per epoch.", **_S)


def sweep_main(argv):
    """Runs ``keras-kd sweep`` on the parsed :data:`SWEEP_FLAGS`; returns the exit code."""
    f = SWEEP_FLAGS
    try:
        if len(argv) > 1:
            raise ValueError(f"unexpected arguments {argv[1:]}; keras-kd sweep takes only "
                             "--flags (see keras-kd sweep --help).")
        from keras_kd import sweep

        config = sweep.SweepConfig(
            temperatures=sweep.parse_list("temperature", f.temperature),
            alphas=sweep.parse_list("alpha", f.alpha),
            distillation_losses=sweep.parse_list("distillation_loss", f.distillation_loss),
            student_archs=sweep.parse_list("student_arch", f.student_arch),
            dataset=f.dataset, data_dir=f.data_dir,
            image_size=_data.parse_image_size(f.image_size), teacher=f.teacher or None,
            teacher_arch=f.teacher_arch, teacher_epochs=f.teacher_epochs, epochs=f.epochs,
            batch_size=f.batch_size, augment=f.augment, optimizer=f.optimizer,
            learning_rate=f.learning_rate, seed=f.seed, output_dir=f.output_dir,
            baseline=f.baseline, verbose=f.verbose,
            flags_used={flag.name: flag.value for flag in f.get_flags_for_module(__name__)},
        )
        sweep.run(config)
    except (ValueError, OSError, RuntimeError) as err:
        print(f"keras-kd sweep: error: {err}", file=sys.stderr)
        return 2
    return 0


def _parse_sweep_flags(argv):
    """absl flags parser for ``keras-kd sweep ...`` (``argv[1] == "sweep"``)."""
    return _parse_subcommand_flags(argv, SWEEP_FLAGS, SWEEP_USAGE, "sweep")


def run():
    """Console-script entry point (also ``python -m keras_kd``)."""
    if len(sys.argv) > 1 and sys.argv[1] == "export":
        app.run(export_main, flags_parser=_parse_export_flags)
        return
    if len(sys.argv) > 1 and sys.argv[1] == "sweep":
        app.run(sweep_main, flags_parser=_parse_sweep_flags)
        return
    # absl's --help lists the main module's key flags; the main module is the
    # console-script wrapper or keras_kd/__main__.py, so adopt ours there.
    for flag in FLAGS.get_flags_for_module(__name__):
        FLAGS.register_key_flag_for_module(sys.argv[0], flag)
    main_module = sys.modules.get("__main__")
    if main_module is not None:
        main_module.__doc__ = __doc__
    app.run(main)


if __name__ == "__main__":
    run()
