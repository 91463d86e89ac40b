"""Training under tf.distribute: mirrored replicas, multiworker clusters, bad TF_CONFIGs.

Runs that need a fresh TensorFlow (two logical CPU devices, a cluster of two worker processes
on 127.0.0.1) happen in subprocesses, each with a deadline after which it is killed: TensorFlow
waiting in its runtime ignores SIGTERM, so nothing here relies on it.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import fake_mnist_arrays, write_dataset
from digitnet.errors import ConfigError
from digitnet.inference.modelfile import load_model
from digitnet.training.runs import TrainConfig, train_and_evaluate
from distributed_driver import EXACT_RUN, RECIPE

DRIVER = Path(__file__).with_name("distributed_driver.py")
DEADLINE = 600  # seconds for any subprocess here; minutes more than they need on 2 busy cores


def quiet(_line):
    pass


def free_ports(count):
    """Ports free on 127.0.0.1 now (the OS hands each out once while its socket is open)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def tf_config(ports, index):
    workers = [f"127.0.0.1:{port}" for port in ports]
    return json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})


def subprocess_env(**variables):
    """This environment without its own TF_CONFIG, TensorFlow's info lines off, plus
    ``variables``."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env.update(TF_CPP_MIN_LOG_LEVEL="2", **variables)
    return env


def run_all(commands, timeout=DEADLINE):
    """Run ``(args, env)`` commands side by side; (returncode, stdout, stderr) of each. Any
    still running at the deadline, or when the test fails, is killed."""
    processes = [
        subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for args, env in commands
    ]
    deadline = time.monotonic() + timeout
    try:
        results = []
        for process in processes:
            stdout, stderr = process.communicate(timeout=max(deadline - time.monotonic(), 1))
            results.append((process.returncode, stdout, stderr))
        return results
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()


def digitnet_train(*args):
    return [sys.executable, "-m", "digitnet", "train", *map(str, args)]


def cli_args(settings):
    """``digitnet train`` flags for TrainConfig ``settings``."""
    args = []
    for name, value in settings.items():
        flag = "--" + {"learning_rate": "lr"}.get(name, name).replace("_", "-")
        if isinstance(value, bool):
            args.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, list):
            args += [flag, ",".join(map(str, value))]
        else:
            args += [flag, str(value)]
    return args


def printed_test_accuracy(stdout):
    line = next(line for line in stdout.splitlines() if line.startswith("Accuracy on the test"))
    return float(line.split(":")[1].strip(" %")) / 100


def parameters_close(a, b, atol):
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-4, atol=atol, err_msg=name)


@pytest.fixture(scope="module")
def fake_dir(tmp_path_factory):
    return write_dataset(
        tmp_path_factory.mktemp("fake"), fake_mnist_arrays(n_train=400, n_test=100)
    )


# ------------------------------------------------------------------ mirrored


def test_mirrored_over_one_device_takes_exactly_the_default_steps(tmp_path, fake_dir):
    """The strategy's code path (per-replica step, seeds, all-reduce, averaged batch-norm
    statistics) with one replica is the default path: dropout and augmentation included."""
    settings = dict(model="mlp", layout=[784, 32, 10], epochs=2, batch_size=20, val_size=40)
    one = train_and_evaluate(TrainConfig(**settings), tmp_path / "a", data_dir=fake_dir, log=quiet)
    mirrored = train_and_evaluate(
        TrainConfig(strategy="mirrored", **settings), tmp_path / "b", data_dir=fake_dir, log=quiet
    )
    assert mirrored.metrics["replicas"] == 1 and "replicas" not in one.metrics
    for name, value in one.model.parameters.items():
        assert np.array_equal(mirrored.model.parameters[name], value), name
    assert mirrored.model.metadata["training"]["strategy"] == "mirrored"


@pytest.fixture(scope="module")
def mirrored_runs(tmp_path_factory, fake_dir):
    """The driver's runs over two logical CPU devices (see distributed_driver.py)."""
    out = tmp_path_factory.mktemp("mirrored")
    [(code, _, stderr)] = run_all(
        [([sys.executable, str(DRIVER), str(fake_dir), str(out)], subprocess_env())]
    )
    assert code == 0, stderr[-3000:]
    return out


def test_two_replicas_take_the_single_device_steps(mirrored_runs):
    """Each replica takes half of every global batch; the all-reduced gradient is the whole
    batch's, so the weights follow the single-device run up to float rounding."""
    default = load_model(mirrored_runs / "exact-default.safetensors")
    mirrored = load_model(mirrored_runs / "exact-mirrored.safetensors")
    assert mirrored.metadata["metrics"]["replicas"] == 2
    parameters_close(mirrored.parameters, default.parameters, atol=1e-5)
    costs = [[row["cost"] for row in model.metadata["history"]] for model in (default, mirrored)]
    np.testing.assert_allclose(costs[1], costs[0], rtol=1e-5)


def test_the_global_batch_must_split_evenly_over_the_replicas(mirrored_runs):
    report = json.loads((mirrored_runs / "report.json").read_text())
    assert report["odd_batch_error"] == (
        "the batch size 15 does not split evenly over 2 replicas: use a multiple of 2 "
        "(--batch-size is the global batch)"
    )


def test_batchnorm_running_statistics_are_averaged_across_replicas(mirrored_runs):
    """Every replica holds the same running statistics, each step moving them by the mean of
    the replicas' batch statistics. Each replica normalizes by its own half-batch statistics,
    so only the first batch-norm layer sees the single device's inputs; there, the mean of the
    two half-batch means is the whole batch's mean."""
    report = json.loads((mirrored_runs / "report.json").read_text())
    for name, (first, second) in report["replicas"].items():
        assert first == second, name
        assert np.abs(first).max() > 0, name  # they did move
    first_layer = min(report["default"], key=lambda name: int(name.removeprefix("mean")))
    np.testing.assert_allclose(
        report["replicas"][first_layer][0], report["default"][first_layer], rtol=1e-4, atol=1e-9
    )


def test_resume_under_mirrored_ends_like_an_uninterrupted_run(mirrored_runs):
    whole = load_model(mirrored_runs / "recipe-whole.safetensors")
    resumed = load_model(mirrored_runs / "recipe-resumed.safetensors")
    for name, value in whole.parameters.items():
        assert np.array_equal(resumed.parameters[name], value), name

    def costs(model):
        return [
            (row["epoch"], row["cost"], row["val_accuracy"]) for row in model.metadata["history"]
        ]

    assert costs(resumed) == costs(whole)


# ------------------------------------------------------------------ multiworker


def test_two_workers_train_in_step_and_only_the_chief_writes(tmp_path, fake_dir):
    """Two worker processes on 127.0.0.1, each with its own TF_CONFIG and folders (as on two
    hosts without shared storage): they print the same costs and accuracies, the chief's model
    follows the single-device run, and worker 1 writes nothing."""
    ports = free_ports(2)
    commands = [
        (
            digitnet_train(
                *cli_args(EXACT_RUN),
                "--strategy",
                "multiworker",
                "--cluster-timeout",
                "120",
                "--data-dir",
                fake_dir,
                "--workdir",
                tmp_path / f"run{index}",
                "--save-model",
                tmp_path / f"model{index}.safetensors",
            ),
            subprocess_env(TF_CONFIG=tf_config(ports, index)),
        )
        for index in (0, 1)
    ]
    results = run_all(commands)
    for code, _, stderr in results:
        assert code == 0, stderr[-3000:]
    (_, chief_out, _), (_, worker_out, _) = results
    assert chief_out.splitlines()[-1].startswith("Saved the model to")
    assert worker_out.splitlines()[-1] == "The chief saves the model"
    assert chief_out.splitlines()[:-1] == worker_out.splitlines()[:-1]
    assert (tmp_path / "run0" / "checkpoint.safetensors").exists()
    assert not (tmp_path / "run1").exists() and not (tmp_path / "model1.safetensors").exists()

    chief = load_model(tmp_path / "model0.safetensors")
    assert chief.metadata["metrics"]["replicas"] == 2
    one = train_and_evaluate(
        TrainConfig(**EXACT_RUN), tmp_path / "one", data_dir=fake_dir, log=quiet
    )
    parameters_close(chief.parameters, one.model.parameters, atol=1e-5)


def test_a_worker_lost_mid_run_ends_the_others_and_resume_finishes_the_run(tmp_path, fake_dir):
    """Worker 1 killed mid-run: worker 0 stops with one line instead of waiting for it; both
    started again with --resume (their --workdir shared, as on a cluster's shared volume)
    finish the run from the chief's last checkpoint."""
    ports = free_ports(2)
    checkpoint = tmp_path / "run" / "checkpoint.safetensors"
    args = digitnet_train(
        *cli_args({**EXACT_RUN, "epochs": 60}),
        "--strategy",
        "multiworker",
        "--cluster-timeout",
        "120",
        "--data-dir",
        fake_dir,
        "--workdir",
        tmp_path / "run",
        "--save-model",
        tmp_path / "model.safetensors",
    )
    processes = [
        subprocess.Popen(
            args,
            env=subprocess_env(TF_CONFIG=tf_config(ports, index)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for index in (0, 1)
    ]
    try:
        deadline = time.monotonic() + DEADLINE
        while not checkpoint.exists() and time.monotonic() < deadline:
            assert processes[1].poll() is None, processes[1].communicate()[1][-3000:]
            time.sleep(0.05)
        processes[1].kill()
        _, stderr = processes[0].communicate(timeout=max(deadline - time.monotonic(), 1))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.communicate()
    assert processes[0].returncode == 1, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if line.startswith("digitnet train:")]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr[-3000:]
    assert re.search(r"the cluster broke up in epoch \d+ \(worker 1 stopped answering\)", errors[0])
    assert "--resume" in errors[0]

    ports = free_ports(2)
    results = run_all(
        [
            (args + ["--resume"], subprocess_env(TF_CONFIG=tf_config(ports, index)))
            for index in (0, 1)
        ]
    )
    for code, _, stderr in results:
        assert code == 0, stderr[-3000:]
    chief_out = results[0][1]
    assert "Resuming after epoch" in chief_out and "Cost after epoch 60:" in chief_out
    assert len(load_model(tmp_path / "model.safetensors").metadata["history"]) == 60


# ------------------------------------------------------------------ bad settings

WORKERS = ["127.0.0.1:2222", "127.0.0.1:2223"]


@pytest.mark.parametrize(
    "value,message",
    [
        (None, "needs TF_CONFIG"),
        ('{"cluster": {"worker": ["a:1"]}', "TF_CONFIG is not valid JSON"),
        ('["a:1"]', 'needs a "cluster" object'),
        (
            json.dumps({"cluster": {"ps": WORKERS}, "task": {"type": "ps", "index": 0}}),
            "job 'ps' is not one multiworker training has",
        ),
        (
            json.dumps({"cluster": {"worker": WORKERS}, "task": {"type": "chief", "index": 0}}),
            "task type 'chief' is not a job of the cluster: set it to 'worker'",
        ),
        (
            json.dumps({"cluster": {"worker": WORKERS}, "task": {"type": "worker", "index": 2}}),
            "task index 2 is not one of the cluster's 2 worker tasks: set it to 0 or 1",
        ),
        (
            json.dumps({"cluster": {"worker": ["a:1", "a:1"]}, "task": {"type": "worker"}}),
            "lists a:1 twice",
        ),
        (
            json.dumps({"cluster": {"worker": ["localhost"]}, "task": {"type": "worker"}}),
            "'localhost' is not an address of the form host:port",
        ),
    ],
)
def test_a_bad_tf_config_is_refused_before_tensorflow_starts(
    tmp_path, monkeypatch, fake_dir, value, message
):
    if value is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", value)
    with pytest.raises(ConfigError, match=re.escape(message)):
        train_and_evaluate(
            TrainConfig(strategy="multiworker", dry_run=True),
            tmp_path,
            data_dir=fake_dir,
            log=quiet,
        )


def test_strategy_settings_are_checked(tmp_path, fake_dir):
    with pytest.raises(ConfigError, match="--devices applies to --strategy mirrored"):
        train_and_evaluate(
            TrainConfig(devices=2, dry_run=True), tmp_path, data_dir=fake_dir, log=quiet
        )
    with pytest.raises(ConfigError, match="strategy must be one of"):
        train_and_evaluate(
            TrainConfig(strategy="tpu", dry_run=True), tmp_path, data_dir=fake_dir, log=quiet
        )
    with pytest.raises(ConfigError, match="cluster_timeout must be"):
        train_and_evaluate(
            TrainConfig(strategy="multiworker", dry_run=True),
            tmp_path,
            data_dir=fake_dir,
            log=quiet,
            cluster_timeout=0,
        )


def test_a_worker_or_leader_that_never_comes_up_ends_in_one_line(tmp_path, fake_dir):
    """Worker 0 (the leader) alone, and worker 1 alone, each in a two-worker cluster: each
    gives up after --cluster-timeout with one line naming who is missing, never hangs."""
    timeout = 5
    commands = []
    for index in (0, 1):
        ports = free_ports(2)
        args = digitnet_train(
            "--strategy",
            "multiworker",
            "--cluster-timeout",
            timeout,
            "--dry-run",
            "--data-dir",
            fake_dir,
            "--workdir",
            tmp_path / f"run{index}",
        )
        commands.append((args, subprocess_env(TF_CONFIG=tf_config(ports, index))))
        if index == 0:
            absent = f"worker 1 (127.0.0.1:{ports[1]}) did not join within {timeout} s"
        else:
            missing_leader = (
                f"worker 1 (127.0.0.1:{ports[1]}) could not join the cluster led by "
                f"worker 0 (127.0.0.1:{ports[0]}) within {timeout} s"
            )
    results = run_all(commands, timeout=300)
    for (code, _, stderr), expected in zip(results, (absent, missing_leader)):
        assert code == 1, stderr[-3000:]
        errors = [line for line in stderr.splitlines() if line.startswith("digitnet train:")]
        assert len(errors) == 1 and expected in errors[0], stderr[-3000:]
        assert "raise --cluster-timeout" in errors[0] and "Traceback" not in stderr


def test_the_cli_reports_a_malformed_tf_config_in_one_line(tmp_path, fake_dir):
    [(code, _, stderr)] = run_all(
        [
            (
                digitnet_train("--strategy", "multiworker", "--dry-run", "--data-dir", fake_dir),
                subprocess_env(TF_CONFIG="{'cluster': 1}"),
            )
        ],
        timeout=120,
    )
    assert code == 1 and "Traceback" not in stderr
    assert (
        stderr.strip()
        .splitlines()[-1]
        .startswith("digitnet train: error: TF_CONFIG is not valid JSON")
    )


# ------------------------------------------------------------------ accuracy on real MNIST


@pytest.fixture(scope="module")
def mnist_slice(tmp_path_factory):
    """The first 6,000 training and 2,000 test images of MNIST, as IDX files."""
    value = os.environ.get("DIGITNET_DATA_DIR")
    if not value:
        pytest.skip("real MNIST not available: set DIGITNET_DATA_DIR")
    import digitnet

    X_train, X_test, y_train, y_test = digitnet.load_mnist(split="official", data_dir=value)

    def images(X):
        return np.rint(X * 255).astype(np.uint8).reshape(-1, 28, 28)

    return write_dataset(
        tmp_path_factory.mktemp("mnist-slice"),
        {
            "train_images": images(X_train[:6000]),
            "train_labels": y_train[:6000].argmax(1).astype(np.uint8),
            "test_images": images(X_test[:2000]),
            "test_labels": y_test[:2000].argmax(1).astype(np.uint8),
        },
    )


@pytest.mark.slow
def test_mirrored_and_multiworker_end_within_noise_of_one_device(tmp_path, mnist_slice):
    """RECIPE (3 epochs of the mlp recipe on 5,500 images) on one device, on two mirrored
    replicas, and on two workers: test accuracies within noise of each other. Seeds 1-4 on one
    device spread over 0.9 points; 2,000 test images put 0.7 points of sampling noise on each."""
    started = time.perf_counter()
    one = train_and_evaluate(
        TrainConfig(**RECIPE), tmp_path / "one", data_dir=mnist_slice, log=quiet
    ).metrics["test_accuracy"]
    one_seconds = time.perf_counter() - started
    common = [*cli_args(RECIPE), "--data-dir", mnist_slice]
    ports = free_ports(2)
    started = time.perf_counter()
    [(code, mirrored_out, stderr)] = run_all(
        [
            (
                digitnet_train(
                    *common, "--strategy", "mirrored", "--devices", 2, "--workdir", tmp_path / "m"
                ),
                subprocess_env(),
            )
        ]
    )
    assert code == 0, stderr[-3000:]
    mirrored_seconds = time.perf_counter() - started
    started = time.perf_counter()
    results = run_all(
        [
            (
                digitnet_train(
                    *common, "--strategy", "multiworker", "--workdir", tmp_path / f"w{index}"
                ),
                subprocess_env(TF_CONFIG=tf_config(ports, index)),
            )
            for index in (0, 1)
        ]
    )
    for code, _, stderr in results:
        assert code == 0, stderr[-3000:]
    multiworker_seconds = time.perf_counter() - started
    mirrored = printed_test_accuracy(mirrored_out)
    multiworker = printed_test_accuracy(results[0][1])
    print(
        f"test accuracy: one device {one:.4f} ({one_seconds:.0f} s in process), mirrored x2 "
        f"{mirrored:.4f} ({mirrored_seconds:.0f} s), multiworker x2 {multiworker:.4f} "
        f"({multiworker_seconds:.0f} s, both with TensorFlow's start-up)"
    )
    assert one > 0.85
    assert abs(mirrored - one) <= 0.03 and abs(multiworker - one) <= 0.03
