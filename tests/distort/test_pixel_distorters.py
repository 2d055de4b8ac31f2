"""The pixel-level distorters: Gaussian noise, Gaussian blur, downscaling and JPEG."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from povidgen.distort.base import Distorter
from povidgen.distort.blur import GaussianBlur, gaussian_kernel, reflect_indices
from povidgen.distort.jpeg import JPEGCompression
from povidgen.distort.noise import GaussianNoise
from povidgen.distort.philox import gaussian_noise
from povidgen.distort.resample import Downscale, downscaled_size
from povidgen.errors import DistortionError

CLASSES: list[type[Distorter]] = [GaussianNoise, GaussianBlur, Downscale, JPEGCompression]
NAMES = {
    GaussianNoise: "gaussian_noise",
    GaussianBlur: "gaussian_blur",
    Downscale: "downscale",
    JPEGCompression: "jpeg",
}


def _textured(height: int = 96, width: int = 128, channels: int = 3, seed: int = 0) -> np.ndarray:
    """``(H, W, C)`` float32 in [0, 1]: smooth gradients, stripes and some fine noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    planes = []
    for c in range(channels):
        smooth = 0.5 + 0.25 * np.sin(x / (7 + 3 * c)) * np.cos(y / (5 + 2 * c))
        stripes = 0.15 * np.sign(np.sin(x / 2.0 + c))
        planes.append(smooth + stripes + 0.08 * rng.standard_normal((height, width)))
    textured: np.ndarray = np.clip(np.stack(planes, axis=-1), 0.0, 1.0).astype(np.float32)
    return textured


def _pil(mode: str, height: int = 48, width: int = 64) -> Image.Image:
    array = (_textured(height, width, 4) * 255).round().astype(np.uint8)
    if mode == "L":
        return Image.fromarray(array[..., 0])
    if mode == "RGB":
        return Image.fromarray(array[..., :3])
    return Image.fromarray(array)  # RGBA


def _tensor(batch: int = 3, height: int = 40, width: int = 56, channels: int = 3) -> torch.Tensor:
    items = [_textured(height, width, channels, seed=i) for i in range(batch)]
    return torch.from_numpy(np.stack(items)).permute(0, 3, 1, 2).contiguous()


def _mad(a: Any, b: Any) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).mean())


# -- shared behaviour ----------------------------------------------------------------------------


@pytest.mark.parametrize("cls", CLASSES)
def test_name_and_severity_table(cls: type[Distorter]) -> None:
    assert cls.name == NAMES[cls]
    assert sorted(cls.SEVERITIES) == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("cls", CLASSES)
def test_same_seed_same_output(cls: type[Distorter]) -> None:
    distorter = cls(severity=3)
    image = _pil("RGB")
    first = np.asarray(distorter(image, seed=7))
    np.testing.assert_array_equal(first, np.asarray(distorter(image, seed=7)))
    assert _mad(first, image) > 0


@pytest.mark.parametrize("cls", CLASSES)
def test_batch_item_equals_single_call(cls: type[Distorter]) -> None:
    distorter = cls(severity=4)
    images = _tensor()
    seeds = [11, 2**63 + 5, 0]
    batched = distorter.batch(images, seeds)
    assert batched.shape == images.shape
    for i, seed in enumerate(seeds):
        single = distorter(images[i], seed=seed)
        assert single.shape == images[i].shape
        torch.testing.assert_close(batched[i], single, atol=1e-6, rtol=0)


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA"])
def test_pil_modes_and_sizes_are_kept(cls: type[Distorter], mode: str) -> None:
    image = _pil(mode, height=37, width=51)
    out = cls(severity=5)(image, seed=1)
    assert isinstance(out, Image.Image)
    assert out.mode == mode
    assert out.size == image.size
    assert _mad(out, image) > 0
    if mode == "RGBA":
        np.testing.assert_array_equal(np.asarray(out)[..., 3], np.asarray(image)[..., 3])


@pytest.mark.parametrize("cls", CLASSES)
def test_uint8_array_and_float64_tensor_inputs(cls: type[Distorter]) -> None:
    distorter = cls(severity=2)
    array = (_textured(20, 30) * 255).round().astype(np.uint8)
    out = distorter(array, seed=3)
    assert out.dtype == np.uint8
    assert out.shape == array.shape
    tensor = torch.from_numpy(array).permute(2, 0, 1).double() / 255
    result = distorter(tensor, seed=3)
    assert result.dtype == torch.float64
    assert result.shape == tensor.shape
    assert float(result.min()) >= 0.0
    assert float(result.max()) <= 1.0


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("severity", [None, 1, 2, 3, 4, 5])
def test_params_round_trip(cls: type[Distorter], severity: int | None) -> None:
    distorter = cls(severity=severity)
    params = distorter.params()
    rebuilt = cls(**params)
    assert rebuilt.params() == params
    assert repr(rebuilt) == repr(distorter)
    image = _pil("RGB")
    np.testing.assert_array_equal(
        np.asarray(rebuilt(image, seed=4)), np.asarray(distorter(image, seed=4))
    )


@pytest.mark.parametrize("cls", CLASSES)
def test_severity_is_monotone(cls: type[Distorter]) -> None:
    image = _tensor(batch=1, height=96, width=128)
    errors = [_mad(cls(severity=s)(image, seed=9), image) for s in (1, 2, 3, 4, 5)]
    assert errors[4] > errors[0] > 0
    assert all(a <= b + 1e-4 for a, b in itertools.pairwise(errors)), errors


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("severity", [0, 6, True, "3", -1])
def test_bad_severity(cls: type[Distorter], severity: Any) -> None:
    with pytest.raises(ValueError, match="severity"):
        cls(severity=severity)


@pytest.mark.parametrize(
    ("cls", "kwargs", "match"),
    [
        (GaussianNoise, {"sigma": -0.1}, "sigma"),
        (GaussianNoise, {"sigma": float("nan")}, "sigma"),
        (GaussianNoise, {"sigma": float("inf")}, "sigma"),
        (GaussianNoise, {"sigma": True}, "sigma"),
        (GaussianNoise, {"sigma": "0.1"}, "sigma"),
        (GaussianBlur, {"radius": -1}, "radius"),
        (GaussianBlur, {"radius": float("inf")}, "radius"),
        (GaussianBlur, {"radius": False}, "radius"),
        (GaussianBlur, {"radius": [2]}, "radius"),
        (Downscale, {"size": 0}, "size"),
        (Downscale, {"size": 20.0}, "size"),
        (Downscale, {"size": True}, "size"),
        (Downscale, {"mode": "nearest"}, "mode"),
        (JPEGCompression, {"quality": 0}, "quality"),
        (JPEGCompression, {"quality": 96}, "quality"),
        (JPEGCompression, {"quality": 50.0}, "quality"),
        (JPEGCompression, {"quality": True}, "quality"),
    ],
)
def test_bad_arguments(cls: type[Distorter], kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


def test_explicit_value_wins_over_severity() -> None:
    assert GaussianNoise(0.5, severity=1).sigma == 0.5
    assert GaussianBlur(4, severity=1).params() == {"radius": 4.0}
    assert Downscale(50, severity=5).size == 50
    assert JPEGCompression(90, severity=5).quality == 90


def test_defaults() -> None:
    assert GaussianNoise().params() == {"sigma": 0.08}
    assert GaussianBlur().params() == {"radius": 2.0}
    assert Downscale().params() == {"size": 20, "mode": "bilinear"}
    assert JPEGCompression().params() == {"quality": 15}


# -- GaussianNoise --------------------------------------------------------------------------------


def test_noise_statistics_on_a_flat_image() -> None:
    sigma = 0.05  # 0.5 +- 10 sigma stays inside [0, 1]: no clamping
    flat = torch.full((1, 1, 256, 256), 0.5)
    out = GaussianNoise(sigma).batch(flat, [123])
    assert float(out.mean()) == pytest.approx(0.5, abs=2e-3)
    assert float(out.std()) == pytest.approx(sigma, rel=0.02)


def test_noise_is_philox_gaussian_noise() -> None:
    images = _tensor(batch=2, height=9, width=11)
    seeds = [5, 6]
    distorter = GaussianNoise(0.12)
    raw = distorter.distort_batch(images, seeds)
    expected = images + 0.12 * gaussian_noise(seeds, images.shape[1:])
    torch.testing.assert_close(raw, expected, atol=1e-6, rtol=0)


def test_noise_seeds_differ_and_zero_sigma_is_identity() -> None:
    image = _pil("RGB")
    assert _mad(GaussianNoise()(image, seed=1), GaussianNoise()(image, seed=2)) > 0
    np.testing.assert_array_equal(np.asarray(GaussianNoise(0)(image, seed=1)), np.asarray(image))


# -- GaussianBlur ---------------------------------------------------------------------------------


def _laplacian_energy(image: torch.Tensor) -> float:
    lap = (
        image[..., 1:-1, :-2]
        + image[..., 1:-1, 2:]
        + image[..., :-2, 1:-1]
        + image[..., 2:, 1:-1]
        - 4 * image[..., 1:-1, 1:-1]
    )
    return float(lap.abs().mean())


def test_blur_removes_high_frequencies_more_as_severity_rises() -> None:
    image = torch.rand(1, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    energies = [_laplacian_energy(image)]
    energies += [_laplacian_energy(GaussianBlur(severity=s).batch(image, [0])) for s in range(1, 6)]
    assert all(a > b for a, b in itertools.pairwise(energies)), energies
    assert energies[-1] < 0.01 * energies[0]


def test_blur_preserves_the_mean_and_a_flat_image() -> None:
    image = torch.rand(2, 3, 64, 80, generator=torch.Generator().manual_seed(1))
    out = GaussianBlur(3).batch(image, [0, 1])
    torch.testing.assert_close(out.mean(dim=(2, 3)), image.mean(dim=(2, 3)), atol=5e-3, rtol=0)
    flat = torch.full((1, 1, 20, 30), 0.3)
    torch.testing.assert_close(GaussianBlur(5).batch(flat, [0]), flat, atol=1e-6, rtol=0)


def test_blur_kernel_and_reflection() -> None:
    kernel = gaussian_kernel(2.0)
    assert kernel.shape == (13,)  # half-width ceil(3 * 2) = 6
    assert float(kernel.sum()) == pytest.approx(1.0, abs=1e-6)
    torch.testing.assert_close(kernel, kernel.flip(0))
    assert gaussian_kernel(0.0).tolist() == [1.0]
    assert reflect_indices(4, 2).tolist() == [2, 1, 0, 1, 2, 3, 2, 1]
    assert reflect_indices(2, 3).tolist() == [1, 0, 1, 0, 1, 0, 1, 0]
    assert reflect_indices(1, 2).tolist() == [0, 0, 0, 0, 0]


def test_blur_of_an_impulse_is_the_kernel() -> None:
    impulse = torch.zeros(1, 1, 41, 41)
    impulse[0, 0, 20, 20] = 1.0
    out = GaussianBlur(2.5).batch(impulse, [0])[0, 0]
    kernel = gaussian_kernel(2.5)
    half = kernel.numel() // 2
    expected = torch.zeros(41, 41)
    expected[20 - half : 21 + half, 20 - half : 21 + half] = torch.outer(kernel, kernel)
    torch.testing.assert_close(out, expected, atol=1e-7, rtol=0)


def test_blur_handles_images_smaller_than_the_kernel_and_is_close_to_pil() -> None:
    tiny = torch.rand(2, 3, 1, 3, generator=torch.Generator().manual_seed(2))
    assert GaussianBlur(8).batch(tiny, [0, 0]).shape == tiny.shape
    image = _pil("RGB", 64, 64)
    ours = np.asarray(GaussianBlur(2)(image, seed=0))
    from PIL import ImageFilter

    theirs = np.asarray(image.filter(ImageFilter.GaussianBlur(2)))
    assert _mad(ours, theirs) < 3.0  # grey levels; PIL approximates the Gaussian with boxes
    assert _mad(ours, theirs) < 0.2 * _mad(ours, image)


# -- Downscale ------------------------------------------------------------------------------------


def test_downscaled_size_keeps_the_aspect_ratio() -> None:
    assert downscaled_size(480, 640, 20) == (15, 20)
    assert downscaled_size(640, 480, 20) == (20, 15)
    assert downscaled_size(1000, 10, 20) == (20, 1)  # at least one pixel
    assert downscaled_size(16, 12, 20) == (16, 12)  # already small: unchanged


def test_downscale_turns_a_checkerboard_grey_and_keeps_size() -> None:
    y, x = np.mgrid[0:120, 0:160]
    board = ((x + y) % 2 * 255).astype(np.uint8)
    out = Downscale()(Image.fromarray(board), seed=0)
    assert out.size == (160, 120)
    pixels = np.asarray(out, dtype=np.float64)
    assert abs(pixels.mean() - 127.5) < 2.0
    assert pixels.std() < 3.0


def test_downscale_keeps_flat_images_flat() -> None:
    flat = torch.full((2, 3, 50, 70), 0.42)
    out = Downscale(severity=5).batch(flat, [0, 1])
    assert out.shape == flat.shape
    torch.testing.assert_close(out, flat, atol=1e-6, rtol=0)


def test_downscale_leaves_small_images_and_bicubic_works() -> None:
    image = _tensor(batch=1, height=10, width=12)
    torch.testing.assert_close(Downscale(12).batch(image, [0]), image)
    bicubic = Downscale(16, mode="bicubic")
    assert Downscale(**bicubic.params()).params() == {"size": 16, "mode": "bicubic"}
    out = bicubic.batch(_tensor(batch=1), [0])
    assert out.shape == (1, 3, 40, 56)
    assert float(out.min()) >= 0.0


def test_downscale_matches_two_interpolations() -> None:
    image = _tensor(batch=2, height=48, width=64)
    small = torch.nn.functional.interpolate(
        image, size=(24, 32), mode="bilinear", align_corners=False, antialias=True
    )
    expected = torch.nn.functional.interpolate(
        small, size=(48, 64), mode="bilinear", align_corners=False
    ).clamp(0, 1)
    torch.testing.assert_close(Downscale(32).batch(image, [0, 0]), expected)


# -- JPEGCompression ------------------------------------------------------------------------------


def test_jpeg_quality_orders_the_error() -> None:
    image = _pil("RGB", 96, 128)
    errors = {q: _mad(JPEGCompression(q)(image, seed=0), image) for q in (3, 15, 50, 95)}
    assert errors[3] > errors[15] > errors[50] > errors[95] > 0


def test_jpeg_matches_pillow_round_trip() -> None:
    import io

    image = _pil("RGB", 40, 48)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=30, subsampling="4:2:0")
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        expected = np.asarray(decoded.convert("RGB"))
    np.testing.assert_array_equal(np.asarray(JPEGCompression(30)(image, seed=0)), expected)


def test_jpeg_rejects_other_channel_counts() -> None:
    with pytest.raises(DistortionError, match=r"1 \(grey\), 3 \(RGB\) or 4 \(CMYK\)"):
        JPEGCompression().batch(torch.rand(1, 2, 8, 8), [0])


def test_jpeg_keeps_cmyk_as_cmyk() -> None:
    image = Image.new("CMYK", (24, 16), (10, 200, 30, 0))
    out = JPEGCompression(quality=90)(image, seed=0)
    assert out.mode == "CMYK"
    assert np.abs(np.asarray(out).astype(int) - np.asarray(image).astype(int)).max() < 12
