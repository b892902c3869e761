"""How the main job's defaults were chosen: baseline vs distilled errors.

For one seed: trains the teacher once, then for each student architecture the
baseline (labels only) and one distilled student per (T, alpha), all from the
same initial student weights, with the job's data, jitter and optimizer.
Prints one line per model: validation errors out of 1,000 (mnist5k).

    python -m benchmarks.defaults_sweep --seed=0 --teacher_arch=cnn \
        --students="mlp:hidden=400x400;cnn:width=0.25" --configs="2,0.9;3,0.7"

The figures in BUILD_NOTES.md ("Choosing the defaults") come from this
script, seeds 0, 1, 2, one process per seed.
"""

import argparse
import time

import keras

import keras_kd
from keras_kd import augment, data, diagnostics, distribute, models


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--teacher_arch", default="cnn")
    parser.add_argument("--students", default="mlp:hidden=400x400")
    parser.add_argument("--configs", default="3,0.7", help="T,alpha;T,alpha;...")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--teacher_epochs", type=int, default=12)
    parser.add_argument("--learning_rate", type=float, default=2e-3)
    args = parser.parse_args()

    with distribute.deterministic(args.seed):
        _sweep(args)


def _sweep(args):
    keras.utils.set_random_seed(args.seed)
    train, val, info = data.load("mnist5k", batch_size=64, seed=args.seed)
    train = augment.apply(train, "jitter", info.input_shape, seed=args.seed)

    def optimizer():
        return keras.optimizers.Adam(args.learning_rate)

    def plain(model, epochs):
        model.compile(optimizer(), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.fit(train, epochs=epochs, verbose=0, shuffle=False)

    def report(what, model, started):
        errors = diagnostics.evaluate(model, val)["errors"]
        print(f"seed {args.seed} {what}: {errors} errors, {models.count_params(model):,} "
              f"params ({time.perf_counter() - started:.0f} s)", flush=True)

    t0 = time.perf_counter()
    teacher = models.build(args.teacher_arch, info.input_shape, info.num_classes, seed=args.seed)
    plain(teacher, args.teacher_epochs)
    report(f"teacher {args.teacher_arch}", teacher, t0)
    for arch in args.students.split(";"):
        t0 = time.perf_counter()
        baseline = models.build(arch, info.input_shape, info.num_classes, seed=args.seed + 1)
        initial = baseline.get_weights()
        plain(baseline, args.epochs)
        report(f"{arch} baseline", baseline, t0)
        for config in args.configs.split(";"):
            temperature, alpha = (float(v) for v in config.split(","))
            t0 = time.perf_counter()
            student = models.build(arch, info.input_shape, info.num_classes, seed=args.seed + 1)
            student.set_weights(initial)
            distiller = keras_kd.Distiller(teacher, student, temperature=temperature, alpha=alpha)
            distiller.compile(optimizer())
            distiller.fit(train, epochs=args.epochs, verbose=0, shuffle=False)
            report(f"{arch} distilled T={temperature:g} alpha={alpha:g}", student, t0)


if __name__ == "__main__":
    main()
