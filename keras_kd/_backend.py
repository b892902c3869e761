"""Makes sure Keras runs on its TensorFlow backend before anything imports it.

keras_kd's training step is written with ``tf.GradientTape`` and its data
pipelines with ``tf.data``, so the JAX, PyTorch and NumPy backends of Keras 3
cannot run it. This module is imported first by ``keras_kd/__init__.py``.
"""

import os
import sys


class BackendError(ImportError):
    """Keras was configured with a backend other than TensorFlow."""


def ensure_tensorflow_backend():
    """Selects Keras's TensorFlow backend, or fails with a clear error.

    If ``KERAS_BACKEND`` is unset and Keras is not imported yet, it is set to
    ``"tensorflow"`` (this also overrides a ``~/.keras/keras.json`` that names
    another backend). If the user forced another backend, the import fails
    with a :class:`BackendError` that names the backend and the fix.
    """
    requested = os.environ.get("KERAS_BACKEND")
    if "keras" not in sys.modules and not requested:
        os.environ["KERAS_BACKEND"] = "tensorflow"
    elif requested and requested != "tensorflow":
        raise BackendError(
            f"keras_kd needs Keras's TensorFlow backend, but KERAS_BACKEND="
            f"{requested!r}. Fix: set KERAS_BACKEND=tensorflow (or unset it) "
            "before Python imports keras or keras_kd."
        )
    import keras  # deliberately after KERAS_BACKEND is set above

    backend = keras.backend.backend()
    if backend != "tensorflow":
        raise BackendError(
            f"keras_kd needs Keras's TensorFlow backend, but Keras is already "
            f"running on {backend!r} (from KERAS_BACKEND or ~/.keras/keras.json, "
            "read when keras was first imported). Fix: start a new Python "
            "process with KERAS_BACKEND=tensorflow set before importing keras."
        )
