"""Per-image FLOPs and parameters of a teacher and a student, and CPU throughput.

The inputs of BUILD_NOTES.md's "scaling on paper": TensorFlow's profiler
counts the floating-point operations of one forward pass (multiply and add
counted separately) of each model, built by ``keras_kd.models.build`` with
``weights=None``; a training step costs about 3× its forward pass (forward,
backward to activations, backward to weights). ``--measure`` also times, on
this machine, the teacher's inference and the student's training steps.

    python -m benchmarks.flops                                  # resnet152 -> mobilenet_v2, 224x224, 1000 classes
    python -m benchmarks.flops --teacher=resnet50 --measure --batch_size=8
"""

import argparse
import json

from benchmarks._timing import median_seconds


def forward_flops(model, shape):
    """Float operations of one forward pass on one image (TF profiler)."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2_as_graph,
    )

    fn = tf.function(lambda x: model(x, training=False))
    concrete = fn.get_concrete_function(tf.TensorSpec([1, *shape], tf.float32))
    frozen, _ = convert_variables_to_constants_v2_as_graph(concrete)
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    info = tf.compat.v1.profiler.profile(
        graph=frozen.graph, run_meta=tf.compat.v1.RunMetadata(), cmd="op", options=options)
    return int(info.total_float_ops)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="resnet152")
    parser.add_argument("--student", default="mobilenet_v2")
    parser.add_argument("--shape", default="224,224,3")
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--measure", action="store_true")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import keras
    import numpy as np

    from keras_kd import models

    shape = tuple(int(s) for s in args.shape.split(","))
    out = {}
    for role, spec in (("teacher", args.teacher), ("student", args.student)):
        model = models.build(spec, shape, args.classes, name=role)
        flops = forward_flops(model, shape)
        row = {"spec": spec, "params": models.count_params(model),
               "forward_gflops": flops / 1e9, "train_step_gflops": 3 * flops / 1e9}
        if args.measure:
            x = np.random.default_rng(0).uniform(0, 255, (args.batch_size, *shape)).astype("float32")
            y = np.zeros(args.batch_size, "int32")
            if role == "teacher":
                sec = median_seconds(lambda m=model, x=x: m.predict_on_batch(x), args.repeats)
            else:
                model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
                sec = median_seconds(lambda m=model, x=x, y=y: m.train_on_batch(x, y), args.repeats)
            row["images_per_s_cpu"] = args.batch_size / sec
            work = row["forward_gflops"] if role == "teacher" else row["train_step_gflops"]
            row["achieved_gflop_per_s_cpu"] = work * args.batch_size / sec
        out[role] = row
        del model
        keras.backend.clear_session()
    for role, row in out.items():
        print(f"{role:<8} " + "  ".join(
            f"{k}={v:,.3f}" if isinstance(v, float) else f"{k}={v:,}" if isinstance(v, int)
            else f"{k}={v}" for k, v in row.items()))
    print("RESULT" + json.dumps(out))


if __name__ == "__main__":
    main()
