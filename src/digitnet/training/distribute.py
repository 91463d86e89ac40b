"""Training across devices and hosts with ``tf.distribute``: the strategy and the cluster.

``make_strategy(name, ...)`` gives what ``Fitter(strategy=...)`` trains under:

* ``default``: None, TensorFlow's default strategy on one device (the engine's own path);
* ``mirrored``: ``MirroredStrategy`` over every local GPU, else the CPU, or ``devices`` logical
  CPU devices (one CPU device already uses every core: that is for tests and trying it out);
* ``multiworker``: ``MultiWorkerMirroredStrategy`` across the hosts ``TF_CONFIG`` lists.

``TF_CONFIG`` is checked before TensorFlow reads it (``digitnet.training.cluster``), and the
cluster must assemble within ``cluster_timeout`` seconds (TensorFlow's coordination service
otherwise lets the first worker wait for the others forever), so a mistake ends in one
``ConfigError`` line, never a hang.
"""

from __future__ import annotations

import os
import re
from typing import Any

import tensorflow as tf

from digitnet.errors import ConfigError, TrainingError
from digitnet.models.choices import DEFAULT_CLUSTER_TIMEOUT
from digitnet.training.cluster import Cluster, check_settings

# The strategies made in this process: mirrored ones by their devices, the cluster's as
# "cluster": (its Cluster, the strategy).
_strategies: dict[Any, Any] = {}


def make_strategy(
    name: str,
    *,
    devices: int | None = None,
    cluster_timeout: float = DEFAULT_CLUSTER_TIMEOUT,
) -> tf.distribute.Strategy | None:
    """The strategy ``name`` (one of ``STRATEGIES``) stands for; None for ``default``.

    Call it before anything else in the process touches TensorFlow: logical devices and the
    multiworker cluster can only be set up before TensorFlow initialises its runtime.

    Args:
        devices: ``mirrored`` only: how many local devices to mirror over (default: every GPU,
            else the CPU as one device); N > 1 on a machine without GPUs splits the CPU into N
            logical devices.
        cluster_timeout: ``multiworker`` only: seconds to wait for every task of ``TF_CONFIG``.
    """
    tf_config = os.environ.get("TF_CONFIG")
    cluster = check_settings(name, devices, cluster_timeout, tf_config)
    if name == "default":
        return None
    # One strategy per set of devices in a process, kept for later runs: TensorFlow numbers
    # every strategy's collective operations from the same start, so a second strategy over
    # the same devices would mix its all-reductions up with the first one's.
    if name == "mirrored":
        local = tuple(_local_devices(devices))
        if local not in _strategies:
            _strategies[local] = tf.distribute.MirroredStrategy(list(local))
        return _strategies[local]
    assert cluster is not None
    if "cluster" in _strategies:
        if _strategies["cluster"][0] != cluster:
            raise ConfigError(
                "this process has joined a multiworker cluster already, and TensorFlow "
                "cannot leave it: train in another cluster from a new process"
            )
        return _strategies["cluster"][1]
    _configure_coordination(cluster, cluster_timeout)
    try:
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    except tf.errors.OpError as error:
        raise ConfigError(_explain(error, cluster, cluster_timeout)) from None
    _strategies["cluster"] = (cluster, strategy)
    return strategy


def _local_devices(devices: int | None) -> list[str]:
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        count = devices or len(gpus)
        if count > len(gpus):
            raise ConfigError(f"--devices {count}: this machine has {len(gpus)} GPUs")
        return [f"/gpu:{i}" for i in range(count)]
    count = devices or 1
    if count > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        try:
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(count)]
            )
        except RuntimeError:
            # TensorFlow is running already: fine if it has the devices asked for.
            if len(tf.config.list_logical_devices("CPU")) < count:
                raise ConfigError(
                    f"--devices {count} splits the CPU into {count} logical devices, which must "
                    "happen before TensorFlow starts: train in a fresh process"
                ) from None
    return [f"/cpu:{i}" for i in range(count)]


def _configure_coordination(cluster: Cluster, timeout: float) -> None:
    """Set up TensorFlow's coordination service as ``MultiWorkerMirroredStrategy`` would
    (it leaves an existing set-up alone), plus a deadline for the cluster to assemble.

    By default the leader waits for the other tasks without end; with
    ``cluster_register_with_barrier`` every task's registration fails once ``timeout`` passes
    without all of them. Workers that die later are noticed by the service's heartbeats.
    """
    from tensorflow.python.eager import context

    if context.context().coordination_service is not None:
        return  # set up before, by an earlier strategy in this process
    protos = context.coordination_config_pb2
    job, _ = cluster.leader
    context.context().configure_coordination_service(
        service_type="standalone",
        service_leader=f"/job:{job}/replica:0/task:0",
        coordinated_jobs=[
            protos.CoordinatedJob(name=name, num_tasks=len(addresses))
            for name, addresses in cluster.jobs.items()
        ],
        cluster_register_timeout_in_ms=int(timeout * 1000),
    )
    config = context.context().coordination_service
    if "cluster_register_with_barrier" in config.DESCRIPTOR.fields_by_name:
        config.cluster_register_with_barrier = True


def _explain(error: tf.errors.OpError, cluster: Cluster, timeout: float) -> str:
    """One line for why the cluster did not assemble, from TensorFlow's many-line error."""
    message = error.message
    this = cluster.describe(cluster.task_type, cluster.task_index)
    remedy = (
        "start every task with the same TF_CONFIG cluster and its own task, check the "
        "addresses and firewalls, or raise --cluster-timeout"
    )
    if "Could not start gRPC server" in message:
        return (
            f"{this} cannot listen on port {cluster.jobs[cluster.task_type][cluster.task_index]}"
            f" (in use by another process?): give it a free port in TF_CONFIG"
        )
    # The coordination service names the tasks missing at its barrier, one per line.
    missing = []
    if "timed out task names:" in message:
        for line in message.split("timed out task names:", 1)[1].strip().splitlines():
            match = re.fullmatch(r"/job:(\w+)/replica:\d+/task:(\d+)", line.strip())
            if match is None:
                break
            job, index = match[1], int(match[2])
            if job in cluster.jobs and index < len(cluster.jobs[job]):
                missing.append(cluster.describe(job, index))
    if missing:
        return f"{', '.join(missing)} did not join within {timeout:g} s: {remedy}"
    if isinstance(error, (tf.errors.DeadlineExceededError, tf.errors.UnavailableError)):
        return (
            f"{this} could not join the cluster led by {cluster.describe(*cluster.leader)} "
            f"within {timeout:g} s: {remedy}"
        )
    first_line = " ".join(message.strip().splitlines()[:1])
    return f"the multiworker cluster did not start ({first_line}): {remedy}"


# What a collective operation raises when the cluster loses a task mid-run.
CLUSTER_ERRORS = (
    tf.errors.UnavailableError,
    tf.errors.DeadlineExceededError,
    tf.errors.AbortedError,
    tf.errors.CancelledError,
)


def lost_task(error: tf.errors.OpError, epoch: int) -> TrainingError:
    """The one-line error for a cluster that lost a task in ``epoch``. TensorFlow notices a
    task that crashed or was stopped (a reset connection, or about 10 s without heartbeats)
    and aborts every collective operation on the others."""
    message = error.message
    task = r"/job:(\w+)/replica:\d+/task:(\d+)"
    if "stopped sending heartbeats" in message:
        found = re.findall(task, message.split("stopped sending heartbeats", 1)[1])
    else:
        found = re.findall(r"remote target " + task, message)
    tasks = dict.fromkeys(f"{job} {index}" for job, index in found)
    if tasks:
        reason = f"{', '.join(tasks)} stopped answering"
    else:
        reason = " ".join(message.split("aborted by:", 1)[-1].strip().splitlines()[:1])
    return TrainingError(
        f"the cluster broke up in epoch {epoch} ({reason}): start every worker again with "
        "--resume to go on from the last checkpoint"
    )


def is_chief(strategy: tf.distribute.Strategy | None) -> bool:
    """Whether this process writes checkpoints and the model: always, but under
    ``multiworker`` only the chief (worker 0 when the cluster has no chief)."""
    return strategy is None or bool(strategy.extended.should_checkpoint)


def describe(strategy: tf.distribute.Strategy | None) -> dict[str, Any]:
    """What the run's report records about where it trained."""
    if strategy is None:
        return {}
    return {"replicas": int(strategy.num_replicas_in_sync)}
