"""DiffusionNoise against the constants and behaviour of POVID's official code."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from povidgen import DiffusionNoise, DistortionError
from povidgen.distort.diffusion import alphas_cumprod, sigmoid_schedule
from povidgen.distort.philox import gaussian_noise


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
    betas, cumprod = sigmoid_schedule(1000)
    assert betas.shape == cumprod.shape == (1000,)
    # sigmoid(-6) = 0.0024726; * (5e-3 - 1e-5) + 1e-5
    assert betas[0] == pytest.approx(0.0024726232 * 4.99e-3 + 1e-5, rel=1e-6)
    assert betas[-1] == pytest.approx(0.9975273768 * 4.99e-3 + 1e-5, rel=1e-6)
    assert cumprod[1] == pytest.approx((1 - betas[0]) * (1 - betas[1]))
    assert np.all(np.diff(betas) > 0)


def test_linear_schedule_by_hand() -> None:
    # DDPM: beta_s = 1e-4 + s * (0.02 - 1e-4) / 999
    abar = 1.0
    for s in range(501):
        abar *= 1 - (1e-4 + s * (0.02 - 1e-4) / 999)
    assert DiffusionNoise(step=500, schedule="linear").signal_scale == pytest.approx(
        math.sqrt(abar), rel=1e-9
    )


@pytest.mark.parametrize("step", [0, 250, 500, 900])
def test_cosine_schedule_telescopes_to_the_closed_form(step: int) -> None:
    # the product of f(t + 1) / f(t) telescopes: abar[t] = f(t + 1) / f(0) (no clipping here)
    def f(t: float) -> float:
        return math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2

    assert alphas_cumprod("cosine", 1000)[step] == pytest.approx(f(step + 1) / f(0), rel=1e-9)


def test_matches_the_closed_form_with_the_philox_noise() -> None:
    x0 = torch.rand(1, 3, 5, 7)
    out = DiffusionNoise(step=500, space="normalized").batch(x0, [11])
    expected = 0.8630171 * x0 + 0.5051747 * gaussian_noise([11], (3, 5, 7))
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("schedule", ["sigmoid", "linear", "cosine"])
@pytest.mark.parametrize("step", [300, 500, 700])
def test_flat_image_statistics_follow_the_closed_form(schedule: str, step: int) -> None:
    distorter = DiffusionNoise(step=step, schedule=schedule, space="normalized")  # type: ignore[arg-type]
    x = distorter.batch(torch.full((1, 1, 256, 256), 0.5), [step])
    assert x.mean().item() == pytest.approx(distorter.signal_scale * 0.5, abs=0.01)
    assert x.std().item() == pytest.approx(distorter.noise_scale, rel=0.02)


def _raw(image: Image.Image, seed: int, step: int = 500) -> torch.Tensor:
    """The unclipped x_t of an 8-bit image, (C, H, W)."""
    array = np.asarray(image, dtype=np.float32) / 255
    tensor = torch.from_numpy(array if array.ndim == 3 else array[..., None]).permute(2, 0, 1)
    return DiffusionNoise(step=step, space="normalized").batch(tensor[None], [seed])[0]


def test_wrap_reproduces_the_official_byte_cast() -> None:
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 30, 3), dtype=np.uint8))
    out = np.asarray(DiffusionNoise(step=500, overflow="wrap")(image, seed=3))
    official = (_raw(image, 3) * 255).byte().permute(1, 2, 0).numpy()  # torchvision's ToPILImage
    agree = out == official
    # float32 ulps between the two evaluations can move a value across an integer boundary
    assert agree.mean() > 0.999
    assert np.abs(out.astype(int) - official.astype(int))[~agree].max(initial=0) in (0, 1, 255)


def test_wrap_and_clamp_differ_exactly_where_values_leave_the_range() -> None:
    image = Image.new("L", (128, 128), 128)
    wrap = np.asarray(DiffusionNoise(overflow="wrap")(image, seed=5)).astype(int)
    clamp = np.asarray(DiffusionNoise(overflow="clamp")(image, seed=5)).astype(int)
    x = _raw(image, 5)[0].numpy()
    outside = (x < 0) | (x > 1)
    # mid-grey at t=500: P(N > 1.126) + P(N < -0.854), about a third of the pixels
    assert 0.28 < outside.mean() < 0.38
    assert np.all(clamp[x < 0] == 0)
    assert np.all(clamp[x > 1] == 255)
    dark = (x < -0.01) & (x > -0.5)
    bright = (x > 1.01) & (x < 1.5)
    assert dark.any()
    assert bright.any()
    assert np.all(wrap[dark] >= 129)
    assert np.all(wrap[bright] <= 126)


def test_same_seed_same_image_other_seed_other_image(rgb_image: Image.Image) -> None:
    noise = DiffusionNoise()
    first, again = noise(rgb_image, seed=7), noise(rgb_image, seed=7)
    assert first.tobytes() == again.tobytes()
    assert first.tobytes() != noise(rgb_image, seed=8).tobytes()


def test_pil_tensor_array_and_batch_paths_agree(rgb_image: Image.Image) -> None:
    noise = DiffusionNoise()
    pixels = np.asarray(rgb_image)  # read-only, as PIL gives it
    tensor = torch.from_numpy(np.array(pixels)).permute(2, 0, 1).float() / 255
    from_pil = np.asarray(noise(rgb_image, seed=9)).astype(float)
    from_array = noise(pixels, seed=9).astype(float)
    from_tensor = noise(tensor, seed=9).permute(1, 2, 0).numpy() * 255
    from_batch = noise.batch(torch.stack([tensor, tensor]), [1, 9])[1].permute(1, 2, 0).numpy()
    assert np.array_equal(from_pil, from_array)
    assert np.abs(from_pil - from_tensor).max() <= 0.5 + 1e-3  # rounding to 8 bits
    assert np.abs(from_tensor - from_batch * 255).max() < 1e-3


def test_a_batch_with_one_seed_derives_a_seed_per_item() -> None:
    images = torch.rand(3, 1, 8, 8)
    out = DiffusionNoise()(images, seed=4)
    assert not torch.equal(out[0], out[1])
    torch.testing.assert_close(out, DiffusionNoise()(images, seed=4))


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
    image = Image.new("I;16", (256, 256), 30000)
    out = np.asarray(DiffusionNoise(step=300)(image, seed=0)).astype(float)
    # 30000 / 65535 = 0.46 is 2.4 noise sigmas from 0 at t=300, so clamping barely moves the mean
    assert out.mean() == pytest.approx(0.9810 * 30000, rel=0.01)


def test_palette_with_transparency_becomes_rgba() -> None:
    image = Image.new("P", (8, 8), 0)
    image.info["transparency"] = 0
    assert DiffusionNoise()(image, seed=0).mode == "RGBA"


def test_severity_picks_the_step_and_explicit_values_win() -> None:
    assert [DiffusionNoise(severity=s).step for s in range(1, 6)] == [100, 300, 500, 700, 900]
    assert DiffusionNoise(250, severity=5).step == 250
    with pytest.raises(ValueError, match="severity"):
        DiffusionNoise(severity=6)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"step": -1},
        {"step": 1000},
        {"step": 2.5},
        {"overflow": "mirror"},
        {"num_steps": 0},
        {"schedule": "quadratic"},
        {"space": "latent"},
    ],
)
def test_bad_arguments_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        DiffusionNoise(**kwargs)  # type: ignore[arg-type]


def test_normalized_space_has_no_overflow_policy() -> None:
    with pytest.raises(ValueError, match="overflow='none'"):
        DiffusionNoise(space="normalized", overflow="clamp")
    x = torch.full((1, 3, 4, 4), 5.0)  # a normalised tensor is not bounded to [0, 1]
    assert DiffusionNoise(space="normalized").batch(x, [0]).max() > 1.5


def test_bad_inputs_raise_distortion_errors(rgb_image: Image.Image) -> None:
    with pytest.raises(DistortionError, match="uint8"):
        DiffusionNoise()(np.zeros((4, 4)), seed=0)
    with pytest.raises(DistortionError, match="seed"):
        DiffusionNoise()(rgb_image, seed="1")  # type: ignore[arg-type]
    with pytest.raises(DistortionError, match="mode 'HSV'"):
        DiffusionNoise()(rgb_image.convert("HSV"), seed=0)
    with pytest.raises(DistortionError, match="floating point"):
        DiffusionNoise()(torch.zeros(3, 4, 4, dtype=torch.uint8), seed=0)
    with pytest.raises(DistortionError, match="expected 2 seeds"):
        DiffusionNoise().batch(torch.zeros(2, 3, 4, 4), [1])
    with pytest.raises(DistortionError, match=r"\[0, 2\*\*64\)"):
        DiffusionNoise().batch(torch.zeros(1, 3, 4, 4), [-1])


def test_params_rebuild_the_distorter() -> None:
    params = DiffusionNoise(step=300, overflow="wrap").params()
    assert params == {
        "step": 300,
        "num_steps": 1000,
        "schedule": "sigmoid",
        "space": "pixel",
        "overflow": "wrap",
    }
    assert DiffusionNoise(**params).params() == params


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("overflow", ["clamp", "wrap"])
def test_cuda_and_cpu_give_the_same_image(overflow: str) -> None:
    images = torch.rand(3, 3, 37, 53)
    noise = DiffusionNoise(overflow=overflow)  # type: ignore[arg-type]
    cpu = noise.batch(images, [1, 2, 3])
    gpu = noise.batch(images.cuda(), [1, 2, 3]).cpu()
    close = (cpu - gpu).abs() < 1e-5
    assert close.float().mean() > 0.999  # a wrap boundary may flip a rare value
