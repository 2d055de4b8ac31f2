"""DiffusionNoise against the constants and behaviour of POVID's official code."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from povidgen import DiffusionNoise, DistortionError
from povidgen.distort.diffusion import sigmoid_schedule


@pytest.mark.parametrize(
    ("step", "signal", "noise"),
    [(300, 0.9810, 0.1941), (500, 0.8630, 0.5052), (700, 0.5927, 0.8054)],
)
def test_schedule_matches_povid_constants(step: int, signal: float, noise: float) -> None:
    distorter = DiffusionNoise(step=step)
    assert distorter.signal_scale == pytest.approx(signal, abs=5e-5)
    assert distorter.noise_scale == pytest.approx(noise, abs=5e-5)
    assert distorter.signal_scale**2 + distorter.noise_scale**2 == pytest.approx(1.0)


def test_sigmoid_betas_by_hand() -> None:
    betas, alphas_cumprod = sigmoid_schedule(1000)
    assert betas.shape == alphas_cumprod.shape == (1000,)
    # sigmoid(-6) = 0.0024726; * (5e-3 - 1e-5) + 1e-5
    assert betas[0] == pytest.approx(0.0024726232 * 4.99e-3 + 1e-5, rel=1e-6)
    assert betas[0] == pytest.approx(2.234e-5, abs=1e-8)
    assert betas[-1] == pytest.approx(0.9975273768 * 4.99e-3 + 1e-5, rel=1e-6)
    assert alphas_cumprod[0] == pytest.approx(1 - betas[0])
    assert alphas_cumprod[1] == pytest.approx((1 - betas[0]) * (1 - betas[1]))
    assert np.all(np.diff(betas) > 0)


def test_matches_the_official_formula_with_the_same_noise() -> None:
    """x_t = sqrt(abar) x0 + sqrt(1 - abar) eps, eps from a torch CPU generator seeded by seed."""
    x0 = np.random.default_rng(0).random((5, 7, 3)).astype(np.float32)
    distorter = DiffusionNoise(step=500)
    eps = torch.randn((5, 7, 3), generator=torch.Generator().manual_seed(11)).numpy()
    expected = 0.8630171 * x0 + 0.5051747 * eps
    np.testing.assert_allclose(distorter.noise_float(x0, seed=11), expected, atol=1e-5)


def _flat(value: int, size: int = 128) -> Image.Image:
    return Image.new("L", (size, size), value)


@pytest.mark.parametrize("step", [300, 500, 700])
def test_flat_image_statistics_follow_the_closed_form(step: int) -> None:
    distorter = DiffusionNoise(step=step, overflow="wrap")
    x0 = 0.5
    x = distorter.noise_float(np.full((256, 256), x0, dtype=np.float32), seed=step)
    assert x.mean() == pytest.approx(distorter.signal_scale * x0, abs=0.01)
    assert x.std() == pytest.approx(distorter.noise_scale, rel=0.02)


def test_wrap_reproduces_the_official_byte_cast() -> None:
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 30, 3), dtype=np.uint8))
    distorter = DiffusionNoise(step=500, overflow="wrap")
    out = np.asarray(distorter(image, seed=3))
    x = torch.from_numpy(distorter.noise_float(np.asarray(image) / np.float32(255), seed=3))
    official = (x * 255).byte().numpy()  # what torchvision's ToPILImage does to a float tensor
    np.testing.assert_array_equal(out, official)


def test_wrap_and_clamp_differ_exactly_where_values_leave_the_range() -> None:
    image = _flat(128)
    wrap = np.asarray(DiffusionNoise(overflow="wrap")(image, seed=5)).astype(int)
    clamp = np.asarray(DiffusionNoise(overflow="clamp")(image, seed=5)).astype(int)
    x = DiffusionNoise().noise_float(np.full((128, 128), 128 / 255, dtype=np.float32), seed=5)
    outside = (x < 0) | (x > 1)
    # mid-grey at t=500: P(N > 1.126) + P(N < -0.854), about a third of the pixels
    assert 0.28 < outside.mean() < 0.38
    assert np.all(clamp[x < 0] == 0)
    assert np.all(clamp[x > 1] == 255)
    inside = ~outside & (np.abs(x * 255 - np.rint(x * 255)) < 0.49)
    assert np.all(np.abs(wrap[inside] - clamp[inside]) <= 1)  # truncation vs rounding
    # wrapped dark overflows come back as bright pixels, and bright overflows as dark ones
    dark = (x < -0.01) & (x > -0.5)
    bright = (x > 1.01) & (x < 1.5)
    assert dark.any()
    assert bright.any()
    assert np.all(wrap[dark] >= 129)
    assert np.all(wrap[bright] <= 126)


def test_same_seed_same_image_other_seed_other_image(rgb_image: Image.Image) -> None:
    noise = DiffusionNoise()
    first, again, other = (
        noise(rgb_image, seed=7),
        noise(rgb_image, seed=7),
        noise(rgb_image, seed=8),
    )
    assert first.tobytes() == again.tobytes()
    assert first.tobytes() != other.tobytes()


@pytest.mark.parametrize(
    ("mode", "expected_mode"),
    [
        ("1", "L"),
        ("L", "L"),
        ("LA", "LA"),
        ("P", "RGB"),
        ("RGB", "RGB"),
        ("RGBA", "RGBA"),
        ("CMYK", "CMYK"),
        ("I;16", "I;16"),
        ("I", "I"),
        ("F", "F"),
    ],
)
def test_keeps_size_and_mode_family(mode: str, expected_mode: str) -> None:
    image = Image.new(mode, (31, 17))
    out = DiffusionNoise()(image, seed=0)
    assert out.size == image.size
    assert out.mode == expected_mode
    assert np.asarray(out).std() > 0


def test_alpha_band_is_left_alone() -> None:
    image = Image.new("RGBA", (20, 20), (10, 20, 30, 77))
    out = np.asarray(DiffusionNoise()(image, seed=0))
    assert np.all(out[..., 3] == 77)
    assert out[..., :3].std() > 10


def test_sixteen_bit_uses_the_sixteen_bit_range() -> None:
    image = Image.new("I;16", (64, 64), 30000)
    out = np.asarray(DiffusionNoise(step=300)(image, seed=0)).astype(float)
    # 30000 / 65535 = 0.46 is 2.4 noise sigmas from 0 at t=300, so clamping barely moves the mean
    assert out.mean() == pytest.approx(0.9810 * 30000, rel=0.01)


def test_palette_with_transparency_becomes_rgba() -> None:
    image = Image.new("P", (8, 8), 0)
    image.info["transparency"] = 0
    assert DiffusionNoise()(image, seed=0).mode == "RGBA"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"step": -1},
        {"step": 1000},
        {"step": 2.5},
        {"overflow": "mirror"},
        {"num_steps": 0},
        {"schedule": "cosine"},
    ],
)
def test_bad_arguments_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        DiffusionNoise(**kwargs)  # type: ignore[arg-type]


def test_bad_inputs_raise_distortion_errors(rgb_image: Image.Image) -> None:
    with pytest.raises(DistortionError, match="PIL image"):
        DiffusionNoise()(np.zeros((4, 4)), seed=0)  # type: ignore[arg-type]
    with pytest.raises(DistortionError, match="seed"):
        DiffusionNoise()(rgb_image, seed="1")  # type: ignore[arg-type]
    with pytest.raises(DistortionError, match="mode 'HSV'"):
        DiffusionNoise()(rgb_image.convert("HSV"), seed=0)


def test_params_are_recorded() -> None:
    assert DiffusionNoise(step=300, overflow="wrap").params() == {
        "step": 300,
        "num_steps": 1000,
        "schedule": "sigmoid",
        "overflow": "wrap",
    }
    params = DiffusionNoise(step=300, overflow="wrap").params()
    assert DiffusionNoise(**params).params() == params  # provenance rebuilds the distorter
    assert math.isclose(DiffusionNoise(step=0, num_steps=1).signal_scale, (1 - 2.234e-5) ** 0.5)
