"""Multi-worker epoch time against how often ``fit_loop`` reads the metrics.

Under ``MultiWorkerMirroredStrategy`` reading the metrics is an all-reduce
across the workers that waits for the step. ``keras_kd.fitting.fit_loop``
reads them every ``LOG_EVERY`` steps; this script runs two workers on
localhost (a small MLP teacher and student, ``--steps`` batches of 64) with
``LOG_EVERY`` = 1 (every step) and the default, alternating ``--rounds``
times, and prints worker 0's median epoch time (one ``fit`` of 4 epochs
timed by a callback; the median of epochs 2–4, the first warms up).

    python -m benchmarks.multi_worker_logs
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

_WORKER = r"""
import json, os, sys, time
index, ports, every, steps = int(sys.argv[1]), sys.argv[2].split(","), int(sys.argv[3]), int(sys.argv[4])
os.environ["TF_CONFIG"] = json.dumps({"cluster": {"worker": [f"localhost:{p}" for p in ports]},
                                      "task": {"type": "worker", "index": index}})
import numpy as np, tensorflow as tf, keras, keras_kd
from keras_kd import distribute, fitting
fitting.LOG_EVERY = every
strategy = distribute.get_strategy("multi_worker")
keras.utils.set_random_seed(7)
def mlp(h):
    i = keras.Input((32,))
    return keras.Model(i, keras.layers.Dense(10)(keras.layers.Dense(h, activation="relu")(i)))
with strategy.scope():
    d = keras_kd.Distiller(mlp(64), mlp(16), temperature=3.0, alpha=0.7)
    d.compile(optimizer=keras.optimizers.SGD(0.1), metrics=["accuracy"])
rng = np.random.default_rng(0)
x = rng.normal(size=(64 * steps, 32)).astype("float32")
y = rng.integers(0, 10, size=64 * steps).astype("int32")
ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(64)
class Timer(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()
    def on_epoch_end(self, epoch, logs=None):
        times.append(time.perf_counter() - self.start)
times = []
d.fit(ds, epochs=4, verbose=0, callbacks=[Timer()])  # one fit: epoch 1 warms up
if index == 0:
    print("RESULT" + json.dumps({"every": every, "epoch_s": sorted(times[1:])[1]}), flush=True)
"""


def _ports():
    socks = [socket.socket() for _ in range(2)]
    for s in socks:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ",".join(map(str, ports))


def _run(script, every, steps):
    ports = _ports()
    procs = [subprocess.Popen([sys.executable, script, str(i), ports, str(every), str(steps)],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
             for i in (1, 0)]
    try:
        out = procs[1].communicate(timeout=600)[0]
        procs[0].wait(timeout=60)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    line = [row for row in out.splitlines() if row.startswith("RESULT")][-1]
    return json.loads(line[len("RESULT"):])["epoch_s"]


def main():
    from keras_kd import fitting

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(_WORKER)
        script = f.name
    try:
        times = {1: [], fitting.LOG_EVERY: []}
        for _ in range(args.rounds):
            for every in times:
                times[every].append(_run(script, every, args.steps))
                time.sleep(1)
    finally:
        os.remove(script)
    for every, values in times.items():
        print(f"LOG_EVERY={every:<3} epoch s: {' '.join(f'{v:.2f}' for v in values)}"
              f"  median {statistics.median(values):.2f}")
    ratio = statistics.median(times[1]) / statistics.median(times[fitting.LOG_EVERY])
    print(f"every step ÷ every {fitting.LOG_EVERY}: {ratio:.2f}")


if __name__ == "__main__":
    main()
