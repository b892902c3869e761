"""Choosing and entering a ``tf.distribute`` strategy; mixed precision; determinism.

    from keras_kd import distribute
    distribute.configure_cpu_devices(2)          # before TensorFlow starts
    strategy = distribute.get_strategy("mirrored")
    with strategy.scope():
        teacher, student = ..., ...              # build the models inside
        distiller = keras_kd.Distiller(teacher, student)
        distiller.compile(optimizer="adam")
    distiller.fit(dataset)                       # batches are *global* batches

(or ``keras_kd.build_distiller(strategy, teacher, student, ...)``).

Strategies by name: ``auto`` (``MirroredStrategy`` over the GPUs when more
than one is visible, over the logical CPU devices when
``configure_cpu_devices(N > 1)`` made several, else TensorFlow's default
no-op strategy); ``mirrored`` (over all GPUs, or all logical CPU devices if
there is no GPU); ``one_device`` (the first GPU, else the CPU);
``multi_worker`` (``MultiWorkerMirroredStrategy`` configured by the validated
``TF_CONFIG`` environment variable); ``tpu`` (``TPUStrategy`` on the TPU found
by ``TPUClusterResolver``).
"""

import contextlib
import json
import os
import sys

import keras
import numpy as np
import tensorflow as tf

from keras_kd import views

__all__ = [
    "STRATEGIES",
    "MIXED_PRECISION",
    "check_settings",
    "configure_cpu_devices",
    "get_strategy",
    "parse_tf_config",
    "mixed_precision",
    "resolve_jit_compile",
    "in_scope",
    "deterministic",
    "is_multi_worker",
    "is_chief",
    "worker_index",
    "gather_from_workers",
    "check_global_batch",
    "WorkerLostError",
    "is_worker_lost",
    "restart_process",
    "restarts_so_far",
]

STRATEGIES = ("auto", "mirrored", "one_device", "multi_worker", "tpu")
MIXED_PRECISION = ("float32", "mixed_float16", "mixed_bfloat16")


def _check_choice(value, valid, name):
    if value not in valid:
        raise ValueError(f"unknown {name}={value!r}; valid: {', '.join(valid)}.")
    return value


def check_settings(*, strategy="auto", mixed_precision="float32", prefix=""):
    """Checks a strategy name and a mixed-precision policy before anything starts
    (``prefix="--"`` names them as the job's flags); ValueError lists the valid values."""
    _check_choice(strategy, STRATEGIES, f"{prefix}strategy")
    _check_choice(mixed_precision, MIXED_PRECISION, f"{prefix}mixed_precision")


def configure_cpu_devices(n):
    """Splits the CPU into ``n`` logical devices (to develop multi-replica code
    without GPUs). ``n`` of None or 1 (or the ``n`` already in force) changes
    nothing; ``n < 1`` is a ValueError; a RuntimeError (naming the fix) when
    TensorFlow already initialised its devices with another layout."""
    if n is None or n == 1:
        return
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"--num_cpu_devices must be a positive integer, got {n!r}.")
    cpu = tf.config.list_physical_devices("CPU")[0]
    current = tf.config.get_logical_device_configuration(cpu)
    if current is not None and len(current) == n:
        return
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(n)]
        )
    except RuntimeError as err:
        raise RuntimeError(
            f"cannot split the CPU into {n} logical devices: TensorFlow has already initialised "
            "its devices in this process. Fix: call keras_kd.distribute.configure_cpu_devices (or "
            "pass --num_cpu_devices) before any model, tensor or dataset is created."
        ) from err


def _logical(kind):
    return [d.name for d in tf.config.list_logical_devices(kind)]


def parse_tf_config(text=None):
    """Validates ``TF_CONFIG`` and returns it as a dict: ``{"cluster": {"worker":
    ["host:port", ...]}, "task": {"type": "worker", "index": i}}`` (a ``chief``
    entry is allowed too). ValueError (showing the expected form) when it is
    missing, not JSON, or has missing or inconsistent fields.
    """
    example = (
        'TF_CONFIG=\'{"cluster": {"worker": ["localhost:12345", '
        '"localhost:23456"]}, "task": {"type": "worker", "index": 0}}\''
    )
    text = os.environ.get("TF_CONFIG") if text is None else text
    if not text:
        raise ValueError("--strategy=multi_worker needs the TF_CONFIG environment variable on "
                         f"every worker, e.g. {example}.")
    try:
        config = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"TF_CONFIG is not valid JSON ({err}). Expected e.g. {example}.") from None
    if not isinstance(config, dict):
        raise ValueError(f"TF_CONFIG must be a JSON object, e.g. {example}.")
    cluster, task = config.get("cluster"), config.get("task")
    if not isinstance(cluster, dict) or not any(
        isinstance(cluster.get(k), list) and cluster.get(k) for k in ("worker", "chief")
    ):
        raise ValueError('TF_CONFIG needs "cluster" with a non-empty "worker" (or "chief") '
                         f"list of host:port addresses, e.g. {example}.")
    if not isinstance(task, dict) or task.get("type") not in cluster:
        raise ValueError(f'TF_CONFIG "task" must name one of the cluster\'s jobs '
                         f"({', '.join(sorted(cluster))}), e.g. {example}.")
    index = task.get("index")
    if not isinstance(index, int) or not 0 <= index < len(cluster[task["type"]]):
        raise ValueError(f'TF_CONFIG "task.index" must be an integer in [0, '
                         f'{len(cluster[task["type"]])}) for job {task["type"]!r}, got {index!r}.')
    for job, addresses in cluster.items():
        for address in addresses:
            host, _, port = str(address).rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"TF_CONFIG address {address!r} in job {job!r} is not host:port.")
    return config


def get_strategy(name="auto"):
    """A ``tf.distribute.Strategy`` by name (see the module docstring).

    ValueError for an unknown name (lists the valid ones), a malformed
    ``TF_CONFIG`` for ``multi_worker``, or no TPU for ``tpu``.
    """
    name = _check_choice((name or "auto").strip().lower(), STRATEGIES, "strategy")
    if name == "multi_worker":
        # Before anything lists devices: collective ops must be configured
        # at TensorFlow's start-up.
        parse_tf_config()
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        return _tpu_strategy()
    gpus, cpus = _logical("GPU"), _logical("CPU")
    if name == "auto":
        if len(gpus) > 1:
            return tf.distribute.MirroredStrategy(gpus)
        if not gpus and len(cpus) > 1:
            return tf.distribute.MirroredStrategy(cpus)
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(gpus or cpus)
    return tf.distribute.OneDeviceStrategy((gpus or cpus)[0])


def _tpu_strategy():
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, tf.errors.OpError) as err:
        raise ValueError(
            f"--strategy=tpu found no TPU ({str(err).splitlines()[0][:200]}). "
            "Fix: run on a TPU VM (or set TPU_NAME), or choose another "
            f"strategy: {', '.join(s for s in STRATEGIES if s != 'tpu')}."
        ) from None
    return tf.distribute.TPUStrategy(resolver)


def _created_in(strategy, variable):
    """True when a (Keras) variable was created under ``strategy``'s scope."""
    return strategy.extended.variable_created_in_scope(getattr(variable, "value", variable))


def in_scope(strategy, model, role):
    """``model`` itself if its variables belong to ``strategy``, else a copy
    with its weights, created in the current scope (call it inside
    ``strategy.scope()``). ``model`` may also be a zero-argument callable that
    builds the model (it is then called here). ``role`` names it in errors.
    """
    if callable(model) and not isinstance(model, keras.Model):
        model = model()
    if not isinstance(model, keras.Model):
        raise ValueError(f"{role} must be a keras.Model or a function building one.")
    if all(_created_in(strategy, v) for v in model.variables):
        return model
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def check_global_batch(batch_size, replicas):
    """Raises ValueError unless ``batch_size`` splits evenly over ``replicas``.

    ``batch_size`` is the global batch. A short *last* batch is fine (the
    Distiller divides by the real global batch), but Keras 3.15's ``fit``
    crashes when the *first* batch splits unevenly across replicas.
    """
    if replicas > 1 and batch_size % replicas:
        lower = max(replicas, batch_size - batch_size % replicas)
        raise ValueError(
            f"the global batch size {batch_size} does not split evenly over {replicas} replicas. "
            f"Fix: use a multiple of {replicas}, e.g. --batch_size={lower}."
        )


def resolve_jit_compile(requested, strategy, name="--jit_compile"):
    """``(jit_compile, note)``: XLA only where it works.

    XLA compiles the train step on one replica. Under a multi-replica
    strategy Keras's ``"auto"`` already turns it off, an explicit
    ``jit_compile=True`` under ``MirroredStrategy`` fails on cross-device
    resources, and the Distiller's record of a failed batch check (which
    replaces the assertions XLA drops) would keep only the first replica's.
    So keras_kd turns it off there and says so in ``note`` (naming the setting
    ``name``: the job's flag, or ``compile(jit_compile=True)``). The one rule
    of the job and of ``Distiller.compile``.
    """
    if not requested:
        return False, None
    if strategy.num_replicas_in_sync > 1:
        return False, (f"{name} ignored: XLA does not compile the step under "
                       f"{type(strategy).__name__} with {strategy.num_replicas_in_sync} "
                       "replicas, and under it the per-batch data checks would see only the "
                       "first replica's share of each batch; the step runs without XLA.")
    return True, None


@contextlib.contextmanager
def mixed_precision(policy):
    """Sets Keras's global dtype policy for the body, then restores it.

    ``mixed_float16`` / ``mixed_bfloat16`` compute layers in 16 bits and keep
    float32 variables; keras_kd's losses stay float32, and under
    ``mixed_float16`` ``compile`` wraps the optimizer in a
    ``LossScaleOptimizer`` (the Distiller's step calls ``scale_loss``).
    """
    policy = _check_choice(policy or "float32", MIXED_PRECISION, "mixed_precision")
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


@contextlib.contextmanager
def deterministic(seed, enabled=True):
    """Runs the body with TensorFlow's op determinism and a seeded global RNG.

    Same seed → same run, bit for bit (parallel ``tf.data`` maps otherwise
    draw keras-cv's random numbers in a varying order). keras-cv's layers take
    their randomness from ``tf.random``'s global generator, which must be set
    explicitly under op determinism. The previous determinism setting is
    restored on exit (TF 2.21 has no public switch-off:
    :func:`keras_kd.views.disable_op_determinism`).
    """
    if not enabled:
        yield
        return
    was_enabled = views.op_determinism_enabled()
    tf.config.experimental.enable_op_determinism()
    tf.random.set_global_generator(tf.random.Generator.from_seed(seed))
    try:
        yield
    finally:
        if not was_enabled:
            views.disable_op_determinism()


def is_multi_worker(strategy):
    """True for ``MultiWorkerMirroredStrategy`` (where Keras 3.15's fit fails)."""
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def worker_index(strategy):
    """This process's task index under multi-worker training, else 0."""
    if not is_multi_worker(strategy):
        return 0
    return strategy.cluster_resolver.task_id or 0


def is_chief(strategy):
    """True where this process writes the shared files (backups, markers).

    Always true outside multi-worker training. Under it: the ``chief`` task,
    or worker 0 when ``TF_CONFIG`` has no ``chief`` job (TensorFlow's rule).
    """
    if not is_multi_worker(strategy):
        return True
    resolver = strategy.cluster_resolver
    if resolver.task_type == "chief":
        return True
    cluster = resolver.cluster_spec().as_dict()
    return "chief" not in cluster and resolver.task_type == "worker" and not resolver.task_id


def gather_from_workers(strategy, values):
    """Every replica's copy of the int vector ``values``, as a NumPy array.

    Returns shape ``[replicas, len(values)]``; outside multi-worker training,
    just ``[values]``. A collective: every worker must call it, in the same
    order. Used to check that all workers see the same checkpoint folder.
    """
    values = np.asarray(values, dtype=np.int64).reshape(-1)
    if not is_multi_worker(strategy):
        return values[None, :]
    local = tf.constant(values)

    @tf.function
    def gather():
        return strategy.run(
            lambda: tf.distribute.get_replica_context().all_gather(local[None, :], axis=0)
        )

    return np.asarray(strategy.experimental_local_results(gather())[0])


class WorkerLostError(RuntimeError):
    """Another worker of a multi-worker job stopped (killed, preempted, crashed).

    TensorFlow cannot continue a collective job that lost a worker in the
    same process ("Restart your program to reset"): every surviving worker
    must restart too (:func:`restart_process`).
    """


def is_worker_lost(err):
    """True when ``err`` is TensorFlow reporting a lost (or restarted) peer."""
    if isinstance(err, (tf.errors.UnavailableError, tf.errors.AbortedError)):
        return True
    text = str(err)
    return isinstance(err, tf.errors.OpError) and any(s in text for s in (
        "unhealthy", "incarnation", "Socket closed", "Connection reset", "failed to connect"))


RESTARTS_ENV = "KERAS_KD_RESTARTS"


def restarts_so_far():
    """How many times :func:`restart_process` restarted this command."""
    return int(os.environ.get(RESTARTS_ENV, "0") or 0)


def restart_process(max_restarts, log=None):
    """Replaces this process by a fresh run of the same command line (a
    surviving worker after :class:`WorkerLostError`; README.md has the flow).

    Counts restarts in the ``KERAS_KD_RESTARTS`` environment variable and
    returns False, restarting nothing, once ``max_restarts`` is reached.
    """
    done = restarts_so_far()
    if done >= max_restarts:
        return False
    if log is not None:
        log(f"restarting this worker to wait for the others (restart {done + 1} of "
            f"at most {max_restarts}).")
    os.environ[RESTARTS_ENV] = str(done + 1)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
    return True  # not reached
