"""Human-readable output of a run: the console table and ``report.md``.

Pure formatting of the results dict that :func:`keras_kd.job.run` also
writes to ``metrics.json`` (and, for sweeps, of :func:`keras_kd.sweep.run`'s
``sweep.json``: ``sweep.md`` and the PNG plots, returned as bytes); knows
nothing of training.
"""

__all__ = ["table", "markdown", "verdict", "repeats", "sweep_table", "sweep_markdown",
           "accuracy_vs_temperature_png", "best_curves_png"]

_HEADER = ("model", "params", "val accuracy", "val errors")


def _cells(row):
    return (
        row["model"],
        f"{row['params']:,}",
        f"{100.0 * row['accuracy']:.2f}%",
        f"{row['errors']} / {row['examples']}",
    )


def table(rows):
    """A fixed-width text table of model, parameters, accuracy and errors."""
    lines = [_HEADER] + [_cells(r) for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(_HEADER))]
    fmt = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    out = [fmt.format(*lines[0]), "  ".join("-" * w for w in widths)]
    out += [fmt.format(*line) for line in lines[1:]]
    return "\n".join(out)


def _md_table(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def _tflite_cells(t):
    if "error" in t:  # the file did not run in LiteRT (e.g. a degenerate int8 scale)
        return (t["quantization"], "—", "—", "does not run", "—", "—")
    if "agreement" not in t:  # Flex ops: LiteRT here cannot run the file
        return (t["quantization"], f"{t['size_bytes'] / 1024:.1f} KiB", "—", "not verified",
                "—", "—")
    return (
        t["quantization"],
        f"{t['size_bytes'] / 1024:.1f} KiB",
        f"{100 * t['accuracy']:.2f}%",
        f"{100 * t['agreement']:.2f}%",
        f"{t['max_abs_diff']:.2e}",
        f"{t['latency_ms_median']:.3f} ms",
    )


def _tflite_section(tfl, ds):
    """The export check: one row per quantization mode tried, the chosen one last."""
    if "error" in tfl:
        return ["## Exported student (`student.tflite`)", "", "Not written: " + tfl["error"], ""]
    header = ("quantization", "size", "accuracy", "agreement with Keras",
              "max abs Δ output", "latency (median, 1 thread)")
    rows = [_tflite_cells(t) for t in tfl.get("candidates") or [tfl]]
    kind = tfl.get("output_kind", "logits")
    dtype = tfl.get("input_dtype", "float32")
    pixels = ("float32 raw pixel values 0–255" if dtype == "float32" else
              f"{dtype} codes of raw pixel values 0–255 (scale and zero point in `student.json`)")
    lines = [
        f"## Exported student (`student.tflite`, {tfl['quantization']})",
        "",
        _md_table(header, rows),
        "",
    ]
    if len(rows) > 1:
        lines += [
            "`auto` tried the modes in this order and kept the first that runs in "
            "LiteRT and whose top-1 agreement with the Keras student reached the bar "
            "(the last row).",
            "",
        ]
    lines += [
        f"Checked with the LiteRT interpreter on {tfl.get('examples', '?')} validation "
        f"images, one at a time. Input: {pixels}, shape "
        f"[1, {', '.join(str(d) for d in ds['input_shape'])}]; output: "
        f"{ds['num_classes']} {kind}; class names in `student.labels.txt`; "
        "shapes, dtypes and quantization parameters in `student.json`.",
        "",
    ]
    return lines


_TRY = ("try `--patient` (a longer schedule of pure function matching on mixed views), "
        "`--tune=temperature,alpha`, `keras-kd sweep` (temperature, alpha, loss), the DIST loss "
        "for a teacher far larger than the student (`--distillation_loss=dist --temperature=4 "
        "--alpha=0.6667`) or a larger student")


def teacher_errors(rows):
    """Validation errors of the teacher the students learned from (the ensemble's row when
    there is one: it comes last of the teachers), or None without a teacher row."""
    teachers = [r for r in rows if r["model"] not in ("baseline", "distilled")]
    return teachers[-1]["errors"] if teachers else None


def _weak_teacher(teacher, baseline):
    """A sentence when the teacher is no more accurate than the student without it ("")."""
    if teacher is None or teacher < baseline:
        return ""
    shown = f"{baseline:g}" if float(baseline).is_integer() else f"{baseline:.1f}"
    return (f" The teacher ({teacher} errors) is no more accurate than the baseline student "
            f"({shown}): the distilled student learns the teacher's function, mistakes "
            "included, so it cannot gain here. Fix: a stronger teacher (more "
            "`--teacher_epochs`, a larger `--teacher_arch`, or one trained elsewhere with "
            "`--teacher`).")


def verdict(rows):
    """One sentence on distilled vs baseline errors; says plainly when distillation hurt,
    and why when the teacher is no better than the baseline."""
    by_name = {r["model"]: r for r in rows}
    base, kd = by_name["baseline"]["errors"], by_name["distilled"]["errors"]
    if kd <= base:
        return f"Distillation removed {base - kd} of the baseline's {base} errors."
    return (f"The distilled student is worse than its baseline: {kd - base} more validation "
            f"errors ({kd} vs {base})." + (_weak_teacher(teacher_errors(rows), base) or
            f" The teacher did not help with these settings; {_TRY}, and `--repeats=3` to "
            "see the spread."))


def repeats(first_seed, scores, teacher=None):
    """The pairs of a ``--repeats`` run: per-seed errors, mean ± spread, and a verdict.

    ``scores``: ``[(baseline scores, distilled scores)]`` per pair (``diagnostics.evaluate``'s
    dicts), pair ``i`` seeded ``first_seed + i``; ``teacher``: the teacher's validation
    errors, if known. The spread is the sample standard deviation over the pairs; the gain
    (baseline errors − distilled errors, per pair) *exceeds its spread* when its mean is
    larger than its standard deviation, and the teacher *hurts* when the mean loss is
    (``outcome``: ``"gain"``, ``"loss"`` or ``"noise"``).
    """
    import statistics

    base = [b["errors"] for b, _ in scores]
    kd = [d["errors"] for _, d in scores]
    gain = [b - d for b, d in zip(base, kd)]
    stats = {name: {"mean": statistics.mean(v), "sd": statistics.stdev(v)}
             for name, v in (("baseline", base), ("distilled", kd), ("gain", gain))}
    n, wins = len(scores), sum(g > 0 for g in gain)
    clear = stats["gain"]["mean"] > stats["gain"]["sd"]

    def ms(name):
        return f"{stats[name]['mean']:.1f} ± {stats[name]['sd']:.1f}"

    summary = (f"Over {n} pairs (seeds {first_seed}-{first_seed + n - 1}): baseline {ms('baseline')}"
               f", distilled {ms('distilled')} validation errors; gain {ms('gain')} errors, "
               f"{wins} of {n} pairs won. ")
    hurts = -stats["gain"]["mean"] > stats["gain"]["sd"]
    if clear:
        summary += "The gain exceeds its spread."
    elif hurts:
        summary += ("The teacher made the student worse, by more than the spread."
                    + (_weak_teacher(teacher, stats["baseline"]["mean"])
                       or f" With these settings it hurts; {_TRY}."))
    else:
        summary += ("The gain does not exceed its spread: with these settings the teacher's "
                    "effect is within the run-to-run noise; try `keras-kd sweep` or a longer "
                    "schedule.")
    return {"seeds": list(range(first_seed, first_seed + n)), "baseline_errors": base,
            "distilled_errors": kd, "gain": gain, **{f"{k}_stats": v for k, v in stats.items()},
            "wins": wins, "gain_exceeds_spread": clear,
            "outcome": "gain" if clear else "loss" if hurts else "noise", "summary": summary}


def _repeats_section(rep):
    if not rep:
        return []
    rows = [(seed, b, d, g) for seed, b, d, g in zip(rep["seeds"], rep["baseline_errors"],
                                                      rep["distilled_errors"], rep["gain"])]
    return ["## Repeats", "", "The baseline/distilled pair trained once per seed (one "
            "teacher); the table above shows the first pair, whose student is exported.", "",
            _md_table(("seed", "baseline errors", "distilled errors", "gain"), rows), "",
            rep["summary"], ""]


def _tuning_section(tuning):
    if not tuning:
        return []
    names = tuning["tuned"]
    rows = [(*(f"{t[n]:g}" for n in names), f"{100 * t['accuracy']:.2f}%", f"{t['loss']:.4f}")
            for t in tuning["trials"]]
    chosen = ", ".join(f"{n} = {v:g}" for n, v in tuning["chosen"].items())
    return ["## Tuning", "", f"`--tune` chose {chosen}: {len(rows)} distillations of "
            f"{tuning['epochs']} epochs on {tuning['trained_on']} training images, scored on "
            f"the other {tuning['held_out']} (never on the validation split); "
            f"{tuning['seconds']:.0f} s.", "",
            _md_table((*names, "held-out accuracy", "held-out loss"), rows), ""]


def _teacher_section(diagnosis):
    """The teacher diagnostics of the run (``keras_kd.diagnostics.diagnose``) and their warnings."""
    if not diagnosis:
        return []
    header = ("teacher", "preprocessing", "val accuracy", "ECE", "top-1 probability at T",
              "entropy at T", "logit std")
    rows = [(d["model"], f"`{d.get('preprocessing', '—')}`", f"{100 * d['accuracy']:.2f}%",
             f"{d['ece']:.3f}", f"{d['top1_probability']:.3f}",
             f"{d['entropy']:.2f} of {d['max_entropy']:.2f} nats", f"{d['logit_std']:.3g}")
            for d in diagnosis["teachers"]]
    t = diagnosis["teachers"][-1]["temperature"]
    parts = ["## Teacher", "", f"Diagnosed on the validation split before any student "
             f"trained; soft targets at T = {t:g}. Chance is "
             f"{100 * diagnosis['teachers'][-1]['chance']:.2f}%.", "", _md_table(header, rows), ""]
    parts += [f"- **Warning:** {w}" for w in diagnosis.get("warnings") or []]
    return parts + ([""] if diagnosis.get("warnings") else [])


def markdown(results):
    """``report.md``: the comparison table, the export check and the flags used."""
    ds = results["dataset"]
    rows = results["models"]
    by_name = {r["model"]: r for r in rows}
    parts = [
        "# keras_kd run",
        "",
        f"Dataset `{ds['name']}`: {ds['num_train']} training and "
        f"{ds['num_validation']} validation images of shape "
        f"{tuple(ds['input_shape'])}, {ds['num_classes']} classes. All "
        "accuracies are on the validation split.",
        "",
        _md_table(_HEADER, [_cells(r) for r in rows]),
        "",
    ]
    if "baseline" in by_name and "distilled" in by_name:
        parts += [
            "*baseline*: the student architecture trained on the labels alone; "
            "*distilled*: the same architecture, from the same initial weights, "
            "trained by the Distiller with the same data, augmentation and "
            "schedule. " + verdict(rows),
            "",
        ]
    parts += _tuning_section(results.get("tuning"))
    parts += _repeats_section(results.get("repeats"))
    parts += _teacher_section(results.get("teacher_diagnostics"))
    tfl = results.get("tflite")
    if tfl:
        parts += _tflite_section(tfl, ds)
    timings = results.get("timings") or {}
    if timings:
        parts += [
            "## Time",
            "",
            ", ".join(f"{k[:-2]} {v:.1f} s" for k, v in timings.items()),
            "",
        ]
    flags = results.get("flags") or results.get("config") or {}
    parts += ["## Flags used", "", "```"]
    parts += [f"--{k}={v}" for k, v in sorted(flags.items()) if v is not None]
    parts += ["```", ""]
    return "\n".join(parts)


# --------------------------------------------------------------------------
# Sweeps (keras_kd.sweep): the ranked table, sweep.md and the plots
# --------------------------------------------------------------------------

_SWEEP_HEADER = ("rank", "temperature", "alpha", "loss", "student arch", "val accuracy",
                 "val loss", "teacher agreement", "epochs", "time")


def _seconds(s):
    return f"{s:.1f} s" if s < 90 else f"{int(s // 60)} min {round(s % 60):d} s"


def _sweep_cells(row):
    return (
        str(row["rank"]),
        f"{row['temperature']:g}",
        f"{row['alpha']:g}",
        row["distillation_loss"],
        row["student_arch"],
        f"{100 * row['val_accuracy']:.2f}%",
        f"{row['val_loss']:.4f}",
        f"{100 * row['teacher_agreement']:.2f}%",
        str(row["epochs"]),
        _seconds(row["time_s"]),
    )


def sweep_table(rows):
    """A fixed-width text table of sweep rows (already ranked)."""
    lines = [_SWEEP_HEADER] + [_sweep_cells(r) for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(_SWEEP_HEADER))]
    left = {3, 4}
    fmt = "  ".join(f"{{:<{w}}}" if i in left else f"{{:>{w}}}" for i, w in enumerate(widths))
    out = [fmt.format(*lines[0]), "  ".join("-" * w for w in widths)]
    out += [fmt.format(*line) for line in lines[1:]]
    return "\n".join(out)


def _plural(n, word):
    if n == 1:
        return f"{n} {word}"
    return f"{n} {word}{'es' if word.endswith('s') else 's'}"


def sweep_markdown(results):
    """``sweep.md``: the trials ranked by validation accuracy, references, best, plots."""
    ds, rows, grid = results["dataset"], results["rows"], results["grid"]
    settings = results["settings"]
    teacher = results["teacher"]
    cache = results.get("teacher_cache") or {}
    best = results["best"]
    how = ("the teacher's logits on the training split were computed once "
           "(`teacher_cache/`) and every trial trained from them"
           if cache.get("used") else "the teacher ran online, on every training batch")
    names = {"temperature": "temperature", "alpha": "alpha", "distillation_loss": "loss",
             "student_arch": "student architecture"}
    axes = " × ".join(
        f"{_plural(len(v), names[k])} ({', '.join(f'{x:g}' if isinstance(x, float) else x for x in v)})"
        for k, v in grid.items()
    )
    parts = [
        "# keras_kd sweep",
        "",
        f"Dataset `{ds['name']}`: {ds['num_train']} training and {ds['num_validation']} "
        f"validation images of shape {tuple(ds['input_shape'])}, {ds['num_classes']} classes. "
        f"Every student: {_plural(settings['epochs'], 'epoch')}, {settings['optimizer']} "
        f"(learning rate {settings['learning_rate']:g}), batch {settings['batch_size']}, "
        f"augmentation `{settings['augment']}`, seed {settings['seed']}, the same initial "
        f"weights per architecture; {how}.",
        "",
        f"Grid: {axes} = {_plural(len(rows), 'trial')}, sorted by validation accuracy "
        "(ties: lower val loss first). *val loss*: the student's cross-entropy on the "
        "validation split; *teacher agreement*: the fraction of validation images on which "
        "the student's top-1 class is the teacher's.",
        "",
        _md_table(_SWEEP_HEADER, [_sweep_cells(r) for r in rows]),
        "",
        "## For reference",
        "",
    ]
    what = (f"`{teacher['arch']}`, trained here ({_plural(settings['teacher_epochs'], 'epoch')})"
            if teacher["source"] == "trained" else f"`{teacher['file']}`")
    ref = [("teacher", what, f"{teacher['params']:,}", f"{100 * teacher['val_accuracy']:.2f}%",
            f"{teacher['val_loss']:.4f}")]
    for arch, b in (results.get("baselines") or {}).items():
        ref.append(("baseline", f"`{arch}` on the labels alone (same initial weights and "
                    "schedule)", f"{b['params']:,}", f"{100 * b['val_accuracy']:.2f}%",
                    f"{b['val_loss']:.4f}"))
    parts += [_md_table(("model", "what", "params", "val accuracy", "val loss"), ref), ""]
    parts += [
        "## Best",
        "",
        f"Rank 1: temperature {best['temperature']:g}, alpha {best['alpha']:g}, loss "
        f"`{best['distillation_loss']}`, student `{best['student_arch']}`: validation "
        f"accuracy {100 * best['val_accuracy']:.2f}% ({best['val_errors']} errors of "
        f"{best['val_examples']}). Its student is `best_student.keras`; "
        "`keras-kd --flagfile=best.flags` runs the main job with its configuration "
        "and this teacher.",
        "",
        "![validation accuracy against temperature](accuracy_vs_temperature.png)",
        "",
        "![training curves of the best trial](best_curves.png)",
        "",
    ]
    t = results.get("timings") or {}
    if t:
        parts += [
            "## Time",
            "",
            f"teacher {_seconds(t['teacher_s'])}, search {_seconds(t['search_s'])} "
            f"({_plural(t['trials_trained_now'], 'trial')} trained in the last run), "
            f"total {_seconds(t['total_s'])}.",
            "",
        ]
    flags = results.get("flags") or {}
    if flags:
        parts += ["## Flags used", "", "```"]
        parts += [f"--{k}={','.join(map(str, v)) if isinstance(v, list) else v}"
                  for k, v in sorted(flags.items()) if v is not None]
        parts += ["```", ""]
    return "\n".join(parts)


def _png(fig):
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _figure(width, height):
    """A Matplotlib figure drawn by the Agg canvas, without pyplot's global state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def accuracy_vs_temperature_png(results):
    """PNG: validation accuracy against T, one line per alpha, a panel per (loss, student).

    Panels: a row per student architecture, a column per loss, one y scale.

    The teacher's accuracy is a dotted line, the panel's baseline (student
    on labels alone) a dashed one.
    """
    rows, grid = results["rows"], results["grid"]
    panels = [(loss, arch) for arch in grid["student_arch"] for loss in grid["distillation_loss"]]
    # a row per student architecture, a column per loss (wrapped if many), one y scale
    cols = len(grid["distillation_loss"]) if len(grid["distillation_loss"]) <= 4 else 3
    nrows = -(-len(panels) // cols)
    fig = _figure(4.6 * cols, 3.6 * nrows)
    axes = fig.subplots(nrows, cols, squeeze=False, sharey=True).ravel()
    temps = sorted(grid["temperature"])
    log_x = temps[0] > 0 and temps[-1] / temps[0] >= 4
    baselines = results.get("baselines") or {}
    for ax, (loss, arch) in zip(axes, panels):
        for alpha in grid["alpha"]:
            points = sorted((r["temperature"], 100 * r["val_accuracy"]) for r in rows
                            if r["alpha"] == alpha and r["distillation_loss"] == loss
                            and r["student_arch"] == arch)
            ax.plot(*zip(*points), marker="o", label=f"alpha {alpha:g}")
        ax.axhline(100 * results["teacher"]["val_accuracy"], color="black", linestyle=":",
                   label="teacher")
        if arch in baselines:
            ax.axhline(100 * baselines[arch]["val_accuracy"], color="gray", linestyle="--",
                       label="baseline (labels only)")
        if log_x:
            ax.set_xscale("log", base=2)
        ax.set_xticks(temps, [f"{t:g}" for t in temps])
        ax.minorticks_off()
        ax.set_title(f"{loss} · {arch}", fontsize=10)
        ax.set_xlabel("temperature T")
        ax.set_ylabel("validation accuracy (%)")
        ax.yaxis.set_tick_params(labelleft=True)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    return _png(fig)


def best_curves_png(results):
    """PNG: the best trial's loss and accuracy per epoch, training and validation."""
    best = next(r for r in results["rows"] if r["rank"] == 1)
    h = best["history"]
    fig = _figure(10, 3.8)
    ax_loss, ax_acc = fig.subplots(1, 2)
    for ax, series in (
        (ax_loss, (("student_loss", "train cross-entropy", "-"),
                   ("val_loss", "validation cross-entropy", "-"),
                   ("loss", "train total (distillation objective)", "--"))),
        (ax_acc, (("accuracy", "train accuracy", "-"),
                  ("val_accuracy", "validation accuracy", "-"),
                  ("teacher_agreement", "train agreement with the teacher", "--"))),
    ):
        for key, label, style in series:
            if key in h:
                ax.plot(range(1, len(h[key]) + 1), h[key], style, marker="o", label=label)
        epochs = len(h.get("val_accuracy") or h.get("loss") or [1])
        ax.set_xticks(range(1, epochs + 1, max(1, -(-epochs // 12))))
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax_loss.set_ylabel("loss")
    ax_acc.set_ylabel("fraction")
    fig.suptitle(f"best trial: T={best['temperature']:g}, alpha={best['alpha']:g}, "
                 f"{best['distillation_loss']}, {best['student_arch']}", fontsize=10)
    return _png(fig)
