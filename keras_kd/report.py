"""Human-readable output of a run: the console table and ``report.md``.

Pure formatting of the results dict that :func:`keras_kd.job.run` also
writes to ``metrics.json``; knows nothing of training.
"""

__all__ = ["table", "markdown"]

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
        gained = by_name["baseline"]["errors"] - by_name["distilled"]["errors"]
        verdict = (
            f"Distillation removed {gained} of the baseline's "
            f"{by_name['baseline']['errors']} errors."
            if gained >= 0
            else f"Distillation added {-gained} errors to the baseline's "
            f"{by_name['baseline']['errors']}."
        )
        parts += [
            "*baseline*: the student architecture trained on the labels alone; "
            "*distilled*: the same architecture, from the same initial weights, "
            "trained by the Distiller with the same data, augmentation and "
            "schedule. " + verdict,
            "",
        ]
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
