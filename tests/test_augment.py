"""Tests for digitnet.training.augment: geometry and direction of each transform, determinism, the
elastic field's size and smoothness, ink preservation, parameter validation, and use inside
compiled loops (tf.range, XLA, the training engine)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw

from digitnet.training import augment
from digitnet.training.augment import DEFAULT_AUGMENT, augment_from_config, make_augment

SIZE = 28
NEUTRAL = dict(rotation_degrees=0, shift_pixels=0, scale=0, shear_degrees=0, elastic_alpha=0)


def seed(a: int = 1, b: int = 2) -> tf.Tensor:
    return tf.constant([a, b], tf.int64)


def run(augmenter, images: np.ndarray, step_seed=None) -> np.ndarray:
    """Augment (n, 28, 28) or (n, 784) images; returns (n, 28, 28)."""
    flat = tf.constant(np.asarray(images, np.float32).reshape(len(images), -1))
    return (
        augmenter(flat, seed() if step_seed is None else step_seed).numpy().reshape(-1, SIZE, SIZE)
    )


def gaussian_blob(centre_x=13.5, centre_y=13.5, long=1.5, short=1.5, angle_degrees=0.0):
    """A (28, 28) Gaussian blob; ``angle_degrees`` turns its long axis counter-clockwise as
    displayed (y up), matching the augment convention."""
    rows, columns = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    x, y_up = columns - centre_x, -(rows - centre_y)
    angle = math.radians(angle_degrees)
    along = x * math.cos(angle) + y_up * math.sin(angle)
    across = -x * math.sin(angle) + y_up * math.cos(angle)
    return np.exp(-0.5 * ((along / long) ** 2 + (across / short) ** 2)).astype(np.float32)


def centre_of_mass(image: np.ndarray) -> tuple[float, float]:
    """(x, y) in pixels, y downward."""
    rows, columns = np.mgrid[0 : image.shape[0], 0 : image.shape[1]]
    mass = image.sum()
    return float((columns * image).sum() / mass), float((rows * image).sum() / mass)


def principal_axis_degrees(image: np.ndarray) -> float:
    """Angle of the long axis, counter-clockwise from the x axis as displayed, in (-90, 90]."""
    rows, columns = np.mgrid[0 : image.shape[0], 0 : image.shape[1]].astype(np.float64)
    mass = image.sum()
    x_mean, y_mean = centre_of_mass(image)
    x, y_up = columns - x_mean, -(rows - y_mean)
    xx, yy, xy = (
        (image * x * x).sum() / mass,
        (image * y_up * y_up).sum() / mass,
        (image * x * y_up).sum() / mass,
    )
    return math.degrees(0.5 * math.atan2(2 * xy, xx - yy))


def spread(image: np.ndarray) -> float:
    """RMS distance of the ink from its centre of mass, in pixels."""
    rows, columns = np.mgrid[0 : image.shape[0], 0 : image.shape[1]]
    x_mean, y_mean = centre_of_mass(image)
    return float(
        np.sqrt((image * ((columns - x_mean) ** 2 + (rows - y_mean) ** 2)).sum() / image.sum())
    )


def drawn_digits() -> np.ndarray:
    """Handwriting-like (n, 28, 28) digits: pen strokes drawn at 4x and box-filtered down,
    kept within MNIST's central 20x20 box like the real data."""
    strokes = [
        [("ellipse", (36, 16, 76, 96))],  # 0
        [("line", [(60, 16), (52, 96)])],  # 1
        [("line", [(34, 20), (78, 20), (48, 96)]), ("line", [(44, 58), (70, 58)])],  # 7
        [("line", [(62, 16), (32, 70), (82, 70)]), ("line", [(66, 40), (64, 96)])],  # 4
        [("arc", (34, 14, 78, 56, 180, 30)), ("line", [(76, 42), (34, 96), (80, 96)])],  # 2
        [("ellipse", (38, 16, 74, 54)), ("ellipse", (34, 54, 78, 96))],  # 8
    ]
    images = []
    for shapes in strokes:
        canvas = Image.new("L", (4 * SIZE, 4 * SIZE), 0)
        draw = ImageDraw.Draw(canvas)
        for kind, *geometry in shapes:
            if kind == "ellipse":
                draw.ellipse(geometry[0], outline=255, width=9)
            elif kind == "line":
                draw.line(geometry[0], fill=255, width=9, joint="curve")
            else:
                left, top, right, bottom, start, end = geometry[0]
                draw.arc((left, top, right, bottom), start, end, fill=255, width=9)
        images.append(np.asarray(canvas.resize((SIZE, SIZE), Image.BOX), np.float32) / 255)
    return np.stack(images)


# ------------------------------------------------------------------------------ basic contract


@pytest.mark.parametrize("batch", [1, 7, 128])
def test_shape_dtype_and_range(batch):
    images = np.random.default_rng(0).random((batch, SIZE * SIZE), dtype=np.float32)
    images[: batch // 2] = 1.0  # saturated images must not overshoot 1 after interpolation
    out = make_augment()(tf.constant(images), seed(3, 4))
    assert out.shape == (batch, SIZE * SIZE) and out.dtype == tf.float32
    values = out.numpy()
    assert np.all(np.isfinite(values)) and values.min() >= 0.0 and values.max() <= 1.0


def test_same_seed_is_bit_identical_and_seeds_differ():
    digits = drawn_digits()
    first, second = make_augment(), make_augment()  # separate instances, separate graphs
    a = run(first, digits, seed(5, 9))
    b = run(second, digits, seed(5, 9))
    assert np.array_equal(a, b)
    compiled = tf.function(first)
    c = compiled(tf.constant(digits.reshape(len(digits), -1)), seed(5, 9)).numpy()
    assert np.array_equal(
        c, compiled(tf.constant(digits.reshape(len(digits), -1)), seed(5, 9)).numpy()
    )
    for other in (seed(5, 10), seed(6, 9)):
        different = run(first, digits, other)
        # Every image gets its own draw, so every image changes, not just some.
        assert np.all(np.abs(different - a).reshape(len(digits), -1).max(axis=1) > 0.05)


def test_images_in_one_batch_get_different_transforms():
    digit = drawn_digits()[:1]
    out = run(make_augment(), np.repeat(digit, 4, axis=0))
    for i in range(1, 4):
        assert np.abs(out[i] - out[0]).max() > 0.05


@pytest.mark.parametrize(
    "neutral",
    [
        NEUTRAL,
        dict(
            rotation_degrees=[0, 0],
            shift_pixels=[[0, 0], [0, 0]],
            scale=[1, 1],
            shear_degrees=[0, 0],
            elastic_alpha=0.0,
            elastic_sigma=3.0,
        ),
        dict(DEFAULT_AUGMENT, probability=0.0),
    ],
)
def test_neutral_parameters_are_the_identity(neutral):
    images = np.concatenate(
        [drawn_digits(), np.random.default_rng(1).random((4, SIZE, SIZE), np.float32)]
    )
    out = run(make_augment(**neutral), images)
    np.testing.assert_allclose(out, images, atol=1e-6, rtol=0)


# ------------------------------------------------------------------------------ geometry


@pytest.mark.parametrize("dx, dy", [(2, 0), (0, 2), (-3, 1.5)])
def test_fixed_shift_moves_centre_of_mass(dx, dy):
    blob = gaussian_blob(12.0, 14.0, 2.0, 2.0)
    out = run(make_augment(**dict(NEUTRAL, shift_pixels=[[dx, dx], [dy, dy]])), blob[None])[0]
    (x0, y0), (x1, y1) = centre_of_mass(blob), centre_of_mass(out)
    assert x1 - x0 == pytest.approx(dx, abs=0.1)  # positive x = right
    assert y1 - y0 == pytest.approx(dy, abs=0.1)  # positive y = down
    assert out.sum() == pytest.approx(blob.sum(), rel=1e-3)


@pytest.mark.parametrize("angle", [20.0, -15.0, 8.0])
def test_fixed_rotation_turns_the_principal_axis_counter_clockwise(angle):
    bar = gaussian_blob(long=6.0, short=1.5, angle_degrees=0.0)
    assert principal_axis_degrees(bar) == pytest.approx(0.0, abs=0.1)
    out = run(make_augment(**dict(NEUTRAL, rotation_degrees=[angle, angle])), bar[None])[0]
    assert principal_axis_degrees(out) == pytest.approx(angle, abs=1.0)
    # About the image centre: the centred bar stays put.
    assert centre_of_mass(out) == pytest.approx((13.5, 13.5), abs=0.1)


def test_rotation_range_is_symmetric_and_bounded():
    bar = gaussian_blob(long=6.0, short=1.5)
    out = run(
        make_augment(**dict(NEUTRAL, rotation_degrees=10)), np.repeat(bar[None], 64, 0), seed(11, 0)
    )
    angles = np.array([principal_axis_degrees(image) for image in out])
    assert np.all(np.abs(angles) <= 10.5)
    assert angles.min() < -5 and angles.max() > 5


def test_positive_shear_leans_forward_like_italics():
    upright = gaussian_blob(long=7.0, short=1.2, angle_degrees=90.0)
    out = run(make_augment(**dict(NEUTRAL, shear_degrees=[15, 15])), upright[None])[0]
    top_x, _ = centre_of_mass(np.where(np.arange(SIZE)[:, None] < 12, out, 0))
    bottom_x, _ = centre_of_mass(np.where(np.arange(SIZE)[:, None] > 15, out, 0))
    assert top_x > bottom_x + 1.0
    # The long axis leans right by the shear angle: 90 - 15 degrees from the x axis.
    assert principal_axis_degrees(out) == pytest.approx(75.0, abs=1.5)


@pytest.mark.parametrize("factor", [0.8, 1.2])
def test_fixed_scale_scales_the_ink_spread(factor):
    blob = gaussian_blob(long=3.0, short=2.0, angle_degrees=30.0)
    out = run(make_augment(**dict(NEUTRAL, scale=[factor, factor])), blob[None])[0]
    assert spread(out) / spread(blob) == pytest.approx(factor, rel=0.02)
    assert centre_of_mass(out) == pytest.approx((13.5, 13.5), abs=0.05)


def test_content_moved_out_of_frame_becomes_zero_not_smeared():
    image = np.zeros((1, SIZE, SIZE), np.float32)
    image[0, :, -3:] = 1.0  # a bright stripe at the right edge
    out = run(make_augment(**dict(NEUTRAL, shift_pixels=[[5, 5], [0, 0]])), image)[0]
    assert out.max() == 0.0  # gone, not clamped to the border (edge-replicate would keep it)
    out = run(make_augment(**dict(NEUTRAL, shift_pixels=[[-5, -5], [0, 0]])), image)[0]
    assert out[:, -5:].max() == 0.0 and out[:, -8:-5].min() == 1.0


# ------------------------------------------------------------------------------ elastic field


def measured_displacement(augmenter, count: int, step_seed) -> tuple[np.ndarray, np.ndarray]:
    """Read the displacement a pure-elastic augmenter applies, via linear ramps: bilinear
    sampling reproduces a linear function exactly, so ramp_out - ramp_in = displacement / 40.
    Returns (dx, dy) each (count, 14, 14), from the 14x14 interior (never sampled outside)."""
    rows, columns = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    ramps = np.stack([0.15 + columns / 40.0, 0.15 + rows / 40.0])  # values within (0, 1)
    out = run(augmenter, np.tile(ramps, (count, 1, 1)), step_seed).reshape(count, 2, SIZE, SIZE)
    displacement = (out - ramps[None]) * 40.0
    interior = slice(7, 21)
    return displacement[:, 0, interior, interior], displacement[:, 1, interior, interior]


def test_elastic_displacement_has_the_requested_size():
    dx, dy = measured_displacement(
        make_augment(**dict(NEUTRAL, elastic_alpha=1.5, elastic_sigma=4.0)), 500, seed(2, 3)
    )
    for component in (dx, dy):
        # The field is correlated over the whole interior (its mean there varies by about
        # 0.7 alpha from image to image), so the mean over 500 images is only good to ~0.05.
        assert abs(component.mean()) < 0.25
        assert np.sqrt((component**2).mean()) == pytest.approx(1.5, rel=0.1)
    assert abs(np.corrcoef(dx.ravel(), dy.ravel())[0, 1]) < 0.1  # independent components


def test_elastic_field_is_smooth_for_large_sigma_and_rough_for_small():
    def neighbour_correlation(sigma: float) -> float:
        dx, _ = measured_displacement(
            make_augment(**dict(NEUTRAL, elastic_alpha=1.0, elastic_sigma=sigma)), 100, seed(4, 5)
        )
        return float(np.corrcoef(dx[:, :, :-1].ravel(), dx[:, :, 1:].ravel())[0, 1])

    smooth, rough = neighbour_correlation(8.0), neighbour_correlation(1.0)
    # A Gaussian correlation of standard deviation sigma * sqrt(2): exp(-1 / (4 sigma^2)).
    assert smooth == pytest.approx(math.exp(-1 / (4 * 8.0**2)), abs=0.01)
    assert rough < 0.9


def test_elastic_field_has_the_same_size_at_the_edges_as_in_the_centre():
    dx, dy = augment.elastic_field(seed(7, 7), 400, (SIZE, SIZE), alpha=1.0, sigma=5.0)
    dx = dx.numpy()
    assert dx.shape == (400, SIZE, SIZE) and dy.shape == (400, SIZE, SIZE)
    rms = np.sqrt((dx**2).mean(axis=0))
    for region in (rms[0, 0], rms[0, :].mean(), rms[:, -1].mean(), rms[12:16, 12:16].mean()):
        assert region == pytest.approx(1.0, rel=0.15)


def test_knot_matrix_rows_have_unit_length():
    for size, sigma in [(28, 5.0), (28, 0.5), (20, 12.0)]:
        weights = augment.knot_matrix(size, sigma)
        assert weights.shape[0] == size
        np.testing.assert_allclose((weights.astype(np.float64) ** 2).sum(axis=1), 1.0, rtol=1e-5)


# ------------------------------------------------------------------------------ ink and digits


def test_default_augmentation_roughly_preserves_ink_on_drawn_digits():
    digits = np.repeat(drawn_digits(), 40, axis=0)
    out = run(make_augment(), digits, seed(8, 1))
    ratio = out.reshape(len(out), -1).sum(1) / digits.reshape(len(digits), -1).sum(1)
    # Scale alone changes ink by up to +-21% (area), elastic compression by about +-13%, so a
    # few percent of images land just outside +-25%; none should lose or double its digit.
    assert np.median(ratio) == pytest.approx(1.0, abs=0.05)
    assert np.mean(np.abs(ratio - 1) <= 0.25) >= 0.9
    assert ratio.min() > 0.5 and ratio.max() < 1.6


def test_default_augmentation_roughly_preserves_ink_on_real_mnist(mnist_dir):
    from digitnet.data.mnist import load_mnist_arrays

    images = load_mnist_arrays(data_dir=mnist_dir).test_images[:1000].astype(np.float32) / 255
    out = run(make_augment(), images, seed(8, 2))
    ratio = out.reshape(len(out), -1).sum(1) / images.reshape(len(images), -1).sum(1)
    assert np.median(ratio) == pytest.approx(1.0, abs=0.05)
    assert np.mean(np.abs(ratio - 1) <= 0.25) >= 0.9
    assert ratio.min() > 0.5 and ratio.max() < 1.6


def test_default_augmentation_keeps_digits_in_frame():
    digits = np.repeat(drawn_digits(), 40, axis=0)
    out = run(make_augment(), digits, seed(9, 1))
    border = np.concatenate(
        [
            out[:, :1],
            out[:, -1:],
            out[:, :, :1].transpose(0, 2, 1),
            out[:, :, -1:].transpose(0, 2, 1),
        ],
        axis=2,
    )
    assert np.mean(border.max(axis=(1, 2)) > 0.5) < 0.05


# ------------------------------------------------------------------------------ probability


def test_probability_augments_about_that_fraction():
    digits = np.repeat(drawn_digits(), 50, axis=0)
    out = run(make_augment(probability=0.3), digits, seed(10, 1))
    unchanged = np.all(out == digits, axis=(1, 2))
    assert 0.6 < unchanged.mean() < 0.8


# ------------------------------------------------------------------------------ compiled use


def test_inside_a_tf_function_with_a_tf_range_loop_matches_direct_calls():
    augmenter = make_augment()
    images = tf.constant(drawn_digits().reshape(6, -1))

    @tf.function
    def loop(images, steps):
        outputs = tf.TensorArray(tf.float32, size=steps)
        for step in tf.range(steps):
            step_seed = tf.stack([tf.constant(3, tf.int64), tf.cast(step, tf.int64)])
            outputs = outputs.write(step, augmenter(images, step_seed))
        return outputs.stack()

    looped = loop(images, tf.constant(3)).numpy()
    compiled = tf.function(augmenter)
    for step in range(3):
        np.testing.assert_array_equal(looped[step], compiled(images, seed(3, step)).numpy())
        # Eager kernels (no oneDNN graph rewrites) may differ in the last bits.
        np.testing.assert_allclose(
            looped[step], augmenter(images, seed(3, step)).numpy(), atol=1e-5, rtol=0
        )
    assert not np.allclose(looped[0], looped[1])


def test_compiles_under_xla_and_draws_the_same_transforms():
    augmenter = make_augment()
    images = tf.constant(np.repeat(drawn_digits(), 4, axis=0).reshape(24, -1))
    plain = tf.function(augmenter)(images, seed(12, 3)).numpy()
    compiled = tf.function(augmenter, jit_compile=True)
    xla = compiled(images, seed(12, 3)).numpy()
    assert np.array_equal(xla, compiled(images, seed(12, 3)).numpy())
    # Same draws (the raw random bits agree); XLA's own sin/cos/matmul differ in the last bits.
    np.testing.assert_allclose(xla, plain, atol=1e-4, rtol=0)


def test_training_engine_runs_with_augmentation_and_reproduces():
    from digitnet.training.engine import Fitter

    architecture = {
        "input_shape": [28, 28, 1],
        "layers": [
            {"type": "conv", "filters": 4, "kernel": 3, "stride": 2},
            {"type": "flatten"},
            {"type": "dense", "units": 10, "activation": "softmax"},
        ],
    }
    rng = np.random.default_rng(0)
    X = np.tile(drawn_digits().reshape(6, -1), (8, 1))
    y = np.eye(10, dtype=np.float32)[rng.integers(0, 10, len(X))]

    def train() -> dict:
        fitter = Fitter(
            architecture, cost="cross_entropy", batch_size=16, seed=4, augment=make_augment()
        )
        data = Fitter.dataset(X, y)
        for epoch in range(2):
            assert math.isfinite(fitter.train_epoch(data, epoch))
        return fitter.parameters()

    first, second = train(), train()
    for name in first:
        assert np.array_equal(first[name], second[name]), name


# ------------------------------------------------------------------------------ parameters


def test_defaults_are_json_and_round_trip_through_a_config():
    assert json.loads(json.dumps(DEFAULT_AUGMENT)) == DEFAULT_AUGMENT
    from_defaults = augment_from_config({})
    recorded = json.loads(json.dumps(from_defaults.parameters))
    digits = drawn_digits()
    np.testing.assert_array_equal(
        run(augment_from_config(recorded), digits), run(from_defaults, digits)
    )
    np.testing.assert_array_equal(run(make_augment(), digits), run(from_defaults, digits))


def test_augment_from_config_none_means_off_and_overrides_merge():
    assert augment_from_config(None) is None
    augmenter = augment_from_config({"rotation_degrees": 5, "elastic_alpha": 0})
    assert augmenter.parameters["rotation_degrees"] == [-5.0, 5.0]
    assert augmenter.parameters["elastic_alpha"] == 0.0
    assert augmenter.parameters["shift_pixels"] == [[-2.0, 2.0], [-2.0, 2.0]]
    with pytest.raises(ValueError, match="unknown parameter.*rotation"):
        augment_from_config({"rotation": 5})
    with pytest.raises(ValueError):
        augment_from_config([("rotation_degrees", 5)])


def test_parameter_forms_normalise():
    parameters = augment.validate_parameters(
        rotation_degrees=[-3, 7], shift_pixels=[-1, 2], scale=0.1, shear_degrees=4
    )
    assert parameters["rotation_degrees"] == [-3.0, 7.0]
    assert parameters["shift_pixels"] == [[-1.0, 2.0], [-1.0, 2.0]]
    assert parameters["scale"] == pytest.approx([0.9, 1.1])
    assert parameters["shear_degrees"] == [-4.0, 4.0]


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(rotation_degrees=-5), "rotation_degrees"),
        (dict(rotation_degrees=[10, -10]), "low > high"),
        (dict(rotation_degrees=200), "rotation_degrees"),
        (dict(rotation_degrees="10"), "rotation_degrees"),
        (dict(rotation_degrees=[1, 2, 3]), "rotation_degrees"),
        (dict(shear_degrees=80), "shear_degrees"),
        (dict(shift_pixels=float("nan")), "shift_pixels"),
        (dict(shift_pixels=[[0, 1], [3, 2]]), "low > high"),
        (dict(shift_pixels=40), "shift_pixels"),
        (dict(scale=1.1), "pair"),
        (dict(scale=[0, 1.1]), "scale"),
        (dict(scale=[1.2, 1.1]), "low > high"),
        (dict(elastic_alpha=34), "Simard"),
        (dict(elastic_alpha=-1), "elastic_alpha"),
        (dict(elastic_sigma=0), "elastic_sigma"),
        (dict(probability=1.5), "probability"),
        (dict(probability=True), "probability"),
        (dict(image_shape=(28,)), "image_shape"),
        (dict(image_shape=(28.0, 28)), "image_shape"),
    ],
)
def test_bad_parameters_raise_value_error(bad, message):
    with pytest.raises(ValueError, match=message):
        make_augment(**bad)


def test_wrong_image_width_is_refused():
    with pytest.raises(ValueError, match="784"):
        make_augment()(tf.zeros([2, 100]), seed())


def test_other_image_shapes_work():
    image = gaussian_blob(12.0, 13.5, 2.0, 2.0)[:, :20]  # 28 rows x 20 columns
    augmenter = make_augment(**dict(NEUTRAL, shift_pixels=[[2, 2], [0, 0]], image_shape=(28, 20)))
    out = augmenter(tf.constant(image.reshape(1, -1)), seed()).numpy().reshape(28, 20)
    assert centre_of_mass(out)[0] - centre_of_mass(image)[0] == pytest.approx(2.0, abs=0.1)


# ------------------------------------------------------------------------------ properties

ranges = st.floats(0, 30, allow_nan=False)


@settings(max_examples=25, deadline=None)
@given(
    rotation=ranges,
    shift=st.floats(0, 6),
    scale=st.floats(0, 0.5),
    shear=st.floats(0, 40),
    alpha=st.floats(0, 5),
    sigma=st.floats(0.5, 28),
    probability=st.floats(0, 1),
    seeds=st.tuples(st.integers(-(2**62), 2**62), st.integers(-(2**62), 2**62)),
)
def test_any_valid_parameters_give_valid_images(
    rotation, shift, scale, shear, alpha, sigma, probability, seeds
):
    augmenter = make_augment(rotation, shift, scale, shear, alpha, sigma, probability)
    images = np.random.default_rng(abs(seeds[0]) % 1000).random((3, SIZE * SIZE), np.float32)
    out = augmenter(tf.constant(images), tf.constant(seeds, tf.int64)).numpy()
    assert out.shape == images.shape
    assert np.all(np.isfinite(out)) and out.min() >= 0 and out.max() <= 1
