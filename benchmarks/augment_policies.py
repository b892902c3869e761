"""Which augmentation helps distillation: scratch vs distilled errors per policy.

For one seed: trains the teacher once (``--teacher_augment``, the job's
default ``jitter``), then for each student policy a baseline (labels only)
and a distilled student, both from the same initial weights, with the same
policy, epochs and optimizer as the main job. Prints one line per model:
validation errors out of 1,000 (mnist5k).

    python -m benchmarks.augment_policies --seed=0 \\
        --policies="none;jitter;function_matching;function_matching:flip=0"
    python -m benchmarks.augment_policies --seed=0 --epochs=48 \\
        --policies="function_matching:flip=0"          # a "patient" schedule

The tables in BUILD_NOTES.md ("Augmentation policies") come from this
script, seeds 0, 1, 2.
"""

import argparse
import time

import keras

import keras_kd
from keras_kd import augment, data, diagnostics, distribute, models


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--policies", default="none;jitter;function_matching")
    parser.add_argument("--teacher_augment", default="jitter")
    parser.add_argument("--teacher_arch", default="cnn")
    parser.add_argument("--student_arch", default="mlp:hidden=400x400")
    parser.add_argument("--temperature", type=float, default=3.0)
    parser.add_argument("--alpha", type=float, default=0.7)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--teacher_epochs", type=int, default=12)
    parser.add_argument("--learning_rate", type=float, default=2e-3)
    args = parser.parse_args()
    with distribute.deterministic(args.seed):
        _run(args)


def _run(args):
    keras.utils.set_random_seed(args.seed)
    raw, val, info = data.load("mnist5k", batch_size=64, seed=args.seed)

    def pipeline(spec):
        return augment.apply(raw, spec, info.input_shape, seed=args.seed,
                             num_classes=info.num_classes)

    def report(what, model, started):
        errors = diagnostics.evaluate(model, val)["errors"]
        print(f"seed {args.seed} {what}: {errors} errors "
              f"({time.perf_counter() - started:.0f} s)", flush=True)

    def plain(model, spec, epochs):
        soft = augment.mixes_labels(spec)
        loss = (keras.losses.CategoricalCrossentropy(from_logits=True) if soft
                else keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.compile(keras.optimizers.Adam(args.learning_rate), loss)
        model.fit(pipeline(spec), epochs=epochs, verbose=0)

    t0 = time.perf_counter()
    teacher = models.build(args.teacher_arch, info.input_shape, info.num_classes, seed=args.seed)
    plain(teacher, args.teacher_augment, args.teacher_epochs)
    report(f"teacher ({args.teacher_augment})", teacher, t0)
    for spec in args.policies.split(";"):
        t0 = time.perf_counter()
        baseline = models.build(args.student_arch, info.input_shape, info.num_classes,
                                seed=args.seed + 1)
        initial = baseline.get_weights()
        plain(baseline, spec, args.epochs)
        report(f"{spec} {args.epochs} epochs baseline", baseline, t0)
        t0 = time.perf_counter()
        student = models.build(args.student_arch, info.input_shape, info.num_classes,
                               seed=args.seed + 1)
        student.set_weights(initial)
        distiller = keras_kd.Distiller(teacher, student, temperature=args.temperature,
                                       alpha=args.alpha)
        distiller.compile(keras.optimizers.Adam(args.learning_rate))
        distiller.fit(pipeline(spec), epochs=args.epochs, verbose=0)
        report(f"{spec} {args.epochs} epochs distilled", student, t0)


if __name__ == "__main__":
    main()
