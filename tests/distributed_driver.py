"""Mirrored runs for tests/test_distribute.py, in a process of their own.

The CPU can be split into logical devices only before TensorFlow starts, which it has long
done in the test process; so these runs happen here, over two logical CPU devices:

    python tests/distributed_driver.py DATA_DIR OUT_DIR

writes into OUT_DIR the model files ``exact-default``, ``exact-mirrored`` (EXACT_RUN on one
device and on two replicas), ``recipe-whole`` and ``recipe-resumed`` (RESUMED_RUN on two replicas,
uninterrupted, and interrupted after epoch 1 then resumed), and ``report.json`` (running
batch-norm statistics after one step, on each replica and on one device, and the error for a
batch that does not split over the replicas).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

# No dropout, augmentation or batch normalization, float32: two replicas must then take the
# single-device steps up to float rounding (each replica's mean gradient on half the batch,
# averaged, is the mean gradient on the whole batch).
EXACT_RUN: dict[str, Any] = dict(
    model="mlp",
    layout=[784, 32, 10],
    epochs=2,
    batch_size=20,
    val_size=40,
    precision="float32",
    dropout=0.0,
    augment=False,
)
# The mlp recipe (dropout, augmentation, one-cycle), shrunk to a short run.
RECIPE: dict[str, Any] = dict(
    model="mlp", layout=[784, 128, 10], epochs=3, batch_size=50, learning_rate=0.003, val_size=500
)
# The recipe sized for the tests' small fake dataset, to interrupt and resume.
RESUMED_RUN: dict[str, Any] = {**RECIPE, "layout": [784, 32, 10], "batch_size": 20, "val_size": 40}


class Interrupted(Exception):
    pass


def _interrupt(epoch: int, record: dict[str, Any]) -> None:
    raise Interrupted


def main(data_dir: str, out_dir: str) -> None:
    from digitnet.errors import ConfigError
    from digitnet.training.runs import TrainConfig, train_and_evaluate

    out = Path(out_dir)

    def train(name: str, settings: dict[str, Any], **options: Any) -> None:
        train_and_evaluate(
            TrainConfig(**settings),
            out / name,
            data_dir=data_dir,
            save_model_path=out / f"{name}.safetensors",
            log=lambda line: None,
            **options,
        )

    mirrored = {"strategy": "mirrored", "devices": 2}
    train("exact-mirrored", {**EXACT_RUN, **mirrored})  # first: it splits the CPU in two
    train("exact-default", EXACT_RUN)
    train("recipe-whole", {**RESUMED_RUN, **mirrored})
    try:
        train("recipe-resumed", {**RESUMED_RUN, **mirrored}, on_epoch_end=_interrupt)
    except Interrupted:
        pass
    train("recipe-resumed", {**RESUMED_RUN, **mirrored}, resume=True)
    report = _batchnorm_after_one_step(data_dir)
    try:
        train("odd-batch", {**EXACT_RUN, **mirrored, "batch_size": 15})
    except ConfigError as error:
        report["odd_batch_error"] = str(error)
    (out / "report.json").write_text(json.dumps(report))


def _batchnorm_after_one_step(data_dir: str) -> dict[str, Any]:
    """The cnn's running batch-norm means after one step on 16 images: on one device, and on
    each of two replicas (8 images each)."""
    import numpy as np

    import digitnet
    from digitnet.training.distribute import make_strategy
    from digitnet.training.engine import Fitter
    from digitnet.training.runs import TrainConfig

    X, _, y, _ = digitnet.load_mnist(split="official", data_dir=data_dir)
    data = Fitter.dataset(X[:16], y[:16])
    architecture = TrainConfig(model="cnn", cost="cross_entropy").architecture()
    report: dict[str, Any] = {}
    for name, strategy in (
        ("default", None),
        ("mirrored", make_strategy("mirrored", devices=2)),
    ):
        fitter = Fitter(
            architecture, cost="cross_entropy", batch_size=16, strategy=strategy, seed=1
        )
        fitter.train_epoch(data, 1)
        means = {k: v for k, v in fitter.variables.items() if k.startswith("mean")}
        report[name] = {k: v.numpy().tolist() for k, v in means.items()}
        if strategy is not None:
            report["replicas"] = {
                k: [np.asarray(copy).tolist() for copy in v.values] for k, v in means.items()
            }
    return report


if __name__ == "__main__":
    main(*sys.argv[1:3])
