"""Keeps TensorFlow's own console chatter out of keras_kd's output.

TensorFlow, its TFLite converter and LiteRT print INFO lines about their own
workings (start-up, "Assets written to …", "Created TensorFlow Lite XNNPACK
delegate …"); the user wants Keras's progress bars and keras_kd's own lines.
:func:`quiet_startup`, :func:`tensorflow_logs` and :func:`quiet_tensorflow`
keep them out; ``keras-kd --verbose=3`` shows them. Imports nothing of
TensorFlow (``quiet_startup`` must run before it is imported).
"""

import contextlib
import logging
import os
import re
import sys
import threading

#: ``python -m`` names that run the ``keras-kd`` command.
_COMMAND_MODULES = ("keras_kd", "keras_kd.__main__", "keras_kd.cli")

#: Lines TensorFlow, its converter and LiteRT print about their own workings:
#: absl/glog INFO and WARNING lines (C++ and Python), LiteRT's ``INFO:`` lines
#: (e.g. "Created TensorFlow Lite XNNPACK delegate for CPU."), tf_logging's
#: ``INFO:tensorflow:`` lines, the int8 quantizer's settings line and absl's
#: start-up banner. Error lines (``E…``/``F…``), Python warnings and anything
#: else are never matched.
NOISE = re.compile(
    r"[IW]\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ \S+:\d+\] "
    r"|INFO: |INFO:tensorflow:|fully_quantize: "
    r"|WARNING: All log messages before absl::InitializeLog\(\) is called")

_state = {"show": False}
_LOGGERS = ("tensorflow", "absl")


def is_command_line():
    """Whether this process is the ``keras-kd`` command (its console script, or
    ``python -m keras_kd``), as opposed to a program that imports keras_kd."""
    name = os.path.basename(sys.argv[0]) if sys.argv else ""
    if re.fullmatch(r"keras-kd(-script\.pyw?|\.exe)?", name):
        return True
    argv = list(getattr(sys, "orig_argv", []))[1:]  # the interpreter's own options first
    while argv:
        arg = argv.pop(0)
        if arg == "-m":
            return bool(argv) and argv[0] in _COMMAND_MODULES
        if arg.startswith("-m"):
            return arg[2:] in _COMMAND_MODULES
        if arg in ("-W", "-X"):
            argv = argv[1:]
        elif arg == "-c" or not arg.startswith("-"):
            return False
    return False


def quiet_startup():
    """For the ``keras-kd`` command: TensorFlow's C++ INFO lines off (e.g. the
    ``cpu_feature_guard`` line), by setting ``TF_CPP_MIN_LOG_LEVEL=1`` before
    TensorFlow is imported. Warnings, errors and Python tracebacks still show;
    a value the user set, a program that imports keras_kd, and a process that
    already imported TensorFlow are left alone. (The few lines TensorFlow's
    libraries log while they load, before they read the setting, still show.)
    """
    if (is_command_line() and "TF_CPP_MIN_LOG_LEVEL" not in os.environ
            and "tensorflow" not in sys.modules):
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "1"


@contextlib.contextmanager
def _logger_levels(level):
    """Python loggers of TensorFlow and absl at ``level`` within, then as they were."""
    loggers = [logging.getLogger(name) for name in _LOGGERS]
    saved = [logger.level for logger in loggers]
    try:
        for logger in loggers:
            logger.setLevel(level)
        yield
    finally:
        for logger, old in zip(loggers, saved):
            logger.setLevel(old)


@contextlib.contextmanager
def tensorflow_logs(show):
    """Within: TensorFlow's own log lines shown (``show``, ``keras-kd --verbose=3``)
    or kept off the console (the default everywhere, also outside this block).

    Kept off: TensorFlow's and absl's Python INFO records, and what
    :func:`quiet_tensorflow` filters around the converter and LiteRT.
    """
    saved = _state["show"]
    _state["show"] = bool(show)
    try:
        with _logger_levels(logging.INFO if show else logging.WARNING):
            yield
    finally:
        _state["show"] = saved


def _forward(pipe_fd, console_fd):
    """Copies the lines arriving on ``pipe_fd`` to ``console_fd`` as they come,
    but the :data:`NOISE` ones, until the pipe's write end is closed."""
    with os.fdopen(pipe_fd, "rb") as pipe:
        for line in pipe:
            if not NOISE.match(line.decode("utf-8", "replace")):
                os.write(console_fd, line)


@contextlib.contextmanager
def quiet_tensorflow():
    """Around a TensorFlow or LiteRT call that talks on the console (the TFLite
    converter, the LiteRT interpreter): their :data:`NOISE` lines are dropped.

    What the call writes to file descriptor 2 (C++ code writes there, not to
    ``sys.stderr``) goes through a pipe to a thread that passes each line on to
    the console as it arrives, but the :data:`NOISE` lines: error lines and
    anything unknown reach the console at once, also when the call raises or
    the process then dies in C++. Python INFO records of TensorFlow and absl are
    off within. A no-op inside ``tensorflow_logs(True)``.
    """
    if _state["show"]:
        yield
        return
    with _logger_levels(logging.WARNING):
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        try:
            console = os.dup(2)
        except OSError:  # no file descriptor 2 (e.g. a closed stderr): nothing to filter
            console = None
        if console is None:
            yield
            return
        pipe_out, pipe_in = os.pipe()
        forwarder = threading.Thread(target=_forward, args=(pipe_out, console),
                                     name="keras_kd-console", daemon=True)
        forwarder.start()
        try:
            os.dup2(pipe_in, 2)
            os.close(pipe_in)  # fd 2 is now the pipe's one write end
            yield
        finally:
            with contextlib.suppress(Exception):
                sys.stderr.flush()  # Python writes within, if sys.stderr is fd 2
            os.dup2(console, 2)  # closes the pipe's write end: the forwarder sees its end
            forwarder.join()
            os.close(console)
