"""On-the-fly data augmentation for MNIST-form images: in-graph, stateless, deterministic.

``make_augment(...)`` returns ``augment(images, seed) -> images`` for the training engine
(:mod:`digitnet.training.engine`), which calls it inside a compiled ``tf.function`` once per
optimiser step.
``images`` is float32 ``(batch, height * width)`` in [0, 1], white ink on black, row-major;
``seed`` is an int64 ``(2,)`` stateless seed. The same seed gives bit-identical output, so a
training run resumed from a checkpoint sees exactly the images the uninterrupted run would.

Each image gets a random affine transform about the image centre (rotation, isotropic scale,
horizontal shear, shift) and a smooth random elastic displacement (Simard, Steinkraus & Platt,
2003). Both are folded into ONE sampling grid, which is then read with one bilinear gather
(zero outside the frame): resampling once keeps strokes sharper than chaining two resamplers,
and a plain gather is cheap and compiles under XLA.

Conventions (screen coordinates: x = column to the right, y = row downward, pixel centres at
integers, the centre of a 28x28 image is (13.5, 13.5)):

- a positive rotation turns the digit counter-clockwise as displayed;
- a positive shear slants it forward like italics (the top moves right, the bottom left);
- a positive shift moves it right (x) and down (y); scale > 1 enlarges it.

The elastic field. Simard et al. draw uniform(-1, 1) noise at every pixel, smooth it with a
Gaussian of standard deviation sigma and multiply by alpha; the size of the result then
depends on sigma as well as alpha (its RMS is about ``alpha / (6.14 * sigma)`` pixels, so their
alpha = 34, sigma = 4 moves pixels by about 1.4 px RMS). Here ``elastic_alpha`` is that RMS
displacement per axis directly, in pixels, and ``elastic_sigma`` keeps Simard's meaning (the
field's correlation length: neighbouring displacements correlate as a Gaussian of standard
deviation sigma * sqrt(2) in their distance). The field is built from unit-variance uniform noise
on a coarse lattice of knots one sigma apart, each knot spreading a Gaussian bump of width sigma:
``field = Gy @ noise @ Gx^T``. With knots one sigma apart this matches the smoothed full
resolution noise to about 1e-4 in covariance (the sum of Gaussian bumps is then practically
translation invariant) at a small fraction of the cost: a 28x28 image with sigma = 5 needs an
11x11 lattice instead of a convolution over 28x28 noise. Rows of ``Gy`` and ``Gx`` are scaled to
unit length, which makes the variance exactly 1 at every pixel, edges included (the lattice
extends 2 sigma beyond the frame for the same reason). Measured per 1000 images on the 2-core
CPU: without XLA the lattice costs about what 7x7 noise + ``tf.image.resize`` does (6 ms, half
the full-resolution depthwise convolution), and under XLA it is the only one of the three that
stays cheap (12 ms against 260 ms for resize and 1100 ms for the convolution); resize would
also leave creases along its grid lines, where bilinear interpolation has a kink.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import tensorflow as tf

from digitnet.errors import ConfigError

Augment = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]

# Why these values: MNIST digits are centred by mass in a 20x20 box inside 28x28, so 2 px of
# shift plus 10% of scale keeps nearly all ink in frame (at 2 px, 1% of test digits lose more
# than 2% of their ink off the edge; at 3 px, 3%). +-10 degrees of rotation and of shear cover
# the slant seen across writers without turning a 1 into a 7. The elastic field, 0.75 px RMS
# with sigma 5, strains strokes by about +-11% (RMS of alpha / (sigma * sqrt 2)), close to
# Ciresan et al. 2010 (sigma 6, Simard alpha 36: 1 px RMS) and about half the displacement of
# Simard's alpha 34, sigma 4 (1.4 px RMS), at which some 9s start to look like 4s.
DEFAULT_AUGMENT: dict[str, Any] = {
    "rotation_degrees": 10.0,
    "shift_pixels": 2.0,
    "scale": [0.9, 1.1],
    "shear_degrees": 10.0,
    "elastic_alpha": 0.75,
    "elastic_sigma": 5.0,
    "probability": 1.0,
    "image_shape": [28, 28],
}
"""Mild, MNIST-sized defaults; JSON-able so a training config can record them verbatim."""

# Fold this into the step seed before drawing, so augmentation never shares a Philox key with
# dropout, which is keyed by the same step seed.
_SEED_SALT = 0x41756720  # "Aug "
# Independent seeds per kind of draw, by fixed position: switching one transform off or
# changing its range leaves the draws of all the others unchanged.
_APPLY, _ROTATION, _SCALE, _SHEAR, _SHIFT, _ELASTIC = range(6)
_SEED_COUNT = 6
# Philox explicitly rather than "auto_select", so the stream cannot change with the device.
_ALGORITHM = "philox"
_SQRT_3 = math.sqrt(3.0)
# Beyond these the transform no longer produces a digit; most likely a unit mistake.
_MAX_ROTATION_DEGREES = 180.0
_MAX_SHEAR_DEGREES = 60.0


# -------------------------------------------------------------------------- parameters


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ConfigError(f"augment: {name} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ConfigError(f"augment: {name} must be finite, got {value}")
    return value


def _pair(name: str, value: Any) -> list[float]:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 2:
        raise ConfigError(f"augment: {name} must be a number or a [low, high] pair, got {value!r}")
    low, high = _number(name, value[0]), _number(name, value[1])
    if low > high:
        raise ConfigError(f"augment: {name} range [{low}, {high}] has low > high")
    return [low, high]


def _symmetric_range(name: str, value: Any, limit: float) -> list[float]:
    """``x`` -> ``[-x, x]``; ``[low, high]`` as given; both within ``[-limit, limit]``."""
    if hasattr(value, "__len__") and not isinstance(value, (str, bytes)):
        low, high = _pair(name, value)
    else:
        amount = _number(name, value)
        if amount < 0:
            raise ConfigError(f"augment: {name} = {amount} must be >= 0 (it means +-{name})")
        low, high = -amount, amount
    if low < -limit or high > limit:
        raise ConfigError(
            f"augment: {name} range [{low}, {high}] must lie within [-{limit:g}, {limit:g}]"
        )
    return [low, high]


def validate_parameters(
    rotation_degrees: Any = 0.0,
    shift_pixels: Any = 0.0,
    scale: Any = 0.0,
    shear_degrees: Any = 0.0,
    elastic_alpha: Any = 0.0,
    elastic_sigma: Any = DEFAULT_AUGMENT["elastic_sigma"],
    probability: Any = 1.0,
    image_shape: Any = (28, 28),
) -> dict[str, Any]:
    """Check every parameter and return them in one explicit JSON-able form.

    Accepted forms (see :func:`make_augment` for meanings): a number ``x`` for a range
    ``[-x, x]`` (for ``scale``: ``[1 - x, 1 + x]``) or an explicit ``[low, high]`` pair;
    ``shift_pixels`` also takes ``[[x_low, x_high], [y_low, y_high]]`` for separate axes.
    The result has every range as a pair: ``shift_pixels`` as ``[[x range], [y range]]``.

    Raises ValueError naming the parameter for anything out of range or malformed.
    """
    if (
        isinstance(image_shape, (str, bytes))
        or not hasattr(image_shape, "__len__")
        or len(image_shape) != 2
        or not all(
            isinstance(n, (int, np.integer)) and not isinstance(n, bool) and n >= 2
            for n in image_shape
        )
    ):
        raise ConfigError(
            f"augment: image_shape must be [height, width] of integers >= 2, got {image_shape!r}"
        )
    height, width = int(image_shape[0]), int(image_shape[1])

    rotation = _symmetric_range("rotation_degrees", rotation_degrees, _MAX_ROTATION_DEGREES)
    shear = _symmetric_range("shear_degrees", shear_degrees, _MAX_SHEAR_DEGREES)

    if (
        hasattr(shift_pixels, "__len__")
        and not isinstance(shift_pixels, (str, bytes))
        and len(shift_pixels) == 2
        and all(
            hasattr(axis, "__len__") and not isinstance(axis, (str, bytes)) for axis in shift_pixels
        )
    ):
        shift = [
            _symmetric_range("shift_pixels (x)", shift_pixels[0], width),
            _symmetric_range("shift_pixels (y)", shift_pixels[1], height),
        ]
    else:
        both = _symmetric_range("shift_pixels", shift_pixels, min(height, width))
        shift = [list(both), list(both)]

    if hasattr(scale, "__len__") and not isinstance(scale, (str, bytes)):
        scale_range = _pair("scale", scale)
        if scale_range[0] <= 0:
            raise ConfigError(f"augment: scale factors {scale_range} must be > 0")
    else:
        amount = _number("scale", scale)
        if not 0 <= amount < 1:
            raise ConfigError(
                f"augment: scale = {amount} as a single number means factors "
                f"[1 - x, 1 + x] and must be in [0, 1); give factors as a pair, "
                f"e.g. [0.9, 1.1]"
            )
        scale_range = [1.0 - amount, 1.0 + amount]
    if scale_range[1] > 4 or scale_range[0] < 0.25:
        raise ConfigError(f"augment: scale factors {scale_range} must lie within [0.25, 4]")

    alpha = _number("elastic_alpha", elastic_alpha)
    sigma = _number("elastic_sigma", elastic_sigma)
    if alpha < 0:
        raise ConfigError(f"augment: elastic_alpha = {alpha} must be >= 0 (pixels RMS)")
    if alpha > min(height, width) / 4:
        raise ConfigError(
            f"augment: elastic_alpha = {alpha} px RMS displacement tears a "
            f"{height}x{width} image apart (limit {min(height, width) / 4:g}); note that it is "
            f"in pixels, not Simard's unit: their alpha = 34 at sigma = 4 is about 1.4 here"
        )
    if not 0.5 <= sigma <= max(height, width):
        raise ConfigError(
            f"augment: elastic_sigma = {sigma} must be in [0.5, {max(height, width)}] pixels"
        )

    probability = _number("probability", probability)
    if not 0 <= probability <= 1:
        raise ConfigError(f"augment: probability = {probability} must be in [0, 1]")

    return {
        "rotation_degrees": rotation,
        "shift_pixels": shift,
        "scale": scale_range,
        "shear_degrees": shear,
        "elastic_alpha": alpha,
        "elastic_sigma": sigma,
        "probability": probability,
        "image_shape": [height, width],
    }


# -------------------------------------------------------------------------- building blocks


def knot_matrix(size: int, sigma: float) -> np.ndarray:
    """Gaussian weights ``(size, knots)`` from lattice knots to pixels along one axis.

    Knots sit one ``sigma`` apart (at least one pixel), symmetric about the axis centre and
    reaching 2 sigma beyond both edges; each row has unit Euclidean length, so unit-variance
    knot noise gives unit variance at every pixel.
    """
    spacing = max(float(sigma), 1.0)
    centre = (size - 1) / 2.0
    half_count = math.ceil((centre + 2.0 * sigma) / spacing)
    knots = centre + spacing * np.arange(-half_count, half_count + 1)
    pixels = np.arange(size, dtype=np.float64)
    weights = np.exp(-((pixels[:, None] - knots[None, :]) ** 2) / (2.0 * sigma**2))
    weights /= np.sqrt((weights**2).sum(axis=1, keepdims=True))
    return weights.astype(np.float32)


def uniform(seed: tf.Tensor, shape) -> tf.Tensor:
    """Float32 uniform in [0, 1) of ``shape`` (a 1-D int tensor or list), keyed by ``seed``.

    Made from raw 32-bit Philox draws rather than by ``tf.random.stateless_uniform`` with a
    float dtype, whose XLA kernel returns different numbers from the regular kernel for the
    same seed and algorithm (TensorFlow 2.21; tensorflow/tensorflow#117644). The raw integer
    draws agree, and the conversion below is exact, so the same seed draws the same
    transforms with or without ``jit_compile``.
    """
    bits = tf.random.stateless_uniform(
        shape, seed=seed, dtype=tf.uint32, minval=None, maxval=None, alg=_ALGORITHM
    )
    # The top 24 bits fit a float32 mantissa exactly: k / 2**24 for k in [0, 2**24).
    return tf.cast(tf.bitwise.right_shift(bits, tf.constant(8, tf.uint32)), tf.float32) * (
        1.0 / (1 << 24)
    )


def elastic_field(
    seed: tf.Tensor, batch: tf.Tensor, image_shape: tuple[int, int], alpha: float, sigma: float
) -> tuple[tf.Tensor, tf.Tensor]:
    """Smooth random displacements ``(dx, dy)``, each float32 ``(batch, height, width)``.

    Each component is a smooth, zero-mean, close to Gaussian field with standard deviation
    ``alpha`` pixels at every pixel and correlation length ``sigma`` pixels (see the module
    docstring). ``batch`` is a scalar int32 tensor (or int); ``seed`` an int64 (2,) seed.
    """
    height, width = image_shape
    rows = tf.constant(knot_matrix(height, sigma))  # (height, ky)
    columns = tf.constant(knot_matrix(width, sigma))  # (width, kx)
    ky, kx = rows.shape[1], columns.shape[1]
    # Uniform noise of unit variance, as in Simard et al.; summed over the ~10 knots near each
    # pixel it is close to Gaussian. (stateless_normal is also slow under XLA on CPU.)
    noise = (2.0 * uniform(seed, tf.stack([2 * batch, ky, kx])) - 1.0) * _SQRT_3
    # One plain 2-D matmul (knots -> columns) and one batched against the shared row matrix
    # (knots -> rows): no transposes, which cost more than the arithmetic at these sizes.
    wide = tf.reshape(
        tf.matmul(tf.reshape(noise, [-1, kx]), columns, transpose_b=True),
        tf.stack([2 * batch, ky, width]),
    )
    field = alpha * tf.matmul(tf.broadcast_to(rows, tf.stack([2 * batch, height, ky])), wide)
    return field[:batch], field[batch:]


def bilinear_sample(images: tf.Tensor, source_x: tf.Tensor, source_y: tf.Tensor) -> tf.Tensor:
    """Read ``images`` (batch, height, width) at ``source_x``, ``source_y`` (same shape, in
    pixels) by bilinear interpolation, with zero outside the frame; returns (batch, h, w).
    """
    batch = tf.shape(images)[0]
    height, width = images.shape[1], images.shape[2]
    # One pixel of zeros before and two after each axis lets every clipped coordinate read
    # its four neighbours from the padded array without per-corner bounds masks: coordinates
    # clipped to [-1, size] land on zeros, and interpolation between the edge pixel and the
    # zero beyond it is exactly zero fill.
    padded = tf.pad(images, [[0, 0], [1, 2], [1, 2]])
    padded_width, pixels = width + 3, (height + 3) * (width + 3)
    source_x = tf.clip_by_value(source_x, -1.0, float(width))
    source_y = tf.clip_by_value(source_y, -1.0, float(height))
    floor_x, floor_y = tf.floor(source_x), tf.floor(source_y)
    weight_x, weight_y = source_x - floor_x, source_y - floor_y
    column = tf.cast(floor_x, tf.int32) + 1
    row = tf.cast(floor_y, tf.int32) + 1
    top_left = tf.range(batch)[:, None, None] * pixels + row * padded_width + column
    flat = tf.reshape(padded, [-1])
    # Four separate gathers, not one over stacked indices: XLA on CPU runs the stacked form
    # about 20 times slower (53 ms against 2 ms for 1000 images). gather_nd rather than gather:
    # the same under XLA, about 35% less CPU without it (the gathers are most of the cost).
    corners = [
        tf.gather_nd(flat, (top_left + offset)[..., None])
        for offset in (0, 1, padded_width, padded_width + 1)
    ]
    top = corners[0] + weight_x * (corners[1] - corners[0])
    bottom = corners[2] + weight_x * (corners[3] - corners[2])
    return top + weight_y * (bottom - top)


# -------------------------------------------------------------------------- the augmenter


class Augmenter:
    """``augment(images, seed) -> images``; build one with :func:`make_augment`.

    ``parameters`` holds the validated parameters in explicit form (JSON-able).
    """

    def __init__(self, parameters: Mapping[str, Any]):
        self.parameters = dict(parameters)
        height, width = self.parameters["image_shape"]
        self._shape = (height, width)
        # Pixel coordinates relative to the image centre, which every transform is about.
        # NumPy, not tensors: an eager tensor made here would be captured by every graph.
        self._x = np.arange(width, dtype=np.float32)[None, :] - np.float32((width - 1) / 2)
        self._y = np.arange(height, dtype=np.float32)[:, None] - np.float32((height - 1) / 2)

    def __repr__(self) -> str:
        return f"Augmenter({self.parameters})"

    def __call__(self, images: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        """Augment float32 ``images`` (batch, height * width) in [0, 1] with the stateless
        int64 ``seed`` (2,); returns float32 (batch, height * width) in [0, 1]."""
        parameters = self.parameters
        height, width = self._shape
        images = tf.convert_to_tensor(images, tf.float32)
        if images.shape.rank != 2 or (
            images.shape[1] is not None and images.shape[1] != height * width
        ):
            raise ConfigError(
                f"augment: images must be (batch, {height * width}) for "
                f"image_shape {[height, width]}, got {images.shape}"
            )
        if parameters["probability"] == 0:
            return images
        batch = tf.shape(images)[0]
        seeds = tf.random.experimental.stateless_split(
            tf.random.experimental.stateless_fold_in(
                tf.cast(seed, tf.int64), _SEED_SALT, alg=_ALGORITHM
            ),
            num=_SEED_COUNT,
            alg=_ALGORITHM,
        )

        def draw(index: int, *bounds) -> tf.Tensor:
            """One uniform value per image in each ``[low, high]`` of ``bounds``:
            (len(bounds), batch, 1, 1), shaped to broadcast over (batch, height, width)."""
            low, high = (np.array(side, np.float32).reshape(-1, 1, 1, 1) for side in zip(*bounds))
            return low + (high - low) * uniform(seeds[index], tf.stack([len(bounds), batch, 1, 1]))

        radians = math.pi / 180.0
        angle = draw(_ROTATION, parameters["rotation_degrees"])[0] * radians
        factor = draw(_SCALE, parameters["scale"])[0]
        slant = tf.tan(draw(_SHEAR, parameters["shear_degrees"])[0] * radians)
        shift_x, shift_y = tf.unstack(draw(_SHIFT, *parameters["shift_pixels"]))

        # Output pixel p comes from source A^-1 (p - centre - shift) + centre, where the
        # forward map A = scale * rotation * shear in screen coordinates (y down):
        # rotation [[cos, sin], [-sin, cos]] turns counter-clockwise as displayed and shear
        # [[1, -tan], [0, 1]] moves the top right; the inverse is written out below.
        cos, sin = tf.cos(angle), tf.sin(angle)
        u = self._x - shift_x
        v = self._y - shift_y
        source_x = ((cos + slant * sin) * u + (slant * cos - sin) * v) / factor + (width - 1) / 2.0
        source_y = (sin * u + cos * v) / factor + (height - 1) / 2.0

        if parameters["elastic_alpha"] > 0:
            displacement_x, displacement_y = elastic_field(
                seeds[_ELASTIC],
                batch,
                self._shape,
                parameters["elastic_alpha"],
                parameters["elastic_sigma"],
            )
            source_x += displacement_x
            source_y += displacement_y

        grid = tf.reshape(images, tf.stack([batch, height, width]))
        augmented = tf.clip_by_value(bilinear_sample(grid, source_x, source_y), 0.0, 1.0)
        augmented = tf.reshape(augmented, tf.shape(images))
        if parameters["probability"] < 1:
            chosen = uniform(seeds[_APPLY], tf.stack([batch, 1])) < parameters["probability"]
            augmented = tf.where(chosen, augmented, images)
        return augmented


def make_augment(
    rotation_degrees: Any = DEFAULT_AUGMENT["rotation_degrees"],
    shift_pixels: Any = DEFAULT_AUGMENT["shift_pixels"],
    scale: Any = DEFAULT_AUGMENT["scale"],
    shear_degrees: Any = DEFAULT_AUGMENT["shear_degrees"],
    elastic_alpha: Any = DEFAULT_AUGMENT["elastic_alpha"],
    elastic_sigma: Any = DEFAULT_AUGMENT["elastic_sigma"],
    probability: Any = DEFAULT_AUGMENT["probability"],
    image_shape: Any = (28, 28),
) -> Augmenter:
    """An in-graph ``augment(images, seed) -> images`` for :class:`digitnet.fit.Fitter`.

    Every range is drawn uniformly and independently per image. A number ``x`` means
    ``[-x, x]``; a pair ``[low, high]`` gives the range itself (``[a, a]`` forces the value a).

    Args:
        rotation_degrees: rotation range in degrees; positive is counter-clockwise on screen.
        shift_pixels: translation range in pixels for both axes (positive = right / down), or
            ``[[x_low, x_high], [y_low, y_high]]`` per axis.
        scale: zoom factor range ``[low, high]`` (> 1 enlarges), or a number ``x`` meaning
            ``[1 - x, 1 + x]``; ``0`` or ``[1, 1]`` is neutral.
        shear_degrees: horizontal shear (slant) range in degrees; positive leans like italics.
        elastic_alpha: RMS elastic displacement per axis in pixels; 0 turns elastic off.
        elastic_sigma: correlation length of the elastic field in pixels (Simard's sigma).
        probability: chance that an image is augmented at all; the rest pass unchanged.
        image_shape: ``(height, width)`` of the row-major flattened images.

    Raises ValueError for a malformed or out-of-range parameter.
    """
    return Augmenter(
        validate_parameters(
            rotation_degrees=rotation_degrees,
            shift_pixels=shift_pixels,
            scale=scale,
            shear_degrees=shear_degrees,
            elastic_alpha=elastic_alpha,
            elastic_sigma=elastic_sigma,
            probability=probability,
            image_shape=image_shape,
        )
    )


def augment_from_config(config: Mapping[str, Any] | None) -> Augmenter | None:
    """The augmenter a training config describes: ``None`` means no augmentation; a dict
    overrides :data:`DEFAULT_AUGMENT` key by key (``{}`` is the defaults).

    Raises ValueError for unknown keys or bad values.
    """
    if config is None:
        return None
    if not isinstance(config, Mapping):
        raise ConfigError(f"augment: the config must be a dict or None, got {config!r}")
    unknown = sorted(set(config) - set(DEFAULT_AUGMENT))
    if unknown:
        raise ConfigError(
            f"augment: unknown parameter(s) {', '.join(map(str, unknown))}; "
            f"known: {', '.join(DEFAULT_AUGMENT)}"
        )
    return make_augment(**{**DEFAULT_AUGMENT, **config})
