"""The notebook path, as a script: teacher → Distiller → student → TFLite.

    python examples/quickstart.py            # ~1 minute on a 2-core CPU
    python examples/quickstart.py --epochs 1 # a smoke run

Everything here is public keras_kd API; the `keras-kd` command runs the same
steps with a baseline for comparison.
"""

import argparse
import os
import sys
import tempfile

import keras

import keras_kd
from keras_kd import augment, data, export, models


def main(epochs=6, output_dir=None):
    """Trains a teacher, distils a student, exports it; returns the figures."""
    output_dir = output_dir or tempfile.mkdtemp(prefix="keras_kd_quickstart_")
    keras.utils.set_random_seed(0)
    train, val, info = data.load("mnist5k", batch_size=64)
    # Same jittered batch for teacher and student ("consistent teaching").
    train = augment.apply(train, "jitter", info.input_shape, seed=0)

    teacher = models.build("cnn", info.input_shape, info.num_classes, seed=0)
    teacher.compile(
        optimizer=keras.optimizers.Adam(2e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    teacher.fit(train, epochs=epochs, verbose=2)

    student = models.build("cnn:width=0.25", info.input_shape, info.num_classes, seed=1)
    distiller = keras_kd.Distiller(teacher, student, temperature=2.0, alpha=0.9)
    distiller.compile(optimizer=keras.optimizers.Adam(2e-3), metrics=["accuracy"])
    distiller.fit(train, validation_data=val, epochs=epochs, verbose=2)

    path = export.to_tflite(
        distiller.student, os.path.join(output_dir, "student.tflite"),
        class_names=info.class_names,
    )
    check = export.verify(path, val, reference_model=distiller.student)
    scores = distiller.evaluate(val, return_dict=True, verbose=0)
    print(f"student: val accuracy {scores['accuracy']:.4f}; tflite {check}")
    return {"keras": scores, "tflite": check, "path": path}


def _cli(argv=None):
    """``python examples/quickstart.py``: errors are one line, exit status 2 (as keras-kd's)."""
    prog = os.path.basename(__file__)

    def fail(message, code=2):
        print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
        return code

    class Parser(argparse.ArgumentParser):
        def error(self, message):  # a bad flag: one line, not argparse's usage + error
            sys.exit(fail(f"{message} (see --help)"))

    parser = Parser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--output_dir", default=None)
    args = parser.parse_args(argv)
    try:
        main(args.epochs, args.output_dir)
    except (ValueError, OSError, RuntimeError) as err:
        return fail(" ".join(str(err).split()))
    except KeyboardInterrupt:
        return fail("interrupted (Ctrl-C).", 130)
    return 0


if __name__ == "__main__":
    sys.exit(_cli())
