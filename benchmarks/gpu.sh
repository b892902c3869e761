#!/usr/bin/env bash
# The GPU rows of BUILD_NOTES.md, as one short script for a lent GPU machine
# (the `device` tool): at most 9 minutes (each step has its own timeout). Prints every table; the
# RESULT lines are JSON. Run from the repository root in a venv with the
# package installed:  bash benchmarks/gpu.sh 2>&1 | tee gpu.txt
set -uo pipefail
py=${PYTHON:-python}
nvidia-smi --query-gpu=name,memory.total --format=csv || true
"$py" -c "import tensorflow as tf; print('GPUs:', tf.config.list_physical_devices('GPU'))"

echo "== issue 7 a-c, e: the issue's models (a 64-128-256 CNN teacher, 16-32-64 student), batch 64"
timeout 180 "$py" -m benchmarks.step_cost --steps=64 --repeats=5

echo "== issue 7 d: a float16 teacher (tensor cores)"
timeout 150 "$py" -m benchmarks.teacher_dtype --dtype=float16 --repeats=5

echo "== issue 3/7: ResNet-50 -> MobileNetV2 at 224x224, float32 / mixed_float16 / mixed_bfloat16"
timeout 200 "$py" -m benchmarks.scaleout --devices=gpu --replicas=1 \
    --teacher=resnet50 --student=mobilenet_v2 --shape=224,224,3 \
    --batch_size=128 --steps=20 --repeats=3 \
    --policies=float32,mixed_float16,mixed_bfloat16
