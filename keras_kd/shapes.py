"""What a model takes and gives, read from its static shapes, and whether two models agree.

:func:`static_io` reads a model's input shapes and number of classes;
:func:`check_same_io` checks that a teacher and a student can read one batch
and output as many logits; :func:`resizable` is the rule that image models may
differ in height and width, never in channels (also used to check a model
against the data, :func:`keras_kd.teachers.check_fits`).
"""

__all__ = ["static_io", "shapes_compatible", "resizable", "check_same_io"]


def static_io(model):
    """``(input shapes without batch, number of classes)``; either is None
    when the model does not know it statically (e.g. a subclassed model)."""
    try:
        inputs = [tuple(t.shape[1:]) for t in model.inputs]
    except (AttributeError, TypeError, ValueError):
        inputs = None
    try:
        out = model.outputs
        classes = out[0].shape[-1] if out and len(out) == 1 else None
    except (AttributeError, TypeError, ValueError):
        classes = None
    return inputs, classes


def shapes_compatible(a, b):
    """True when two lists of shapes agree wherever both dimensions are known."""
    return len(a) == len(b) and all(
        len(sa) == len(sb) and all(x is None or y is None or x == y for x, y in zip(sa, sb))
        for sa, sb in zip(a, b)
    )


def resizable(a, b):
    """The rule "image models may differ in height and width, never in channels", in
    one place: True when two input shapes without the batch axis are both images
    ``(H, W, C)`` with the same channels (where known), so resizing the batch to each
    model's own size (:func:`keras_kd.preprocessing.at_own_size`) serves both. Used for a teacher against a
    student (:func:`check_same_io`) and for a model against the data
    (:func:`keras_kd.teachers.check_fits`)."""
    return len(a) == len(b) == 3 and shapes_compatible([a[2:]], [b[2:]])


def _show(shapes):
    return shapes if len(shapes) > 1 else shapes[0]


def check_same_io(teacher, student, roles=("teacher", "student")):
    """The number of classes (None if unknown) of two models that must read the
    same batch and output as many logits (at least 2); else a ValueError.

    Image models (one input ``[B, H, W, C]``) may differ in height and width:
    each gets the batch at its own size (:func:`keras_kd.preprocessing.at_own_size`,
    :func:`keras_kd.preprocessing.resize_images`). Channels, ranks and other inputs must agree.
    ``roles`` name the two models in the errors.
    """
    a, b = roles
    t_in, t_classes = static_io(teacher)
    s_in, s_classes = static_io(student)
    if (t_in is not None and s_in is not None and not shapes_compatible(t_in, s_in)
            and not (len(t_in) == len(s_in) == 1 and resizable(t_in[0], s_in[0]))):
        if len(t_in) == len(s_in) == 1 and len(t_in[0]) == len(s_in[0]) == 3:
            raise ValueError(
                f"{a} and {b} take images with different channels: {a} {t_in[0]}, {b} "
                f"{s_in[0]}. Height and width may differ (each model gets the batch resized "
                "to its own size), the channels cannot. Fix: build the models for the same "
                "number of channels (e.g. grayscale vs RGB), or convert the images.")
        raise ValueError(
            f"{a} and {b} take different inputs: {a} {_show(t_in)}, {b} {_show(s_in)}. Both "
            "must read the same batch (images may differ in height and width only). Fix: "
            f"build the {b} with the {a}'s input shape.")
    if t_classes is not None and s_classes is not None and t_classes != s_classes:
        raise ValueError(
            f"{a} and {b} disagree on the number of classes: the {a} outputs "
            f"{t_classes} logits, the {b} {s_classes}. Fix: give the {b} a final "
            f"Dense(num_classes) matching the {a}'s.")
    classes = t_classes if t_classes is not None else s_classes
    if classes is not None and classes < 2:
        raise ValueError(
            f"the models output {classes} logit(s); distillation needs a softmax over at least "
            "2 classes. For a binary task, output 2 logits.")
    return classes


# ---------------------------------------------------------------------------
