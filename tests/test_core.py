"""The five tutorial functions: shapes, a NumPy reference, numerical gradients, one hand-worked
Adam update, the printed lines, determinism and the tutorial's accuracy on real MNIST."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

import digitnet
from digitnet.inference.model import Model
from digitnet.models import architectures
from digitnet.training.engine import Fitter

TUTORIAL_LAYOUT = {"l0": 784, "l1": 100, "l2": 100, "l3": 60, "l4": 10}


def numpy_forward(X, parameters):
    """The tutorial's network written out in NumPy: ReLU hidden layers, sigmoid output."""
    A = X.astype(np.float64)
    count = len(parameters) // 2
    for k in range(1, count + 1):
        Z = (
            A @ np.asarray(parameters[f"W{k}"], np.float64).T
            + np.asarray(parameters[f"b{k}"], np.float64).T
        )
        A = 1.0 / (1.0 + np.exp(-Z)) if k == count else np.maximum(Z, 0.0)
    return A


def random_parameters(layout, seed=0, scale=0.3):
    rng = np.random.default_rng(seed)
    shapes = architectures.parameter_shapes(architectures.normalize_layout(layout))
    return {
        name: (rng.normal(0, scale, shape)).astype(np.float32) for name, shape in shapes.items()
    }


def test_initialize_parameters_shapes_glorot_and_zeros():
    parameters = digitnet.initialize_parameters(TUTORIAL_LAYOUT, seed=1)
    assert sorted(parameters) == ["W1", "W2", "W3", "W4", "b1", "b2", "b3", "b4"]
    sizes = [784, 100, 100, 60, 10]
    for k in range(1, 5):
        W, b = parameters[f"W{k}"].numpy(), parameters[f"b{k}"].numpy()
        assert W.shape == (sizes[k], sizes[k - 1]) and b.shape == (sizes[k], 1)
        limit = np.sqrt(6.0 / (sizes[k] + sizes[k - 1]))
        assert np.abs(W).max() <= limit and np.abs(W).max() > 0.9 * limit
        assert abs(W.mean()) < 0.1 * limit  # uniform around zero
        assert not b.any()


def test_initialize_parameters_is_seeded():
    first = digitnet.initialize_parameters(TUTORIAL_LAYOUT, seed=3)
    again = digitnet.initialize_parameters(TUTORIAL_LAYOUT, seed=3)
    other = digitnet.initialize_parameters(TUTORIAL_LAYOUT, seed=4)
    assert np.array_equal(first["W1"].numpy(), again["W1"].numpy())
    assert not np.array_equal(first["W1"].numpy(), other["W1"].numpy())
    # Layers get different draws, not one repeated seed.
    assert not np.allclose(first["W2"].numpy()[:60, :60], first["W3"].numpy()[:60, :60])


def test_every_layout_form_gives_the_same_network():
    expected = architectures.normalize_layout(TUTORIAL_LAYOUT)
    for form in ([784, 100, 100, 60, 10], "784,100,100,60,10", "seed", expected):
        assert architectures.normalize_layout(form) == expected


@pytest.mark.parametrize("bad", [{"l0": 784, "l2": 10}, [784], "784,x", {"layers": []}, 3.5])
def test_bad_layouts_raise_value_error(bad):
    with pytest.raises(ValueError):
        architectures.normalize_layout(bad)


def test_forward_propagation_matches_numpy_reference():
    parameters = random_parameters(TUTORIAL_LAYOUT, seed=1, scale=0.1)
    X = np.random.default_rng(2).random((37, 784), dtype=np.float32)
    A_output = digitnet.forward_propagation(X, parameters).numpy()
    assert A_output.shape == (37, 10)
    np.testing.assert_allclose(A_output, numpy_forward(X, parameters), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("model_name", ["seed", "mlp", "cnn"])
def test_numpy_model_agrees_with_tensorflow_forward(model_name):
    """The fast NumPy path used by predict/serve equals the TensorFlow reference."""
    architecture = architectures.named_architecture(model_name)
    parameters = random_parameters(architecture, seed=5, scale=0.05)
    for name in parameters:  # plausible batchnorm statistics
        if name.startswith("variance"):
            parameters[name] = np.abs(parameters[name]) + 0.5
    X = np.random.default_rng(3).random((16, 784), dtype=np.float32)
    reference = digitnet.forward_propagation(X, parameters, architecture).numpy()
    model = Model(architecture, parameters)
    np.testing.assert_allclose(model.forward(X), reference, rtol=2e-4, atol=2e-5)
    assert np.array_equal(model.predict(X), reference.argmax(axis=1))
    assert np.array_equal(digitnet.predict(X, parameters, architecture), reference.argmax(1))


@pytest.mark.parametrize("cost,l2", [("mse", 0.0), ("mse", 0.01), ("cross_entropy", 0.001)])
def test_cost_gradient_matches_numerical_gradient(cost, l2):
    """Analytic gradients (TensorFlow's autodiff through all three functions) against central
    differences, in float64 on a small network."""
    layout = [6, 5, 4, 3]
    rng = np.random.default_rng(7)
    parameters = {
        k: tf.Variable(v.astype(np.float64))
        for k, v in random_parameters(layout, seed=8, scale=0.5).items()
    }
    architecture = architectures.normalize_layout(layout)
    if cost == "cross_entropy":
        architecture["layers"][-1]["activation"] = "softmax"
    X = rng.random((9, 6))
    y = np.eye(3)[rng.integers(0, 3, 9)]

    def cost_value():
        A = digitnet.forward_propagation(X, parameters, architecture)
        return digitnet.calculate_cost(A, y, parameters, cost=cost, l2=l2)

    with tf.GradientTape() as tape:
        value = cost_value()
    gradients = tape.gradient(value, list(parameters.values()))
    epsilon = 1e-6
    for (name, variable), gradient in zip(parameters.items(), gradients):
        original = variable.numpy().copy()
        numerical = np.zeros_like(original)
        for index in np.ndindex(original.shape):
            for sign in (1, -1):
                shifted = original.copy()
                shifted[index] += sign * epsilon
                variable.assign(shifted)
                numerical[index] += sign * cost_value().numpy() / (2 * epsilon)
        variable.assign(original)
        np.testing.assert_allclose(
            gradient.numpy(), numerical, rtol=1e-5, atol=1e-8, err_msg=f"gradient of {name}"
        )


def test_calculate_cost_is_the_mean_squared_difference():
    A = np.array([[0.2, 0.8], [0.6, 0.1]], np.float32)
    y = np.array([[0.0, 1.0], [1.0, 0.0]], np.float32)
    cost = digitnet.calculate_cost(A, y, {})
    assert cost.shape == ()
    assert float(cost) == pytest.approx(np.mean((A - y) ** 2))


def test_cross_entropy_from_logits_equals_from_probabilities():
    logits = np.array([[2.0, -1.0, 0.5], [0.1, 0.2, 3.0]], np.float32)
    probabilities = tf.nn.softmax(logits)
    y = np.eye(3, dtype=np.float32)[[0, 2]]
    stable = digitnet.calculate_cost(probabilities, y, {}, cost="cross_entropy", logits=logits)
    plain = digitnet.calculate_cost(probabilities, y, {}, cost="cross_entropy")
    expected = -np.mean(np.log(probabilities.numpy()[[0, 1], [0, 2]]))
    assert float(stable) == pytest.approx(expected, rel=1e-5)
    assert float(plain) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="cost must be"):
        digitnet.calculate_cost(probabilities, y, {}, cost="hinge")


def test_one_training_step_matches_a_hand_worked_adam_update():
    """Backpropagation and Adam worked by hand in NumPy for one step of squared error."""
    layout = [4, 3, 2]
    rng = np.random.default_rng(11)
    X = rng.random((5, 4)).astype(np.float32)
    y = np.eye(2, dtype=np.float32)[[0, 1, 1, 0, 1]]
    fitter = Fitter(
        architectures.normalize_layout(layout), cost="mse", learning_rate=0.01, batch_size=5, seed=2
    )
    W1, b1, W2, b2 = (
        fitter.variables[k].numpy().astype(np.float64) for k in ("W1", "b1", "W2", "b2")
    )
    # Forward.
    Z1 = X @ W1.T + b1.T
    A1 = np.maximum(Z1, 0)
    Z2 = A1 @ W2.T + b2.T
    A2 = 1 / (1 + np.exp(-Z2))
    # Backward through mean((A2 - y)^2) over all n * classes entries.
    dA2 = 2 * (A2 - y) / A2.size
    dZ2 = dA2 * A2 * (1 - A2)
    dW2, db2 = dZ2.T @ A1, dZ2.sum(axis=0, keepdims=True).T
    dZ1 = (dZ2 @ W2) * (Z1 > 0)
    dW1, db1 = dZ1.T @ X, dZ1.sum(axis=0, keepdims=True).T

    # Adam's first step as Keras writes it: m = (1-b1) g, v = (1-b2) g^2, and the bias
    # correction folded into the rate, lr * sqrt(1-b2) / (1-b1), with epsilon added to sqrt(v).
    def adam(value, gradient, lr=0.01, beta_1=0.9, beta_2=0.999, epsilon=1e-7):
        m, v = (1 - beta_1) * gradient, (1 - beta_2) * gradient**2
        rate = lr * np.sqrt(1 - beta_2) / (1 - beta_1)
        return value - rate * m / (np.sqrt(v) + epsilon)

    expected = {"W1": adam(W1, dW1), "b1": adam(b1, db1), "W2": adam(W2, dW2), "b2": adam(b2, db2)}
    data = fitter.dataset(X, y)
    # Present the batch in its given order so the hand-worked gradient sees the same batch.
    fitter._train_chunk(*data, tf.range(5), tf.constant(0), tf.constant(1), tf.constant(5))
    for name, value in expected.items():
        np.testing.assert_allclose(
            fitter.variables[name].numpy(), value, rtol=1e-4, atol=1e-6, err_msg=name
        )


def test_predict_shapes_dtype_and_no_retracing():
    parameters = random_parameters(TUTORIAL_LAYOUT, seed=4, scale=0.1)
    X = np.random.default_rng(0).random((25, 784), dtype=np.float32)
    one = digitnet.predict(X[0], parameters)
    batch = digitnet.predict(X, parameters)
    assert one.shape == (1,) and one.dtype == np.int64
    assert batch.shape == (25,) and batch.dtype == np.int64
    assert batch[0] == one[0]
    assert np.array_equal(batch, numpy_forward(X, parameters).argmax(axis=1))
    from digitnet.training.tutorial import _labels

    traces = _labels.experimental_get_tracing_count()
    for size in (3, 7, 25, 1):
        digitnet.predict(X[:size], parameters)
    assert _labels.experimental_get_tracing_count() == traces


def test_train_parameters_prints_the_tutorial_lines_and_returns_numpy(capsys, fake_mnist_dir):
    X_train, X_test, y_train, y_test = digitnet.load_mnist(
        split="official", data_dir=fake_mnist_dir
    )
    layout = {"l0": 784, "l1": 16, "l2": 10}
    parameters = digitnet.train_parameters(
        X_train, y_train, X_test, y_test, layout, epochs=3, batch_size=20
    )
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines[:3]] == [
        f"Cost after epoch {i}" for i in (1, 2, 3)
    ]
    assert lines[3] == "Training complete!"
    assert lines[4].startswith("Accuracy on the training set: ") and lines[4].endswith(" %")
    assert lines[5].startswith("Accuracy on the test set: ") and lines[5].endswith(" %")
    assert all(isinstance(v, np.ndarray) for v in parameters.values())
    assert parameters["W1"].shape == (16, 784) and parameters["b2"].shape == (10, 1)


def test_same_seed_gives_bit_identical_weights(fake_mnist_dir):
    X_train, X_test, y_train, y_test = digitnet.load_mnist(
        split="official", data_dir=fake_mnist_dir
    )

    def run(seed):
        return digitnet.train_parameters(
            X_train,
            y_train,
            X_test,
            y_test,
            [784, 32, 10],
            epochs=4,
            batch_size=16,
            seed=seed,
            verbose=False,
        )

    first, second, other = run(5), run(5), run(6)
    for name in first:
        assert np.array_equal(first[name], second[name]), name
    assert not np.array_equal(first["W1"], other["W1"])


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_tutorial_network_reaches_its_accuracy_on_real_mnist(mnist_dir, seed):
    """The tutorial's layout with train_parameters' defaults, seed split, every seed 1-5."""
    X_train, X_test, y_train, y_test = digitnet.load_mnist(split="seed", data_dir=mnist_dir)
    parameters = digitnet.train_parameters(
        X_train, y_train, X_test, y_test, TUTORIAL_LAYOUT, seed=seed, verbose=False
    )
    accuracy = float(np.mean(digitnet.predict(X_test, parameters) == y_test.argmax(axis=1)))
    assert 0.965 <= accuracy < 0.995, accuracy  # far above 99.5% would mean a leak
