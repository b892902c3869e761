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

The flags of ``keras-kd`` and ``keras-kd sweep`` are generated from the fields
of :class:`keras_kd.job.JobConfig` (name, type, default, choices and help);
``keras-kd export`` shares their data flags.

Ctrl-C (or SIGTERM) stops any subcommand with one line saying what was kept
and how to resume, exit status 130 (143 for SIGTERM); errors are one line
``keras-kd: error: ...``, exit status 2. TensorFlow's own log lines stay off
the console unless ``--verbose=3``.
"""

import contextlib
import dataclasses
import os
import signal
import sys
import threading
import time
import typing

from absl import app, flags

from keras_kd import _console, checkpoint, distribute, export, job

FLAGS = flags.FLAGS
#: The flags that name the data, shared by ``keras-kd``, ``export`` and ``sweep``.
DATA_FIELDS = ("dataset", "data_dir", "image_size")


def _base_type(field):
    """``int`` for ``int | None``; ``str`` for a field parsed from text."""
    if "parse" in field.metadata:
        return str
    args = [a for a in typing.get_args(field.type) if a is not type(None)]
    return args[0] if args else field.type


def define_config_flags(flag_values, *, only=None, skip=(), grid=(), defaults=None):
    """Defines one flag per :class:`~keras_kd.job.JobConfig` field in ``flag_values``.

    ``only``/``skip`` select fields; a field in ``grid`` becomes a repeatable
    flag of comma-separated values; ``defaults`` overrides a field's default.
    """
    defaults = defaults or {}
    for field in dataclasses.fields(job.JobConfig):
        name, meta = field.name, field.metadata
        if (not meta.get("cli", True) or name in skip or (only and name not in only)):
            continue
        default = defaults.get(name, field.default)
        kw = {"flag_values": flag_values}
        kind = _base_type(field)
        if name in grid:
            flags.DEFINE_multi_string(name, [str(default)], f"Grid, comma-separated: "
                                      f"{meta['help']}", **kw)
        elif "choices" in meta:
            flags.DEFINE_enum(name, default, list(meta["choices"]), meta["help"], **kw)
        elif kind is bool:
            flags.DEFINE_bool(name, default, meta["help"], **kw)
        elif kind is int:
            flags.DEFINE_integer(name, default, meta["help"], **kw)
        elif kind is float:
            flags.DEFINE_float(name, default, meta["help"], **kw)
        else:
            flags.DEFINE_string(name, default, meta["help"], **kw)


def config_values(flag_values, *, only=None, skip=()):
    """``{field: value}`` of the JobConfig fields defined in ``flag_values`` (text parsed)."""
    values = {}
    for field in dataclasses.fields(job.JobConfig):
        if field.name in skip or field.name not in flag_values or (only and field.name not in only):
            continue
        value = flag_values[field.name].value
        if "parse" in field.metadata:
            value = field.metadata["parse"](value)
        elif value == "" and field.default is None:
            value = None
        values[field.name] = value
    return values


def config_from_flags():
    """The :class:`keras_kd.job.JobConfig` the parsed main flags describe."""
    ours = sorted(f.name for f in FLAGS.get_flags_for_module(__name__))
    return job.JobConfig(**config_values(FLAGS),
                         flags_used={name: FLAGS[name].value for name in ours})


define_config_flags(FLAGS)
flags.DEFINE_integer("max_restarts", 3, lower_bound=0, help="With --strategy=multi_worker: "
                     "when another worker stops, restart this one (up to N times) to wait "
                     "for it and resume from --checkpoint_dir.")


def _fail(name, err):
    print(f"keras-kd{' ' + name if name else ''}: error: {err}", file=sys.stderr)
    return 2


def _stderr(message):
    print(f"keras-kd: {message}", file=sys.stderr, flush=True)


class Terminated(KeyboardInterrupt):
    """SIGTERM, turned into the Ctrl-C path: the same clean-up (every ``finally``
    runs, so no temporary folder is left) and one line, exit status 143."""


#: Seconds a process may take to stop after SIGTERM before it is ended outright
#: (a call stuck in TensorFlow's C++ never returns to Python to see the signal).
SIGTERM_GRACE_S = 30.0


def _on_sigterm(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process at once
    raise Terminated()


def _watchdog(wakeup_fd):
    """Ends the process ``SIGTERM_GRACE_S`` after a SIGTERM that Python has not acted on.

    Python runs a signal handler only between bytecodes, so a main thread blocked
    in C++ (a hung collective, a long op) would not stop on SIGTERM at all. The
    C-level handler writes the signal number to ``wakeup_fd``
    (:func:`signal.set_wakeup_fd`), which this thread reads."""
    while True:
        try:
            received = os.read(wakeup_fd, 64)
        except OSError:
            received = b""
        if not received:  # the write end closed: the command ended
            os.close(wakeup_fd)
            return
        if signal.SIGTERM in received:
            time.sleep(SIGTERM_GRACE_S)
            os.write(2, f"keras-kd: still running {SIGTERM_GRACE_S:g} s after SIGTERM (a call "
                        "that does not return to Python); stopped without clean-up.\n".encode())
            os._exit(143)


def _interrupted(name, err, kept):
    """One line for a Ctrl-C (or SIGTERM) saying what was kept; the exit status."""
    how = "stopped (SIGTERM)" if isinstance(err, Terminated) else "interrupted (Ctrl-C)"
    print(f"keras-kd{' ' + name if name else ''}: {how}; {kept}", file=sys.stderr, flush=True)
    return 143 if isinstance(err, Terminated) else 130


def _saved_models(folder):
    """The ``.keras`` files in ``folder`` (none if it does not exist)."""
    try:
        return sorted(n for n in os.listdir(folder) if n.endswith(".keras"))
    except OSError:
        return []


def _job_kept(config):
    """What an interrupted main job of ``config`` leaves, and how to go on (one sentence)."""
    if config.checkpoint_dir:
        return (f"the finished phases and the last epoch backup are kept in --checkpoint_dir="
                f"{config.checkpoint_dir}: rerun the same command to resume from there.")
    out = config.output_dir
    saved = _saved_models(out)
    held = (f"{out} holds {', '.join(saved)}" if saved else "nothing was saved")
    if "teacher.keras" in saved:
        held += f" (reuse the teacher with --teacher={os.path.join(out, 'teacher.keras')})"
    return (f"{held}; without --checkpoint_dir nothing resumes: add --checkpoint_dir=DIR "
            "next time to make the run resumable (rerunning the same command then continues "
            "from the last finished epoch).")


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
    config = None
    try:
        config = config_from_flags()  # a flag's text parsed here may be a ValueError
        # The run's folder is named now, so that an interrupted run can say where it is.
        config = dataclasses.replace(
            config, output_dir=config.output_dir or checkpoint.default_output_dir())
        with _console.tensorflow_logs(config.verbose >= 3):
            job.run(config)
    except distribute.WorkerLostError as err:
        return _restart(err, FLAGS.max_restarts)
    except (ValueError, OSError, RuntimeError) as err:
        return _fail("", err)
    except KeyboardInterrupt as err:
        return _interrupted("", err, _job_kept(config) if config is not None
                            else "no run was under way; nothing to clean up.")
    return 0


def _restart(err, max_restarts):
    """A lost peer under multi-worker training: restart this worker (it waits for the
    others and resumes), or exit 3 once ``max_restarts`` is spent."""
    print(f"keras-kd: {err}", file=sys.stderr)
    distribute.restart_process(max_restarts, log=_stderr)  # returns if exhausted
    print(f"keras-kd: error: gave up after {distribute.restarts_so_far()} restarts "
          "(--max_restarts).", file=sys.stderr)
    return 3


EXPORT_USAGE = """keras-kd export: a saved Keras classifier -> a verified .tflite (LiteRT).

Converts --model, checks the file with the LiteRT interpreter on --dataset's
validation split (accuracy, top-1 agreement with the Keras model, latency)
and only then writes it, with its .json description and .labels.txt beside
it. int8 is calibrated on a few hundred of --dataset's training images.
--model and --dataset (the data the model was trained on) are required.

    keras-kd export --model=kd_runs/x/student.keras --quantization=int8 --dataset=mnist5k
    keras-kd export --model=m.keras --dataset=folder:/data/flowers --image_size=96,96 \\
        --min_agreement=0.99 --output=app/flowers.tflite
"""

# keras-kd export has flags of its own (a separate FlagValues), so that plain
# keras-kd, its flags and its --help stay as they are.
EXPORT_FLAGS = flags.FlagValues()
_E = {"flag_values": EXPORT_FLAGS}
flags.DEFINE_string("model", None, "Path of the saved Keras classifier to export: a .keras file, a legacy .h5 or a SavedModel folder.", **_E)
flags.DEFINE_enum("quantization", "auto", ["auto", *export.QUANTIZATIONS], "none (float32), float16, dynamic (int8 weights), int8 (full integer), or auto: the first of int8, dynamic, float16, none whose top-1 agreement with the Keras model is at least --min_agreement (default 0.99).", **_E)
define_config_flags(EXPORT_FLAGS, only=DATA_FIELDS, defaults={"dataset": None})
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
        with _console.tensorflow_logs(False):
            export.export_saved_model(
                f.model, **config_values(f, only=DATA_FIELDS), output=f.output,
                quantization=f.quantization, min_agreement=f.min_agreement,
                probabilities=f.probabilities, allow_flex=f.allow_flex, int8_io=f.int8_io,
            )
    except (ValueError, OSError, RuntimeError) as err:
        return _fail("export", err)
    except KeyboardInterrupt as err:
        return _interrupted("export", err, "an export replaces its files only once the check "
                            "passed, and its temporary files are removed: rerun the same "
                            "command.")
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
Every other flag is the main keras-kd's, shared by all trials.

Grid flags take comma-separated values and may be repeated. A comma inside a
--student_arch spec stays with it (a key=value after a comma is an option of
the spec before it), or give one spec per --student_arch:

    keras-kd sweep --temperature=1,2,4,8,16 --alpha=0.5,0.9,1.0 --augment=none \\
        --distillation_loss=kl,dkd --student_arch=mlp:hidden=400x400,cnn:width=0.25 \\
        --epochs=6 --output_dir=kd_runs/sweep
    keras-kd sweep --teacher=kd_runs/x/teacher.keras --student_arch=mlp:hidden=800x800,dropout=0.2 \\
        --student_arch=cnn:width=0.25 --temperature=2,4 --alpha=0.7
"""

# keras-kd sweep: its own FlagValues, like export: the main job's flags (but
# those of the export and of --checkpoint_dir: the sweep resumes from its
# --output_dir), the grid flags as repeatable comma-separated lists.
SWEEP_FLAGS = flags.FlagValues()
_SWEEP_SKIP = ("export", "export_quantization", "min_agreement", "checkpoint_dir")
define_config_flags(SWEEP_FLAGS, skip=_SWEEP_SKIP, grid=("temperature", "alpha",
                                                        "distillation_loss", "student_arch"),
                    defaults={"temperature": "1,2,4,8", "alpha": "0.5,0.9", "verbose": 0})
flags.DEFINE_bool("baseline", True, "Also train each student architecture on the labels alone, for reference.", flag_values=SWEEP_FLAGS)
flags.DEFINE_integer("max_restarts", 3, lower_bound=0, help="With --strategy=multi_worker: when another worker stops, restart this one (up to N times) to resume.", flag_values=SWEEP_FLAGS)


def sweep_main(argv):
    """Runs ``keras-kd sweep`` on the parsed :data:`SWEEP_FLAGS`; returns the exit code."""
    from keras_kd import sweep

    f = SWEEP_FLAGS
    config = None
    try:
        if len(argv) > 1:
            raise ValueError(f"unexpected arguments {argv[1:]}; keras-kd sweep takes only "
                             "--flags (see keras-kd sweep --help).")
        grid = {flag: sweep.parse_list(flag, f[flag].value) for flag in sweep.GRID_FLAGS}
        config = job.JobConfig(
            **config_values(f, skip=sweep.GRID_FLAGS),
            flags_used={flag.name: flag.value for flag in f.get_flags_for_module(__name__)})
        # The sweep resumes from its folder: named now, so that Ctrl-C can say which.
        config = dataclasses.replace(
            config, output_dir=config.output_dir or checkpoint.default_output_dir())
        with _console.tensorflow_logs(config.verbose >= 3):
            sweep.run(config, grid, baseline=f.baseline)
    except distribute.WorkerLostError as err:
        return _restart(err, f.max_restarts)
    except (ValueError, OSError, RuntimeError) as err:
        return _fail("sweep", err)
    except KeyboardInterrupt as err:
        out = config.output_dir if config is not None else None
        return _interrupted("sweep", err, (
            f"the finished trials are kept in {out}: rerun the same command with "
            f"--output_dir={out} to resume (finished trials are not trained again)."
        ) if out else "nothing was started.")
    return 0


def _parse_sweep_flags(argv):
    """absl flags parser for ``keras-kd sweep ...`` (``argv[1] == "sweep"``)."""
    return _parse_subcommand_flags(argv, SWEEP_FLAGS, SWEEP_USAGE, "sweep")


def run():
    """Console-script entry point (also ``python -m keras_kd``).

    SIGTERM takes the Ctrl-C path (clean-up, one line); a Ctrl-C outside a
    subcommand's own handling (e.g. while the flags are read) is one line too.
    """
    with _sigterm_as_interrupt():
        try:
            _run()
        except KeyboardInterrupt as err:
            sys.exit(_interrupted("", err, "no run was under way; nothing to clean up."))


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """Within: SIGTERM raises :class:`Terminated` (main thread only; else a no-op); a
    second SIGTERM ends the process at once, and a process still running
    :data:`SIGTERM_GRACE_S` after the first is ended by :func:`_watchdog`."""
    try:
        saved = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread
        yield
        return
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    previous_fd = signal.set_wakeup_fd(write_end)
    threading.Thread(target=_watchdog, args=(read_end,), name="keras-kd-sigterm",
                     daemon=True).start()
    try:
        yield
    finally:
        signal.set_wakeup_fd(previous_fd)
        signal.signal(signal.SIGTERM, saved)
        os.close(write_end)  # the watchdog sees the end of its pipe


def _run():
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
