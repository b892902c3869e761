"""``keras-kd``: absl flags → :func:`keras_kd.job.run`. No logic of its own.

    keras-kd                                    # the whole path on mnist5k
    keras-kd --temperature=8 --alpha=0.5 --epochs=20
    keras-kd --teacher=kd_runs/x/teacher.keras  # reuse a trained teacher
    keras-kd --flagfile=run.flags
    python -m keras_kd --helpfull
"""

import os
import sys

from absl import app, flags

from keras_kd import augment as _augment
from keras_kd import data as _data
from keras_kd import distribute, job, losses

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
flags.DEFINE_integer("seed", _D.seed, "Random seed.")
flags.DEFINE_string("output_dir", None, "Output folder (default ./kd_runs/<timestamp>).")
flags.DEFINE_bool("export", True, "Export and verify student.tflite.")
flags.DEFINE_bool("deterministic", _D.deterministic, "TensorFlow op determinism and a seeded global RNG: the same --seed gives the same run.")
flags.DEFINE_enum("strategy", _D.strategy, list(distribute.STRATEGIES), "tf.distribute strategy: auto, mirrored, one_device, multi_worker (TF_CONFIG), tpu.")
flags.DEFINE_integer("num_cpu_devices", None, "Split the CPU into N logical devices (multi-replica runs without GPUs).")
flags.DEFINE_enum("mixed_precision", _D.mixed_precision, list(distribute.MIXED_PRECISION), "Keras dtype policy for training.")
flags.DEFINE_string("checkpoint_dir", None, "Back up every epoch here; rerunning the same command after a crash or kill resumes from the last backup.")
flags.DEFINE_integer("max_restarts", 3, "With --strategy=multi_worker: when another worker stops, restart this one (up to N times) to wait for it and resume from --checkpoint_dir.")
flags.DEFINE_bool("jit_compile", _D.jit_compile, "XLA-compile the train steps (one replica only; off under multi-replica strategies). XLA drops the label-range check. Often slower on CPU (issue 7 measures it).")
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
        seed=FLAGS.seed,
        output_dir=FLAGS.output_dir,
        export=FLAGS.export,
        deterministic=FLAGS.deterministic,
        strategy=FLAGS.strategy,
        num_cpu_devices=FLAGS.num_cpu_devices,
        mixed_precision=FLAGS.mixed_precision,
        checkpoint_dir=FLAGS.checkpoint_dir,
        jit_compile=FLAGS.jit_compile,
        verbose=FLAGS.verbose,
        flags_used=used,
    )


def main(argv):
    """Runs the main job; bad flag values exit with a one-line error."""
    if len(argv) > 1:
        raise app.UsageError(
            f"unexpected arguments {argv[1:]}; keras-kd takes only --flags "
            "(see keras-kd --help)."
        )
    try:
        job.run(config_from_flags())
    except distribute.WorkerLostError as err:
        print(f"keras-kd: {err}", file=sys.stderr)
        restarts = int(os.environ.get(distribute.RESTARTS_ENV, "0") or 0)
        if restarts < FLAGS.max_restarts:
            print(
                f"keras-kd: restarting this worker to wait for the others "
                f"(restart {restarts + 1} of at most {FLAGS.max_restarts}).",
                file=sys.stderr, flush=True,
            )
            distribute.restart_process(FLAGS.max_restarts)
        print(
            f"keras-kd: error: gave up after {restarts} restarts (--max_restarts).",
            file=sys.stderr,
        )
        return 3
    except (ValueError, OSError, RuntimeError) as err:
        print(f"keras-kd: error: {err}", file=sys.stderr)
        return 2
    return 0


def run():
    """Console-script entry point (also ``python -m keras_kd``)."""
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
