"""Training that is never silently empty, on any strategy: ``fit`` and a multi-worker loop.

    from keras_kd import fitting
    history = fitting.fit(model, dataset, epochs=3)   # model.fit, or fit_loop

:func:`fit` is what the job calls for every model it trains: ``model.fit``
(or, under ``MultiWorkerMirroredStrategy``, where Keras 3.15's own ``fit``
fails, :func:`fit_loop`), with an :class:`~keras_kd.checks.EmptyDataError`
naming the data when no batch ran (:func:`fit_checked`). Choosing the
strategy is :mod:`keras_kd.distribute`'s.
"""

import keras
import tensorflow as tf

from keras_kd import checks, distribute, views
from keras_kd.checks import EmptyDataError, check_not_empty

__all__ = ["fit_checked", "fit", "fit_loop", "LOG_EVERY"]


class _Progress(keras.callbacks.Callback):
    """Counts the epochs begun and the training batches run."""

    async_safe = True  # (Keras keeps its asynchronous callback dispatch)

    def __init__(self):
        super().__init__()
        self.epochs = self.batches = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs += 1

    def on_train_batch_end(self, batch, logs=None):
        self.batches += 1


def fit_checked(run, data, kwargs, role="the training data"):
    """``run(**kwargs)`` (a ``fit`` of ``data``), never silently empty.

    :func:`keras_kd.checks.check_not_empty` first; afterwards an EmptyDataError
    when an epoch began but no training batch ran (data of unknown size that turned out
    empty, where Keras only warns and returns an empty history). A run resumed
    past its last epoch begins none and passes.
    """
    check_not_empty(data, role)
    progress = _Progress()
    callbacks = kwargs.get("callbacks")
    if isinstance(callbacks, keras.callbacks.CallbackList):
        callbacks.callbacks.append(progress)
    else:
        kwargs = {**kwargs, "callbacks": [*(callbacks or []), progress]}
    history = run(**kwargs)
    if progress.epochs and not progress.batches:
        raise EmptyDataError(f"{role} yielded no batch ({checks.describe_data(data)}): fit "
                             f"trained on nothing. {checks.EMPTY_FIX}")
    return history


def fit(model, dataset, role="the training data", **kwargs):
    """``model.fit(dataset, **kwargs)``, or :func:`fit_loop` under multi-worker;
    an EmptyDataError naming ``role`` when ``dataset`` holds no batch
    (:func:`fit_checked`).

    A model whose class sets ``fits_multi_worker = True`` (the Distiller) runs
    its own ``fit`` under multi-worker too: that ``fit`` calls :func:`fit_loop`
    itself, inside what it adds around every run (its batch checks' errors, its
    teacher refresh), which calling :func:`fit_loop` from here would skip."""
    if distribute.is_multi_worker(model.distribute_strategy) and not getattr(
            model, "fits_multi_worker", False):
        return fit_checked(lambda **kw: fit_loop(model, dataset, **kw), dataset, kwargs, role)
    return fit_checked(lambda **kw: model.fit(dataset, **kw), dataset, kwargs, role)


#: :func:`fit_loop` reads the (cross-worker) metrics for its per-batch
#: callbacks every this many steps, and always at the end of an epoch.
LOG_EVERY = 20


def _read_logs(model):
    return {k: float(v) for k, v in model.get_metrics_result().items()}


def fit_loop(model, dataset, *, epochs=1, callbacks=None, verbose=1,
             validation_data=None, shuffle=None, initial_epoch=0, steps_per_epoch=None):
    """A ``fit`` for strategies where Keras's own fails (multi-worker).

    Keras 3.15's ``Model.fit`` raises under ``MultiWorkerMirroredStrategy``
    (keras-team/keras#20585: it converts ``PerReplica`` values to tensors).
    This loop runs ``strategy.run(model.train_step, ...)`` over the
    distributed ``dataset`` (a ``tf.data.Dataset`` of *global* batches, each
    worker reading its shard) and drives Keras callbacks as ``fit`` does
    (per-batch logs refreshed every :data:`LOG_EVERY` steps). Returns a
    ``History``. One Keras internal is used, :func:`keras_kd.views.build_for_fit`.
    """
    del shuffle  # a tf.data.Dataset carries its own shuffling
    if not isinstance(dataset, tf.data.Dataset):
        raise ValueError("under multi-worker training, pass a tf.data.Dataset of (x, y) global "
                         "batches (keras_kd.data.load returns one).")
    strategy = model.distribute_strategy
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    dataset = dataset.with_options(options)
    try:
        first = next(iter(dataset))
    except StopIteration:
        raise EmptyDataError(f"the training data yielded no batch "
                             f"({checks.describe_data(dataset)}): fit would train on nothing. "
                             f"{checks.EMPTY_FIX}") from None
    with strategy.scope():
        views.build_for_fit(model, first)
    distributed = strategy.experimental_distribute_dataset(dataset)
    val = None
    if validation_data is not None:
        val = strategy.experimental_distribute_dataset(validation_data.with_options(options))

    @tf.function
    def train_step(batch):
        return strategy.run(model.train_step, args=(batch,))

    @tf.function
    def test_step(batch):
        return strategy.run(model.test_step, args=(batch,))

    if not isinstance(callbacks, keras.callbacks.CallbackList):
        callbacks = keras.callbacks.CallbackList(
            callbacks, add_history=True, add_progbar=verbose != 0,
            verbose=verbose, epochs=epochs, steps=steps_per_epoch, model=model,
        )
    model.stop_training = False
    callbacks.on_train_begin()
    start = views.initial_epoch(model) or initial_epoch
    logs = {}
    # With steps_per_epoch, one iterator runs through every epoch (as Keras's fit does).
    iterator = iter(distributed) if steps_per_epoch else None
    for epoch in range(start, epochs):
        model.reset_metrics()
        callbacks.on_epoch_begin(epoch)
        batches = (next(iterator) for _ in range(steps_per_epoch)) if iterator else distributed
        for step, batch in enumerate(batches):
            callbacks.on_train_batch_begin(step)
            train_step(batch)
            # Reading the metrics all-reduces them across the workers and
            # waits for the step: every LOG_EVERY steps only (the same steps
            # on every worker), not in the hot loop.
            if step % LOG_EVERY == 0 or not logs:
                logs = _read_logs(model)
            callbacks.on_train_batch_end(step, logs)
            if model.stop_training:
                break
        epoch_logs = _read_logs(model)
        if val is not None:
            model.reset_metrics()
            for batch in val:
                test_step(batch)
            epoch_logs.update({f"val_{k}": v for k, v in _read_logs(model).items()})
        callbacks.on_epoch_end(epoch, epoch_logs)
        logs = epoch_logs  # what on_train_end gets: the last epoch's, as in fit
        if model.stop_training:
            break
    callbacks.on_train_end(logs)
    return model.history
