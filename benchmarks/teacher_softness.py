"""How soft are a teacher's targets on the images it was trained on, vs new ones?

A teacher that memorised its training split gives nearly one-hot soft targets
on those images (the transfer set) while staying soft on validation images;
then distillation carries little beyond the labels. This prints, per split and
temperature, the teacher's accuracy, the mean largest soft target, the mean
soft target of the true class and the logits' spread.

    python -m benchmarks.teacher_softness --teacher=/tmp/kd_payoff/teachers/animals10k_cnn_width=2_e12_s0.keras \\
        --dataset=animals10k --temperatures=1,4
"""

import argparse


def softness(teacher_path, dataset, temperatures):
    """``[(split, T, accuracy, mean top-1 probability, mean p(true class), logit std)]``."""
    import keras
    import numpy as np
    import tensorflow as tf

    from keras_kd import data

    teacher = keras.saving.load_model(teacher_path)
    train, val, _ = data.load_unbatched(dataset)
    rows = []
    for name, split in (("train", train), ("validation", val)):
        xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in split])
        x, y = np.stack(xs), np.array(ys)
        z = teacher.predict(x, batch_size=256, verbose=0)
        for t in temperatures:
            p = tf.nn.softmax(z / t).numpy()
            rows.append((name, t, float((p.argmax(1) == y).mean()), float(p.max(1).mean()),
                         float(p[np.arange(len(y)), y].mean()), float(z.std(1).mean())))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", required=True)
    parser.add_argument("--dataset", default="mnist5k")
    parser.add_argument("--temperatures", default="1,4")
    args = parser.parse_args()
    print("| split | T | accuracy | mean top-1 | mean p(true) | logit std |\n|---|---|---|---|---|---|")
    for row in softness(args.teacher, args.dataset,
                        [float(t) for t in args.temperatures.split(",")]):
        print("| {} | {:g} | {:.4f} | {:.3f} | {:.3f} | {:.2f} |".format(*row))


if __name__ == "__main__":
    main()
