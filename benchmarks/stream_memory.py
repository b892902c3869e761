"""Resident memory of a run's training stream against its number of epochs.

``keras_kd.epochs.Epochs.batches(0, N)`` concatenates one pipeline per epoch.
With tf.data's default static optimizations on, iterating it copied the
in-memory training split once per epoch (~28 MB per epoch on animals10k); this
script builds the stream for each ``--epochs`` value in a fresh process, reads
``--steps`` batches, and prints the process's resident memory (VmRSS) before
and after, with the optimizations as the stream sets them and, for comparison,
turned back on (``--compare``).

    python -m benchmarks.stream_memory --dataset=animals10k --epochs=1,40,160 --compare
"""

import argparse
import subprocess
import sys

_CHILD = r"""
import sys
import tensorflow as tf
from keras_kd import data, epochs
name, n, steps, default_opts = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
def rss():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) // 1024 for l in f if l.startswith("VmRSS"))
train, _, info = data.load_unbatched(name)
stream = epochs.Epochs(train, batch_size=64, seed=0, augment="jitter+mixup",
                       input_shape=info.input_shape, num_classes=info.num_classes)
before = rss()
ds = stream.batches(0, n)
if default_opts:
    o = tf.data.Options()
    o.experimental_optimization.apply_default_optimizations = True
    ds = ds.with_options(o)
for i, _ in enumerate(ds):
    if i + 1 == steps:
        break
print(before, rss())
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="animals10k")
    parser.add_argument("--epochs", default="1,40,160")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--compare", action="store_true",
                        help="also with tf.data's default optimizations turned back on")
    args = parser.parse_args()
    print("| epochs | tf.data default optimizations | RSS before (MB) | RSS after (MB) |")
    print("|---|---|---|---|")
    for n in (int(e) for e in args.epochs.split(",")):
        for default_opts in ((False, True) if args.compare else (False,)):
            out = subprocess.run([sys.executable, "-c", _CHILD, args.dataset, str(n),
                                  str(args.steps), "1" if default_opts else "0"],
                                 capture_output=True, text=True, check=True).stdout.split()
            print(f"| {n} | {'on' if default_opts else 'off (the stream)'} | {out[-2]} | "
                  f"{out[-1]} |", flush=True)


if __name__ == "__main__":
    main()
