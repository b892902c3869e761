"""Teachers from elsewhere, ensembles, and what an ensemble step costs (mnist5k).

Three measurements, each over ``--seeds`` with the main job (``keras_kd.job.run``,
its defaults but for what is said), so that the baseline and the distilled
student of one seed see the same data:

1. *preprocessing*: a CNN trained in plain Keras on the digits scaled to 0-1,
   ending in a softmax (the "teacher from elsewhere"), distilled with
   ``--teacher_preprocessing=none`` (fed raw 0-255 pixels, as before this
   option) and ``=unit``: baseline / distilled validation errors and the soft
   targets' mean top-1 probability at T;
2. *ensemble*: ``--teacher_arch`` members trained by keras_kd, then the
   students distilled from the ensemble of all of them and from its best member;
3. *cost*: the median distillation epoch with the ensemble vs with one member
   (``Distiller.fit``, interleaved epochs after a warm-up).

    python -m benchmarks.teachers --out=/tmp/kd_teachers
"""

import argparse
import json
import os

from benchmarks._timing import interleaved


def _external_teacher(path, epochs, seed):
    import keras

    from keras_kd import data

    (x, y), (x_val, y_val), _ = data.load_arrays("mnist5k")
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((28, 28, 1)),
        keras.layers.Conv2D(16, 3, activation="relu"), keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(32, 3, activation="relu"), keras.layers.MaxPooling2D(),
        keras.layers.Flatten(), keras.layers.Dense(10, activation="softmax"),
    ], name="elsewhere")
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x / 255.0, y, epochs=epochs, batch_size=64, verbose=0)
    accuracy = model.evaluate(x_val / 255.0, y_val, verbose=0)[1]
    model.save(path)
    return accuracy


def _run(out, **settings):
    from keras_kd import job

    results = job.run(job.JobConfig(output_dir=out, export=False, verbose=0, **settings),
                      log=lambda *_: None)
    rows = {r["model"]: r for r in results["models"]}
    teacher = results["teacher_diagnostics"]["teachers"][-1]
    return {"baseline": rows["baseline"]["errors"], "distilled": rows["distilled"]["errors"],
            "teacher": teacher["errors"], "top1_probability": teacher["top1_probability"],
            "warnings": len(results["teacher_diagnostics"]["warnings"])}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="kd_runs/bench_teachers")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--members", default="cnn,cnn:width=0.5,mlp:hidden=1200x1200")
    parser.add_argument("--external_epochs", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--parts", default="preprocessing,ensemble,cost")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    parts = args.parts.split(",")
    os.makedirs(args.out, exist_ok=True)
    report = {}

    if "preprocessing" in parts:
        path = os.path.join(args.out, "elsewhere.keras")
        accuracy = _external_teacher(path, args.external_epochs, 0)
        rows = {}
        for seed in seeds:
            for spec in ("none", "unit"):
                rows[f"{spec}/{seed}"] = _run(os.path.join(args.out, f"pre_{spec}_{seed}"),
                                              teacher=path, teacher_preprocessing=spec,
                                              seed=seed)
                print(spec, seed, rows[f"{spec}/{seed}"], flush=True)
        report["preprocessing"] = {"teacher_val_accuracy_on_0_1": accuracy, "runs": rows}

    if "ensemble" in parts or "cost" in parts:
        members = []
        for i, arch in enumerate(args.members.split(",")):
            folder = os.path.join(args.out, f"member_{i}")
            if not os.path.exists(os.path.join(folder, "teacher.keras")):
                _run(folder, teacher_arch=arch, seed=100 + i, epochs=1)
            members.append(os.path.join(folder, "teacher.keras"))

    if "ensemble" in parts:
        rows = {}
        for seed in seeds:
            rows[f"ensemble/{seed}"] = _run(os.path.join(args.out, f"ens_{seed}"),
                                            teacher=",".join(members), seed=seed)
            print("ensemble", seed, rows[f"ensemble/{seed}"], flush=True)
            singles = [_run(os.path.join(args.out, f"single_{seed}_{i}"), teacher=m, seed=seed)
                       for i, m in enumerate(members)]
            best = min(range(len(members)), key=lambda i: singles[i]["teacher"])
            rows[f"best_member/{seed}"] = {**singles[best], "member": members[best]}
            print("best member", seed, rows[f"best_member/{seed}"], flush=True)
        report["ensemble"] = rows

    if "cost" in parts:
        import keras

        import keras_kd
        from keras_kd import data, models

        train, _, info = data.load("mnist5k", batch_size=64, seed=0)
        loaded = [keras.saving.load_model(m) for m in members]

        def epoch(teacher):
            student = models.build("mlp:hidden=400x400", info.input_shape, info.num_classes,
                                   seed=1)
            kd = keras_kd.Distiller(teacher, student, temperature=3.0, alpha=0.7)
            kd.compile(optimizer=keras.optimizers.Adam(2e-3))
            return lambda: kd.fit(train, epochs=1, verbose=0)

        times = interleaved({"single": epoch(loaded[0]), "ensemble": epoch(loaded)},
                            args.repeats)
        report["cost"] = {**times, "ratio": times["ensemble"] / times["single"],
                          "members": args.members}
        print("cost", report["cost"], flush=True)

    with open(os.path.join(args.out, "teachers.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
