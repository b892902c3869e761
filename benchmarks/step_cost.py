"""What a distillation epoch costs, against its floor and against keras.distillation.

The floor of online distillation is one teacher forward pass (inference) plus
one student forward and backward pass per batch. This script times, in one
process, on the same models, data and optimizer, after a warm-up epoch each,
the median of ``--repeats`` interleaved epochs of:

    teacher_infer      teacher.predict over the data (inference mode)
    student_train      the student alone on the labels (Keras fit)
    kd_train           keras_kd.Distiller.fit (online: the teacher runs each step)
    kd_cache_train     keras_kd.Distiller.fit from the teacher cache (keras_kd.cache)
    kd_eval            keras_kd.Distiller.evaluate (student only, the default)
    keras_train        keras.distillation.Distiller.fit, LogitsDistillation(T, KLDivergence())
    keras_eval         keras.distillation.Distiller.evaluate (it runs the teacher)
    kd_hint_train      kd_train plus a hint term (features.Hint) between the two logits layers
    keras_hint_train   keras.distillation with LogitsDistillation + FeatureDistillation there
    kd_jit             kd_train with jit_compile=True (XLA)
    kd_spe8            kd_train with steps_per_execution=8

and prints the ratios issue 7 asks for:

    a. kd_train / (teacher_infer + student_train)             target <= 1.05
    b. kd_cache_train / student_train                         target <= 1.10
    c. keras_train / kd_train (speed-up)                      target >= 1.0
       keras_eval / kd_eval                                   target >= 1.5
       keras_hint_train / kd_hint_train                       target >= 1.3
    e. kd_jit / kd_train and kd_spe8 / kd_train               (< 1: faster)

Defaults are the issue's models: a CNN teacher of 64-128-256 filters
(``cnn:width=2``), a student of 16-32-64 (``cnn:width=0.5``), 32×32×3 images,
batch 64, 10 classes; random pixels (the cost does not depend on them).
The hint runs between the ``logits`` layers because Keras's
``FeatureDistillation`` has no projector: these are the only layers of the
two models with equal shapes (the cost measured is its second student pass).

    python -m benchmarks.step_cost
    python -m benchmarks.step_cost --steps=50 --repeats=7 --only=kd_train,keras_train
"""

import argparse
import json
import tempfile

from benchmarks._timing import interleaved

ALL = ("teacher_infer", "student_train", "kd_train", "kd_cache_train", "kd_eval",
       "keras_train", "keras_eval", "kd_hint_train", "keras_hint_train", "kd_jit", "kd_spe8")


def _models(args, shape):
    from keras_kd import models

    teacher = models.build(args.teacher, shape, 10, name="teacher", seed=0)
    student = models.build(args.student, shape, 10, name="student", seed=1)
    return teacher, student


def build_runs(args):
    """{name: zero-argument callable that runs one epoch}."""
    import keras
    import numpy as np
    import tensorflow as tf

    import keras_kd
    from keras_kd import cache

    shape = tuple(int(s) for s in args.shape.split(","))
    rng = np.random.default_rng(0)
    n = args.steps * args.batch_size
    x = rng.uniform(0, 255, size=(n, *shape)).astype("float32")
    y = rng.integers(0, 10, size=n).astype("int32")
    raw = tf.data.Dataset.from_tensor_slices((x, y))
    ds = raw.batch(args.batch_size).cache().prefetch(tf.data.AUTOTUNE)
    T, alpha = 4.0, 0.9

    def sce():
        return keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    runs = {}
    teacher, student = _models(args, shape)
    teacher.trainable = False
    wanted = set(args.only.split(",")) if args.only else set(ALL)

    if "teacher_infer" in wanted:
        runs["teacher_infer"] = lambda: teacher.predict(ds, verbose=0)
    if "student_train" in wanted:
        plain = _models(args, shape)[1]
        plain.compile(optimizer=keras.optimizers.Adam(1e-3), loss=sce())
        runs["student_train"] = lambda: plain.fit(ds, epochs=1, verbose=0)

    def kd(features=None, **compile_kwargs):
        d = keras_kd.Distiller(teacher, _models(args, shape)[1], temperature=T, alpha=alpha,
                               features=features)
        d.compile(optimizer=keras.optimizers.Adam(1e-3), **compile_kwargs)
        return d

    if "kd_train" in wanted or "kd_eval" in wanted:
        d = kd()
        runs["kd_train"] = lambda: d.fit(ds, epochs=1, verbose=0)
        runs["kd_eval"] = lambda: d.evaluate(ds, verbose=0)
    if "kd_cache_train" in wanted:
        folder = tempfile.mkdtemp(prefix="kd_cache_bench_")
        cache.build(teacher, raw, folder, log=lambda *a: None)
        cached = (cache.attach(raw, folder, teacher).batch(args.batch_size).cache()
                  .prefetch(tf.data.AUTOTUNE))
        dc = kd()
        runs["kd_cache_train"] = lambda: dc.fit(cached, epochs=1, verbose=0)
    if "kd_hint_train" in wanted:
        dh = kd(features=[keras_kd.features.Hint("logits", "logits")])
        runs["kd_hint_train"] = lambda: dh.fit(ds, epochs=1, verbose=0)
    if "keras_hint_train" in wanted:
        from keras import distillation

        khint = distillation.Distiller(
            teacher=teacher, student=_models(args, shape)[1],
            distillation_losses=[
                distillation.LogitsDistillation(temperature=T, loss=keras.losses.KLDivergence()),
                distillation.FeatureDistillation(
                    loss="mse", teacher_layer_name="logits", student_layer_name="logits"),
            ],
            distillation_loss_weights=[1.0, 1.0],
            student_loss_weight=1.0 - alpha,
        )
        khint.compile(optimizer=keras.optimizers.Adam(1e-3), loss=sce())
        runs["keras_hint_train"] = lambda: khint.fit(ds, epochs=1, verbose=0)
    if "kd_jit" in wanted:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dj = kd(jit_compile=True)
        runs["kd_jit"] = lambda: dj.fit(ds, epochs=1, verbose=0)
    if "kd_spe8" in wanted:
        ds8 = kd(steps_per_execution=8)
        runs["kd_spe8"] = lambda: ds8.fit(ds, epochs=1, verbose=0)
    if "keras_train" in wanted or "keras_eval" in wanted:
        from keras import distillation

        kdist = distillation.Distiller(
            teacher=teacher, student=_models(args, shape)[1],
            distillation_losses=distillation.LogitsDistillation(
                temperature=T, loss=keras.losses.KLDivergence()),
            student_loss_weight=1.0 - alpha,
        )
        kdist.compile(optimizer=keras.optimizers.Adam(1e-3), loss=sce())
        runs["keras_train"] = lambda: kdist.fit(ds, epochs=1, verbose=0)
        runs["keras_eval"] = lambda: kdist.evaluate(ds, verbose=0)
    return {k: v for k, v in runs.items() if k in wanted}


def ratios(m):
    out = {}
    if {"kd_train", "teacher_infer", "student_train"} <= set(m):
        out["a. kd_train / (teacher_infer + student_train)"] = (
            m["kd_train"] / (m["teacher_infer"] + m["student_train"]), "<= 1.05")
    if {"kd_cache_train", "student_train"} <= set(m):
        out["b. kd_cache_train / student_train"] = (
            m["kd_cache_train"] / m["student_train"], "<= 1.10")
    if {"keras_train", "kd_train"} <= set(m):
        out["c. keras_train / kd_train (speed-up)"] = (
            m["keras_train"] / m["kd_train"], ">= 1.0")
    if {"keras_eval", "kd_eval"} <= set(m):
        out["c. keras_eval / kd_eval (speed-up)"] = (m["keras_eval"] / m["kd_eval"], ">= 1.5")
    if {"keras_hint_train", "kd_hint_train"} <= set(m):
        out["c. keras_hint_train / kd_hint_train (speed-up)"] = (
            m["keras_hint_train"] / m["kd_hint_train"], ">= 1.3")
    for name in ("kd_jit", "kd_spe8"):
        if {name, "kd_train"} <= set(m):
            out[f"e. {name} / kd_train"] = (m[name] / m["kd_train"], "< 1 is faster")
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="cnn:width=2")
    parser.add_argument("--student", default="cnn:width=0.5")
    parser.add_argument("--shape", default="32,32,3")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--only", default="", help=f"comma-separated subset of {','.join(ALL)}")
    args = parser.parse_args()
    medians = interleaved(build_runs(args), args.repeats)
    n = args.steps * args.batch_size
    print(f"{'run':<16} {'epoch s':>8} {'images/s':>9}")
    for name, sec in medians.items():
        print(f"{name:<16} {sec:8.3f} {n / sec:9.0f}")
    print()
    for name, (value, target) in ratios(medians).items():
        print(f"{name:<52} {value:6.3f}   target {target}")
    print("RESULT" + json.dumps({"epoch_s": medians,
                                 "ratios": {k: v for k, (v, _) in ratios(medians).items()},
                                 "args": vars(args)}))


if __name__ == "__main__":
    main()
