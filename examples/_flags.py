"""The examples' command line: absl flags from a dict of defaults, errors in one line.

Shared by ``hinton_mnist.py`` and ``resnet_to_mobilenet.py`` (imported when they run
as scripts, so the test suite can import those modules beside ``keras_kd.cli``,
whose flags have the same names). Errors are one line ``<script>.py: error: ...``,
exit status 2, as ``keras-kd``'s; Ctrl-C is one line, exit status 130.
"""

import os
import sys


def run(script, main, defaults, help, *, interrupted, kinds=None):
    """Defines one flag per ``defaults`` entry and runs ``main(**flag values)``.

    A flag's kind is ``kinds[name]`` (``"integer"`` or ``"float"``) if given, else
    from its default: text for None, a string or a bool, integer for an int, float
    otherwise. ``interrupted``: what the Ctrl-C line says was kept.
    """
    import tensorflow as tf
    from absl import app, flags

    prog = os.path.basename(script)
    kinds = kinds or {}

    def fail(message, code=2):
        print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
        return code

    define = {"string": flags.DEFINE_string, "integer": flags.DEFINE_integer,
              "float": flags.DEFINE_float}
    for name, value in defaults.items():
        kind = kinds.get(name) or ("string" if value is None or isinstance(value, (str, bool))
                                   else "integer" if isinstance(value, int) else "float")
        define[kind](name, value, help[name])

    def parse(argv):  # a bad flag: one line, not absl's two
        try:
            return flags.FLAGS(argv)
        except flags.Error as err:
            sys.exit(fail(f"{err} (see --help)"))

    def run_main(argv):
        if len(argv) > 1:
            return fail(f"unexpected arguments {argv[1:]}; this script takes only --flags "
                        "(see --help).")
        try:
            main(**{name: flags.FLAGS[name].value for name in defaults})
        except (ValueError, OSError, RuntimeError, tf.errors.OpError) as err:
            return fail(" ".join(str(err).split()))
        except KeyboardInterrupt:
            return fail(f"interrupted (Ctrl-C); {interrupted}", 130)
        return 0

    app.run(run_main, flags_parser=parse)
