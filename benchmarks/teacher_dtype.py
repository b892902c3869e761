"""A frozen teacher in reduced precision: speed, soft-target fidelity, student accuracy.

Trains a teacher once on the embedded digits, then compares its float32 and
reduced-precision (``--dtype``, default bfloat16) inference:

* speed: median of ``--repeats`` interleaved epochs of teacher inference
  (``predict``) and of distillation (``Distiller.fit``), after a warm-up;
* fidelity: the mean ``KL(p32 ‖ p_low)`` between the two soft-target
  distributions at the run's T over the training images, the largest
  absolute logit difference and the top-1 agreement;
* effect: the distilled student's validation accuracy after ``--epochs``
  epochs from each teacher (same initial weights, same data order).

    python -m benchmarks.teacher_dtype
    python -m benchmarks.teacher_dtype --dtype=float16     # on a GPU
"""

import argparse
import json

from benchmarks._timing import interleaved


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16"))
    parser.add_argument("--teacher", default="cnn")
    parser.add_argument("--student", default="mlp:hidden=400x400")
    parser.add_argument("--teacher_epochs", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--temperature", type=float, default=3.0)
    parser.add_argument("--alpha", type=float, default=0.7)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import keras
    import numpy as np

    import keras_kd
    from keras_kd import data, losses, models, views

    keras.utils.set_random_seed(args.seed)
    train, val, info = data.load("mnist5k", batch_size=64, seed=args.seed)
    teacher = models.build(args.teacher, info.input_shape, info.num_classes, seed=args.seed)
    teacher.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                    metrics=["accuracy"])
    teacher.fit(train, epochs=args.teacher_epochs, verbose=0)
    teacher.trainable = False
    low = views.with_compute_dtype(teacher, args.dtype)

    # Fidelity on all 5,000 images (validation, then the training split).
    x = np.concatenate([b[0].numpy() for b in val.rebatch(256)] +
                       [b[0].numpy() for b in train.rebatch(256)])
    t32 = teacher.predict(x, batch_size=256, verbose=0)
    tlow = low.predict(x, batch_size=256, verbose=0).astype("float32")
    T = args.temperature
    kl = float(np.mean(losses.kl_divergence(t32, tlow, T)) / (T * T))
    fidelity = {
        "mean_kl_at_T": kl,
        "max_abs_logit_diff": float(np.abs(t32 - tlow).max()),
        "top1_agreement": float(np.mean(t32.argmax(-1) == tlow.argmax(-1))),
        "teacher_val_accuracy_f32": float(teacher.evaluate(val, verbose=0, return_dict=True)["accuracy"]),
    }

    def distiller(dtype):
        """The Distiller as a user builds it: ``teacher_dtype=`` on the float32 teacher."""
        keras.utils.set_random_seed(args.seed + 1)
        student = models.build(args.student, info.input_shape, info.num_classes,
                               seed=args.seed + 1)
        d = keras_kd.Distiller(teacher, student, temperature=T, alpha=args.alpha,
                               teacher_dtype=dtype)
        d.compile(optimizer=keras.optimizers.Adam(2e-3), metrics=["accuracy"])
        return d

    # Student accuracy from each teacher precision: the same initial weights,
    # and the same data order (a fresh, identically seeded pipeline per run).
    accuracy = {}
    for dtype in ("float32", args.dtype):
        keras.utils.set_random_seed(args.seed + 2)
        d = distiller(dtype)
        run_train, _, _ = data.load("mnist5k", batch_size=64, seed=args.seed)
        d.fit(run_train, epochs=args.epochs, verbose=0)
        accuracy[dtype] = float(d.evaluate(val, verbose=0, return_dict=True)["accuracy"])

    # Speed, interleaved.
    train_c = train.cache()
    d32, dlow = distiller("float32"), distiller(args.dtype)
    runs = {
        "infer_float32": lambda: teacher.predict(train_c, verbose=0),
        f"infer_{args.dtype}": lambda: low.predict(train_c, verbose=0),
        "distill_float32": lambda: d32.fit(train_c, epochs=1, verbose=0),
        f"distill_{args.dtype}": lambda: dlow.fit(train_c, epochs=1, verbose=0),
    }
    med = interleaved(runs, args.repeats)
    speed = {
        "teacher_inference_speedup": med["infer_float32"] / med[f"infer_{args.dtype}"],
        "distill_epoch_speedup": med["distill_float32"] / med[f"distill_{args.dtype}"],
    }
    print(f"{'epoch (s)':<22}" + "".join(f"{k:>18}" for k in med))
    print(f"{'':<22}" + "".join(f"{v:18.3f}" for v in med.values()))
    for k, v in {**speed, **fidelity}.items():
        print(f"{k:<30} {v:.6g}")
    for k, v in accuracy.items():
        print(f"student val accuracy, {k} teacher: {v:.4f}")
    print("RESULT" + json.dumps({"epoch_s": med, "speed": speed, "fidelity": fidelity,
                                 "student_accuracy": accuracy, "args": vars(args)}))


if __name__ == "__main__":
    main()
