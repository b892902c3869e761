"""keras_kd insists on Keras's TensorFlow backend, with a clear error."""

import os
import subprocess
import sys


def _import_with(env_backend):
    env = dict(os.environ)
    env["KERAS_BACKEND"] = env_backend
    return subprocess.run(
        [sys.executable, "-c", "import keras_kd, keras; print(keras.backend.backend())"],
        capture_output=True, text=True, env=env, timeout=120,
    )


def test_a_forced_other_backend_is_refused_with_the_fix():
    result = _import_with("jax")
    assert result.returncode != 0
    assert "BackendError" in result.stderr
    assert "KERAS_BACKEND='jax'" in result.stderr
    assert "set KERAS_BACKEND=tensorflow" in result.stderr


def test_unset_backend_becomes_tensorflow():
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    result = subprocess.run(
        [sys.executable, "-c", "import keras_kd, keras; print(keras.backend.backend())"],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "tensorflow"
