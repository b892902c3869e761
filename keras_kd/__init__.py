"""keras_kd: knowledge distillation for Keras 3 on TensorFlow.

    import keras_kd
    distiller = keras_kd.Distiller(teacher, student, temperature=4.0, alpha=0.9)
    distiller.compile(optimizer="adam", metrics=["accuracy"])
    distiller.fit(train_ds, validation_data=val_ds, epochs=5)
    distiller.student.save("student.keras")
"""

from keras_kd import _backend, _console

_console.quiet_startup()  # the keras-kd command: before TensorFlow is imported
_backend.ensure_tensorflow_backend()

from keras_kd import features, losses  # noqa: E402
from keras_kd._version import __version__  # noqa: E402
from keras_kd.diagnostics import diagnose  # noqa: E402
from keras_kd.distiller import Distiller, build_distiller  # noqa: E402

__all__ = ["Distiller", "build_distiller", "diagnose", "features", "losses", "__version__"]
