"""Does distillation pay? Baseline vs distilled student over seeds, datasets and schedules.

For each dataset and seed, one teacher is trained by the main job's phase
(kept in ``--out/teachers`` and reused), then, for every student setting
(architecture × epochs × learning-rate schedule × augmentation), one baseline
and one distilled student per ``T,alpha`` pair: both from the same initial
weights, on the run's stream (:func:`keras_kd.job.stream`: the same batches,
order and augmented views), in deterministic mode. One JSON line per
(dataset, seed, setting, T, alpha) goes to ``--out/payoff.jsonl``; lines
already there are skipped, so a stopped run resumes.

    python -m benchmarks.payoff --datasets=mnist5k,animals10k --seeds=0,1,2 \\
        --students=mlp:hidden=100x100 --epochs=12,40 --schedules=constant,cosine \\
        --configs="3,0.7;8,0.5" --out=/tmp/kd_payoff
    python -m benchmarks.payoff --out=/tmp/kd_payoff --summary    # the table

``--teacher_file=PATH`` uses one stored teacher for every seed, e.g. a teacher
assistant: a student that ``keras-kd --teacher=BIG --student_arch=cnn`` wrote as
``student.keras``.
"""

import argparse
import dataclasses
import itertools
import json
import os
import statistics
import time


def _key(row):
    return tuple(row.get(k, "kl") for k in (  # rows from before --losses were all "kl"
        "dataset", "seed", "teacher_arch", "teacher_epochs", "student_arch", "epochs",
        "lr_schedule", "augment", "distillation_loss", "temperature", "alpha"))


def _baseline_key(row):
    """What a baseline depends on: the data, the seed and the student's settings, not the
    teacher (deterministic mode makes it the same run, bit for bit, under any teacher)."""
    return tuple(row[k] for k in ("dataset", "seed", "student_arch", "epochs", "lr_schedule",
                                  "augment"))


def _done(path):
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return {_key(r): r for r in rows}


def _measure(args, dataset, seed, out, done):
    import keras

    from keras_kd import checkpoint, diagnostics, distribute, job, models

    teachers = os.path.join(args.out, "teachers")
    # a teacher trained on its own policy is another teacher: its own files and rows
    arch_label = args.teacher_arch + (f"@{args.teacher_augment}" if args.teacher_augment else "")
    os.makedirs(teachers, exist_ok=True)
    def teacher_file(s):
        return os.path.join(teachers, f"{dataset}_{arch_label.replace(':', '_')}_"
                                      f"e{args.teacher_epochs}_s{s}.keras")

    if args.teacher_file:  # a teacher made elsewhere (e.g. a teacher assistant), every seed
        if args.teacher_members > 1 or args.teacher_augment:
            raise SystemExit("--teacher_file is a trained teacher: --teacher_members and "
                             "--teacher_augment do not apply; drop them")
        teacher = args.teacher_file
        label = args.teacher_label or args.teacher_file  # rows of two files never merge
    elif args.teacher_members > 1:  # an ensemble of the stored teachers of seeds 0..K-1
        files = [teacher_file(s) for s in range(args.teacher_members)]
        missing = [f for f in files if not os.path.exists(f)]
        if missing:
            raise SystemExit(f"--teacher_members={args.teacher_members}: no stored teacher "
                             f"{missing}; train them first with --teacher_members=1 "
                             f"--seeds=0,...,{args.teacher_members - 1}")
        teacher, label = ",".join(files), f"{args.teacher_members}x{arch_label}"
    else:
        teacher = teacher_file(seed) if os.path.exists(teacher_file(seed)) else None
        label = arch_label
    base = job.JobConfig(dataset=dataset, seed=seed, teacher_arch=args.teacher_arch,
                         teacher_epochs=args.teacher_epochs, export=False, verbose=0,
                         teacher_augment=args.teacher_augment or None,
                         output_dir=checkpoint.default_output_dir(  # fresh per invocation
                             os.path.join(args.out, "runs", f"{dataset}_s{seed}")),
                         teacher=teacher)
    strategy, folder = checkpoint.open_folder(base, None, base.resume_settings())
    with distribute.deterministic(seed, True):
        run = job.start(base, lambda *_: None, strategy, folder)
        with strategy.scope():
            t0 = time.perf_counter()
            members = job.train_teachers(run)
            teacher_s = time.perf_counter() - t0
            if not base.teacher:
                members[0].save(teacher_file(seed))
            # an ensemble is judged by its mean probabilities (T = 1)
            teacher = diagnostics.evaluate(
                job.teacher_view(run, members, dataclasses.replace(base, temperature=1.0)),
                run.val)
            for student, epochs, schedule, augment in itertools.product(
                    args.students, args.epochs, args.schedules, args.augment):
                settings = dict(student_arch=student, epochs=epochs, lr_schedule=schedule,
                                augment=augment)
                fixed = {"dataset": dataset, "seed": seed, "teacher_arch": label,
                         "teacher_epochs": args.teacher_epochs, **settings}
                todo = [(loss, t, a) for loss in args.losses for t, a in args.configs
                        if _key({**fixed, "distillation_loss": loss, "temperature": t,
                                 "alpha": a}) not in done]
                if not todo:
                    continue
                config = dataclasses.replace(base, **settings)
                keras.utils.set_random_seed(seed)
                known = [r for r in done.values() if _baseline_key(r) == _baseline_key(fixed)]
                if known:  # deterministic: that row's baseline, bit for bit; only its start
                    initial = job.new_student(config, run.info, "baseline").get_weights()
                    b, baseline_s = {"errors": known[0]["baseline"]}, known[0]["baseline_s"]
                else:
                    t0 = time.perf_counter()
                    baseline, initial, _ = job.train_baseline(run, config)
                    baseline_s = time.perf_counter() - t0
                    b = diagnostics.evaluate(baseline, run.val)
                for loss, temperature, alpha in todo:
                    trial = dataclasses.replace(config, temperature=temperature, alpha=alpha,
                                                distillation_loss=loss)
                    keras.utils.set_random_seed(seed)
                    t0 = time.perf_counter()
                    student_model, _ = job.distil(run, members, job.stream(run, trial), trial,
                                                  initial_weights=initial)
                    d = diagnostics.evaluate(student_model, run.val)
                    row = {"dataset": dataset, "seed": seed, "teacher_arch": label,
                           "teacher_epochs": args.teacher_epochs, **settings,
                           "distillation_loss": loss, "temperature": temperature, "alpha": alpha,
                           "teacher_errors": teacher["errors"], "baseline": b["errors"],
                           "distilled": d["errors"], "examples": d["examples"],
                           "student_params": models.count_params(student_model),
                           "teacher_s": round(teacher_s, 1), "baseline_s": round(baseline_s, 1),
                           "distill_s": round(time.perf_counter() - t0, 1)}
                    with open(out, "a", encoding="utf-8") as f:
                        f.write(json.dumps(row) + "\n")
                    print(json.dumps(row), flush=True)


def summary(path):
    """Per setting: mean errors of teacher, baseline, distilled; wins; share of the gap closed."""
    rows = list(_done(path).values())
    groups = {}
    for r in rows:
        k = tuple(r.get(c, "kl") for c in ("dataset", "teacher_arch", "teacher_epochs",
                                           "student_arch", "epochs", "lr_schedule", "augment",
                                           "distillation_loss", "temperature", "alpha"))
        groups.setdefault(k, []).append(r)
    lines = ["| dataset | teacher | student | epochs | schedule | augment | loss | T | alpha "
             "| seeds | teacher errors | baseline | distilled | wins | gap closed |",
             "|" + "---|" * 15]
    for k, rs in sorted(groups.items(), key=lambda kv: tuple(map(str, kv[0]))):
        rs = sorted(rs, key=lambda r: r["seed"])
        mean = {c: statistics.mean(r[c] for r in rs) for c in ("teacher_errors", "baseline",
                                                                "distilled")}
        gap = mean["baseline"] - mean["teacher_errors"]
        closed = (mean["baseline"] - mean["distilled"]) / gap if gap > 0 else float("nan")

        def per(c, rs=rs):
            return " / ".join(str(r[c]) for r in rs)

        lines.append(
            f"| {k[0]} | `{k[1]}` {k[2]} ep | `{k[3]}` | {k[4]} | {k[5]} | {k[6]} | {k[7]} | "
            f"{k[8]:g} | {k[9]:g} | "
            f"{len(rs)} | {mean['teacher_errors']:.1f} | {per('baseline')} = "
            f"{mean['baseline']:.1f} | {per('distilled')} = {mean['distilled']:.1f} | "
            f"{sum(r['distilled'] < r['baseline'] for r in rs)}/{len(rs)} | "
            f"{100 * closed:.0f} % |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="mnist5k,animals10k")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--teacher_arch", default="cnn")
    parser.add_argument("--teacher_epochs", type=int, default=12)
    parser.add_argument("--teacher_augment", default="",
                        help="the teacher's policy (default: the job's rule, --augment without "
                             "mixup); rows and stored teachers are labelled '<arch>@<policy>'")
    parser.add_argument("--teacher_members", type=int, default=1,
                        help="K > 1: every seed's teacher is the ensemble of the stored "
                             "teachers of seeds 0..K-1 (row teacher 'Kx<arch>')")
    parser.add_argument("--teacher_file", default="",
                        help="a stored teacher (comma-separated: an ensemble) for every seed, "
                             "e.g. a teacher assistant written by keras-kd as student.keras")
    parser.add_argument("--teacher_label", default="",
                        help="the rows' teacher name with --teacher_file (default its path)")
    parser.add_argument("--students", default="mlp:hidden=100x100", help="';'-separated")
    parser.add_argument("--epochs", default="12")
    parser.add_argument("--schedules", default="cosine")
    parser.add_argument("--augment", default="jitter", help="';'-separated")
    parser.add_argument("--losses", default="kl", help="distillation losses, ','-separated")
    parser.add_argument("--configs", default="3,0.7", help="T,alpha pairs, ';'-separated")
    parser.add_argument("--out", required=True)
    parser.add_argument("--summary", action="store_true")
    args = parser.parse_args()
    out = os.path.join(args.out, "payoff.jsonl")
    if args.summary:
        print(summary(out))
        return
    args.students = args.students.split(";")
    args.epochs = [int(e) for e in args.epochs.split(",")]
    args.schedules = args.schedules.split(",")
    args.augment = args.augment.split(";")
    args.losses = args.losses.split(",")
    args.configs = [tuple(float(v) for v in c.split(",")) for c in args.configs.split(";")]
    os.makedirs(args.out, exist_ok=True)
    for dataset in args.datasets.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            _measure(args, dataset, seed, out, _done(out))
    print(summary(out))


if __name__ == "__main__":
    main()
