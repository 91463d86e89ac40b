"""Training across devices and hosts with ``tf.distribute``: the strategy and the cluster.

``make_strategy(name, ...)`` gives what ``Fitter(strategy=...)`` trains under:

* ``default``: None, TensorFlow's default strategy on one device (the engine's own path);
* ``mirrored``: ``MirroredStrategy`` over every local GPU, else the CPU, or ``devices`` logical
  CPU devices (one CPU device already uses every core: that is for tests and trying it out);
* ``multiworker``: ``MultiWorkerMirroredStrategy`` across the hosts ``TF_CONFIG`` lists.

``TF_CONFIG`` is checked before TensorFlow reads it, and the cluster must assemble within
``cluster_timeout`` seconds (TensorFlow's coordination service otherwise lets the first worker
wait for the others forever), so a mistake ends in one ``ConfigError`` line, never a hang.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import tensorflow as tf

from digitnet.errors import ConfigError
from digitnet.models.choices import (
    CLUSTER_JOBS,
    CLUSTER_TIMEOUT,
    DEFAULT_CLUSTER_TIMEOUT,
    STRATEGIES,
    Interval,
    check,
)

TF_CONFIG_EXAMPLE = (
    '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
    '"task": {"type": "worker", "index": 0}}'
)


@dataclass(frozen=True)
class Cluster:
    """A checked ``TF_CONFIG``: the address of every task by job, and which task this is."""

    jobs: Mapping[str, tuple[str, ...]]
    task_type: str
    task_index: int

    @property
    def leader(self) -> tuple[str, int]:
        """The task that runs the coordination service and writes: the chief, else worker 0."""
        return ("chief", 0) if "chief" in self.jobs else ("worker", 0)

    @property
    def is_chief(self) -> bool:
        return (self.task_type, self.task_index) == self.leader

    def describe(self, job: str, index: int) -> str:
        """``"worker 1 (10.0.0.2:12345)"``."""
        return f"{job} {index} ({self.jobs[job][index]})"


def read_cluster(text: str | None) -> Cluster:
    """Check a ``TF_CONFIG`` value (JSON) for a multiworker run; ConfigError says what is wrong.

    It must list the ``cluster`` as ``{"chief": [one address], "worker": [addresses]}`` (the
    chief is optional) with addresses ``host:port``, and this process's ``task`` as
    ``{"type": "worker", "index": i}``.
    """
    where = "TF_CONFIG"
    if not text or not text.strip():
        raise ConfigError(
            f"--strategy multiworker needs TF_CONFIG, the cluster and this worker's place in it, "
            f"e.g. TF_CONFIG='{TF_CONFIG_EXAMPLE}' (see the README)"
        )
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(
            f"{where} is not valid JSON ({error.msg} at line {error.lineno} column {error.colno}):"
            f" write it like '{TF_CONFIG_EXAMPLE}'"
        ) from None
    if not isinstance(value, dict) or not isinstance(value.get("cluster"), dict):
        raise ConfigError(
            f'{where} needs a "cluster" object, e.g. {{"worker": ["host1:12345", "host2:12345"]}}'
        )
    if not isinstance(value.get("task"), dict):
        raise ConfigError(f'{where} needs a "task" object, e.g. {{"type": "worker", "index": 0}}')
    jobs: dict[str, tuple[str, ...]] = {}
    seen: set[str] = set()
    for job, addresses in value["cluster"].items():
        check(f'the job "{job}"', job, CLUSTER_JOBS, f"{where}: ")
        if (
            not isinstance(addresses, list)
            or not addresses
            or not all(isinstance(address, str) for address in addresses)
        ):
            raise ConfigError(f'{where}: the "{job}" job must be a list of "host:port" strings')
        if job == "chief" and len(addresses) != 1:
            raise ConfigError(f'{where}: the "chief" job has {len(addresses)} addresses, not one')
        for address in addresses:
            _check_address(address, where)
            if address in seen:
                raise ConfigError(f"{where} lists {address} twice: give every task its own port")
            seen.add(address)
        jobs[job] = tuple(addresses)
    if "worker" not in jobs:
        raise ConfigError(f'{where}: the cluster has no "worker" job')
    task = value["task"]
    task_type, task_index = task.get("type"), task.get("index", 0)
    if task_type not in jobs:
        raise ConfigError(
            f"{where}: the task type {task_type!r} is not a job of the cluster "
            f"({', '.join(repr(job) for job in jobs)})"
        )
    count = len(jobs[task_type])
    check(
        f'the "{task_type}" task index',
        task_index,
        Interval(int, 0, count - 1),
        f"{where}: ",
    )
    return Cluster(jobs, task_type, task_index)


def _check_address(address: str, where: str) -> None:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{where}: {address!r} is not an address of the form host:port")


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
    check("strategy", name, STRATEGIES)
    if devices is not None and name != "mirrored":
        raise ConfigError(f"--devices applies to --strategy mirrored, not {name}")
    if name == "default":
        return None
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(_local_devices(devices))
    check("cluster_timeout", cluster_timeout, CLUSTER_TIMEOUT)
    cluster = read_cluster(os.environ.get("TF_CONFIG"))
    _configure_coordination(cluster, cluster_timeout)
    try:
        return tf.distribute.MultiWorkerMirroredStrategy()
    except tf.errors.OpError as error:
        raise ConfigError(_explain(error, cluster, cluster_timeout)) from None


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
    """One line for why the cluster did not assemble."""
    message = error.message
    remedy = (
        "start every task with the same TF_CONFIG cluster and its own task, check the "
        "addresses and firewalls, or raise --cluster-timeout"
    )
    missing = []
    if "timed out task names" in message:
        tail = message.split("timed out task names", 1)[1]
        missing = [
            cluster.describe(job, int(index))
            for job, index in re.findall(r"/job:(\w+)/replica:\d+/task:(\d+)", tail)
            if job in cluster.jobs and int(index) < len(cluster.jobs[job])
        ]
    if missing:
        return f"{', '.join(dict.fromkeys(missing))} did not join within {timeout:g} s: {remedy}"
    if isinstance(error, (tf.errors.DeadlineExceededError, tf.errors.UnavailableError)):
        leader = cluster.describe(*cluster.leader)
        return (
            f"{cluster.describe(cluster.task_type, cluster.task_index)} could not join the "
            f"cluster led by {leader} within {timeout:g} s: {remedy}"
        )
    first_line = " ".join(message.strip().splitlines()[:1])
    return f"the multiworker cluster did not start ({first_line}): {remedy}"


def is_chief(strategy: tf.distribute.Strategy | None) -> bool:
    """Whether this process writes checkpoints and the model: always, but under
    ``multiworker`` only the chief (worker 0 when the cluster has no chief)."""
    return strategy is None or bool(strategy.extended.should_checkpoint)


def describe(strategy: tf.distribute.Strategy | None) -> dict[str, Any]:
    """What the run's report records about where it trained."""
    if strategy is None:
        return {}
    return {"replicas": int(strategy.num_replicas_in_sync)}
