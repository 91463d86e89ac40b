"""``TF_CONFIG``, checked: the cluster a multiworker run trains on, and this process's place.

Plain Python, no TensorFlow: ``train_and_evaluate`` checks the settings with it before it
loads TensorFlow, so a mistake is reported in a moment rather than after the import.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from digitnet.errors import ConfigError
from digitnet.models.choices import CLUSTER_JOBS, CLUSTER_TIMEOUT, STRATEGIES, Interval, check

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
        if job not in CLUSTER_JOBS:
            raise ConfigError(
                f"{where}: the cluster's job {job!r} is not one multiworker training has: "
                f"its jobs are {CLUSTER_JOBS.describe().removeprefix('one of ')}"
            )
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
            f"{where}: the task type {task_type!r} is not a job of the cluster: set it to "
            + " or ".join(repr(job) for job in jobs)
        )
    count = len(jobs[task_type])
    if not Interval(int, 0, count - 1).is_valid(task_index):
        raise ConfigError(
            f"{where}: the task index {task_index!r} is not one of the cluster's {count} "
            f"{task_type} task{'s' if count > 1 else ''}: set it to "
            + {1: "0", 2: "0 or 1"}.get(count, f"0 to {count - 1}")
        )
    return Cluster(jobs, task_type, task_index)


def _check_address(address: str, where: str) -> None:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{where}: {address!r} is not an address of the form host:port")


def check_settings(
    strategy: str, devices: int | None, cluster_timeout: float, tf_config: str | None
) -> Cluster | None:
    """Check a run's placement settings together; the cluster for ``multiworker``."""
    check("strategy", strategy, STRATEGIES)
    if devices is not None and strategy != "mirrored":
        raise ConfigError(f"--devices applies to --strategy mirrored, not {strategy}")
    if strategy != "multiworker":
        return None
    check("cluster_timeout", cluster_timeout, CLUSTER_TIMEOUT)
    return read_cluster(tf_config)
