"""Distillation step throughput at 1, 2 and 4 replicas, and per dtype policy.

On the CPU the replicas are logical devices splitting the same cores
(``--num_cpu_devices``), so this shows the *overhead* of the replicated
step (splitting the batch, all-reducing gradients), not a speed-up. On a
machine with GPUs, ``--devices=gpu`` uses MirroredStrategy over the GPUs and
``--policies`` compares float32 with mixed_float16 / mixed_bfloat16.

Each configuration runs in its own process (logical devices are fixed at
TensorFlow's start-up): after one warm-up epoch, the median of ``--repeats``
timed epochs of ``--steps`` global batches.

    python -m benchmarks.scaleout                          # CPU: 1, 2, 4 replicas
    python -m benchmarks.scaleout --devices=gpu --replicas=1 \\
        --teacher=resnet50 --student=mobilenet_v2 --shape=224,224,3 \\
        --batch_size=128 --policies=float32,mixed_float16,mixed_bfloat16
"""

import argparse
import json
import statistics
import subprocess
import sys
import time


def _measure(args):
    """One configuration, in this process; prints a JSON line."""
    from keras_kd import distribute

    if args.devices == "cpu":
        distribute.configure_cpu_devices(args.replicas)
    import keras
    import numpy as np
    import tensorflow as tf

    import keras_kd
    from keras_kd import models

    strategy = distribute.get_strategy("mirrored" if args.replicas > 1 else "one_device")
    shape = tuple(int(s) for s in args.shape.split(","))
    rng = np.random.default_rng(0)
    n = args.steps * args.batch_size
    x = rng.uniform(0, 255, size=(n, *shape)).astype("float32")
    y = rng.integers(0, 10, size=n).astype("int32")
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(args.batch_size).cache().prefetch(2)
    keras.utils.set_random_seed(0)
    with distribute.mixed_precision(args.policy):
        distiller = keras_kd.build_distiller(
            strategy,
            lambda: models.build(args.teacher, shape, 10, name="teacher"),
            lambda: models.build(args.student, shape, 10, name="student"),
            temperature=4.0, alpha=0.9, optimizer="adam",
        )
        distiller.fit(ds, epochs=1, verbose=0)  # warm-up: tracing, allocation
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            distiller.fit(ds, epochs=1, verbose=0)
            times.append(time.perf_counter() - start)
    median = statistics.median(times)
    print("RESULT" + json.dumps({
        "replicas": strategy.num_replicas_in_sync, "policy": args.policy,
        "epoch_s": median, "images_per_s": n / median,
    }), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--replicas", default="1,2,4")
    parser.add_argument("--policies", default="float32")
    parser.add_argument("--teacher", default="cnn")
    parser.add_argument("--student", default="mlp:hidden=400x400")
    parser.add_argument("--shape", default="28,28,1")
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--policy", default="float32", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        args.replicas = int(args.replicas)
        return _measure(args)

    rows = []
    for policy in args.policies.split(","):
        for replicas in args.replicas.split(","):
            argv = [sys.executable, "-m", "benchmarks.scaleout", "--one",
                    f"--replicas={replicas}", f"--policy={policy}"] + [
                f"--{k}={getattr(args, k)}" for k in
                ("devices", "teacher", "student", "shape", "batch_size", "steps", "repeats")]
            proc = subprocess.run(argv, capture_output=True, text=True)
            if proc.returncode:
                print(proc.stderr[-2000:], file=sys.stderr)
                raise SystemExit(f"{policy} x{replicas} failed")
            line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")][-1]
            rows.append(json.loads(line[len("RESULT"):]))
    base = {r["policy"]: r["images_per_s"] for r in rows if r["replicas"] == rows[0]["replicas"]}
    first = rows[0]["images_per_s"]
    print(f"{args.teacher} -> {args.student}, {args.shape}, global batch "
          f"{args.batch_size}, {args.devices}; median of {args.repeats} epochs of {args.steps} steps")
    print("| policy | replicas | images/s | vs 1st row | vs same policy, fewest replicas |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['policy']} | {r['replicas']} | {r['images_per_s']:,.0f} | "
              f"{r['images_per_s'] / first:.2f} | {r['images_per_s'] / base[r['policy']]:.2f} |")


if __name__ == "__main__":
    main()
