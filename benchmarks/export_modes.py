"""Size, accuracy, agreement and latency of each TFLite quantization mode.

For each model, every mode of ``keras_kd.export.QUANTIZATIONS`` is exported
with :func:`keras_kd.export.to_tflite` (int8 calibrated on the first 300
training images) and checked with :func:`keras_kd.export.verify` on the
1,000 validation images of mnist5k: accuracy, top-1 agreement with the Keras
model, the largest output difference, and the median latency of one
single-image ``invoke`` (1 thread, after warm-up). The ``litert-benchmark``
column is the median of the tool shipped in the ai-edge-litert wheel
(200 runs after 20 warm-up runs, 1 thread, LiteRT's CompiledModel API; it
prints 0.01 ms steps).

Models:

- ``default``: the main job's student (``mlp:hidden=400x400`` distilled on
  mnist5k). ``--student=kd_runs/x/student.keras`` uses one trained by
  ``keras-kd``; without it the job is run here with its defaults (~1 min).
- ``mobilenet_v2``: ``models.build("mobilenet_v2", (32, 32, 3), 10)``
  (``weights=None``, 2.2 M parameters) trained from scratch for
  ``--mobilenet_epochs`` epochs on mnist5k resized to 32×32 and repeated to
  3 channels (real images, 3-channel input), BatchNorm momentum 0.9 (see
  ``_mobilenet``).

    python -m benchmarks.export_modes
    python -m benchmarks.export_modes --student=/tmp/x/student.keras --models=default
"""

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile


def _machine():
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} CPUs visible, {platform.system()} {platform.machine()}"


def _litert_benchmark(path, threads):
    """Median ms of ``litert-benchmark`` (beside this Python), or None."""
    tool = os.path.join(os.path.dirname(sys.executable), "litert-benchmark")
    tool = tool if os.path.exists(tool) else shutil.which("litert-benchmark")
    if not tool:
        return None
    out = path + ".bench.json"
    subprocess.run(
        [tool, "--model", path, "--num_runs", "200", "--warmup_runs", "20",
         "--num_threads", str(threads), "--result_json", out],
        capture_output=True, timeout=600, check=False,
    )
    try:
        with open(out, encoding="utf-8") as f:
            return json.load(f)["latency"]["median_ms"]
    except (OSError, ValueError, KeyError):
        return None


def _default_student(path):
    import keras

    from keras_kd import data, job

    if not path:
        out = tempfile.mkdtemp(prefix="export_modes_job_")
        print(f"training the default student (keras-kd defaults) into {out} ...", flush=True)
        job.run(job.JobConfig(output_dir=out, export=False, verbose=0), log=lambda *_: None)
        path = os.path.join(out, "student.keras")
    train, val, info = data.load("mnist5k", batch_size=64, seed=0)
    return keras.saving.load_model(path), train, val, info


def _mobilenet(epochs):
    import keras
    import tensorflow as tf

    from keras_kd import data, models

    train, val, info = data.load("mnist5k", batch_size=64, seed=0, image_size=(32, 32))

    def rgb(images, labels):
        return tf.image.grayscale_to_rgb(images), labels

    train, val = train.map(rgb), val.map(rgb)
    keras.utils.set_random_seed(0)
    model = models.build("mobilenet_v2", (32, 32, 3), info.num_classes, seed=0)
    # Keras's MobileNetV2 uses BatchNorm momentum 0.999: after a few hundred
    # steps its moving statistics are still near their initial values and
    # every validation image gets one class. 0.9 lets them settle in a short run.
    for layer in model._flatten_layers():
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.9
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    print(f"training mobilenet_v2 on 32x32x3 mnist5k for {epochs} epochs ...", flush=True)
    model.fit(train, epochs=epochs, verbose=2)
    return model, train, val, info


def _table(name, model, train, val, info, folder, threads):
    from keras_kd import diagnostics, export, models

    scores = diagnostics.evaluate(model, val)
    print(f"\n### {name}: {models.count_params(model):,} parameters, Keras float32 "
          f"accuracy {100 * scores['accuracy']:.2f}% on {scores['examples']} validation "
          "images\n")
    print("| mode | size | vs float32 | accuracy | agreement | max abs Δ logit "
          "| latency median (verify) | latency median (litert-benchmark) |")
    print("|---|---|---|---|---|---|---|---|")
    float_size = None
    for mode in export.QUANTIZATIONS:
        path = export.to_tflite(model, os.path.join(folder, f"{name}_{mode}.tflite"), mode,
                                train, class_names=info.class_names)
        r = export.verify(path, val, model, num_threads=threads)
        float_size = float_size or r["size_bytes"]
        bench = _litert_benchmark(path, threads)
        print(
            f"| {mode} | {r['size_bytes'] / 1024:,.1f} KiB | "
            f"{r['size_bytes'] / float_size:.2f}× | {100 * r['accuracy']:.2f}% | "
            f"{100 * r['agreement']:.2f}% | {r['max_abs_diff']:.3g} | "
            f"{1000 * r['latency_ms_median']:.1f} µs | "
            + ("—" if bench is None else f"{bench:.2f} ms") + " |",
            flush=True,
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="default,mobilenet_v2")
    parser.add_argument("--student", default=None, help="the main job's student.keras")
    parser.add_argument("--mobilenet_epochs", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out_dir", default=None, help="keep the .tflite files here")
    args = parser.parse_args()
    import tensorflow as tf

    folder = args.out_dir or tempfile.mkdtemp(prefix="export_modes_")
    os.makedirs(folder, exist_ok=True)
    print(f"machine: {_machine()}; TensorFlow {tf.__version__}; files in {folder}")
    for name in args.models.split(","):
        if name == "default":
            loaded = _default_student(args.student)
        elif name == "mobilenet_v2":
            loaded = _mobilenet(args.mobilenet_epochs)
        else:
            raise SystemExit(f"unknown model {name!r}; valid: default, mobilenet_v2")
        _table(name, *loaded, folder, args.threads)


if __name__ == "__main__":
    main()
