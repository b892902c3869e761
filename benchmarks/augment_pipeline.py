"""Is augmentation the bottleneck? Pipeline images/s per policy vs the step's.

Measures, in one process, after a warm-up pass, the median of ``--repeats``
timings of:

- the input pipeline alone: iterating ``augment.apply(train, policy)``
  (parallel map + prefetch, as the job runs it) for every policy;
- the distillation step alone: ``Distiller.fit`` on the same number of
  batches already in memory (no augmentation), for the job's default
  models.

A policy whose pipeline delivers fewer than ~2× the images/s the step
consumes can starve training.

    python -m benchmarks.augment_pipeline                  # mnist5k, defaults
    python -m benchmarks.augment_pipeline --rgb            # 32x32x3 images
"""

import argparse

import keras
import numpy as np
import tensorflow as tf

import keras_kd
from benchmarks._timing import median_seconds
from keras_kd import augment, data, models

POLICIES = ("none", "jitter", "flip_crop", "randaugment", "mixup", "cutmix",
            "function_matching")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rgb", action="store_true", help="random 32x32x3 images")
    parser.add_argument("--teacher_arch", default="cnn")
    parser.add_argument("--student_arch", default="mlp:hidden=400x400")
    args = parser.parse_args()

    keras.utils.set_random_seed(0)
    if args.rgb:
        n = args.batches * args.batch_size
        rng = np.random.default_rng(0)
        x = rng.integers(0, 256, (n, 32, 32, 3)).astype("float32")
        y = rng.integers(0, 10, n).astype("int32")
        raw = tf.data.Dataset.from_tensor_slices((x, y)).batch(args.batch_size)
        shape, classes, name = (32, 32, 3), 10, "random 32x32x3"
    else:
        raw, _, info = data.load("mnist5k", batch_size=args.batch_size, seed=0)
        raw = raw.take(args.batches)
        shape, classes, name = info.input_shape, info.num_classes, "mnist5k 28x28x1"
    raw = raw.cache()
    images = args.batches * args.batch_size

    def consume(ds):
        def run():
            for _ in ds:
                pass
        return run

    rows = []
    for policy in POLICIES:
        ds = augment.apply(raw, policy, shape, seed=0, num_classes=classes)
        rows.append((policy, images / median_seconds(consume(ds), args.repeats)))

    in_memory = [b for b in raw]
    ready = tf.data.Dataset.from_tensor_slices(
        (np.concatenate([b[0] for b in in_memory]), np.concatenate([b[1] for b in in_memory]))
    ).batch(args.batch_size).cache()
    teacher = models.build(args.teacher_arch, shape, classes, name="teacher")
    student = models.build(args.student_arch, shape, classes, name="student")
    distiller = keras_kd.Distiller(teacher, student, temperature=3.0, alpha=0.7)
    distiller.compile(keras.optimizers.Adam(1e-3))
    step = images / median_seconds(lambda: distiller.fit(ready, epochs=1, verbose=0), args.repeats)

    print(f"{name}, batch {args.batch_size}, {args.batches} batches; median of "
          f"{args.repeats}; step = {args.teacher_arch} -> {args.student_arch}")
    print("| policy | pipeline images/s | ÷ step's images/s |")
    print("|---|---|---|")
    for policy, rate in rows:
        print(f"| {policy} | {rate:,.0f} | {rate / step:.1f} |")
    print(f"| (distillation step) | {step:,.0f} | 1.0 |")


if __name__ == "__main__":
    main()
