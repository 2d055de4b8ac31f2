"""The Distorter base class, the image/tensor conversions and the Philox noise."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from povidgen import DiffusionNoise, Distorter, DistortionError
from povidgen.distort.philox import gaussian_noise


class Invert(Distorter):
    """A tensor-hook distorter: 1 - x, plus a seed-dependent offset to see the seeds."""

    name = "invert"

    def distort_batch(self, images: torch.Tensor, seeds: list[int]) -> torch.Tensor:
        offsets = torch.tensor([s % 7 / 100 for s in seeds]).view(-1, 1, 1, 1)
        return 1 - images + offsets


class Mirror(Distorter):
    """A PIL-hook distorter."""

    name = "mirror"

    def distort(self, image: Image.Image, *, seed: int) -> Image.Image:
        return ImageOps.mirror(image)


def test_a_distorter_must_implement_a_hook() -> None:
    class Nothing(Distorter):
        name = "nothing"

    with pytest.raises(TypeError):
        Nothing()
    with pytest.raises(TypeError):
        Distorter()


def test_tensor_hook_serves_every_input_kind() -> None:
    array = np.arange(48, dtype=np.uint8).reshape(4, 4, 3) * 5
    out = Invert()(array, seed=0)
    assert out.dtype == np.uint8
    assert out.shape == array.shape
    assert np.array_equal(out, 255 - array)
    pil = Invert()(Image.fromarray(array), seed=0)
    assert np.array_equal(np.asarray(pil), 255 - array)
    tensor = torch.from_numpy(np.array(array)).permute(2, 0, 1).double() / 255
    result = Invert()(tensor, seed=0)
    assert result.dtype == torch.float64
    assert result.shape == tensor.shape


def test_pil_hook_serves_tensors_through_pil() -> None:
    tensor = torch.rand(2, 3, 5, 6)
    out = Mirror().batch(tensor, [0, 1])
    expected = (tensor.mul(255).round() / 255).flip(-1)
    torch.testing.assert_close(out, expected)
    grey = torch.rand(1, 1, 4, 5)
    torch.testing.assert_close(Mirror().batch(grey, [0]), (grey.mul(255).round() / 255).flip(-1))
    with pytest.raises(DistortionError, match="1 or 3 channels"):
        Mirror().batch(torch.rand(1, 2, 4, 4), [0])


def test_numpy_alpha_channels_are_kept() -> None:
    rgba = np.zeros((3, 3, 4), dtype=np.uint8)
    rgba[..., 3] = 99
    out = Invert()(rgba, seed=0)
    assert np.all(out[..., 3] == 99)
    assert np.all(out[..., :3] == 255)
    grey = Invert()(np.zeros((3, 3), dtype=np.uint8), seed=0)
    assert grey.shape == (3, 3)
    assert np.all(grey == 255)


def test_exif_orientation_is_carried_over() -> None:
    image = Image.new("RGB", (30, 10), (0, 255, 0))
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif)
    rotated = Image.open(io.BytesIO(buffer.getvalue()))
    out = DiffusionNoise()(rotated, seed=0)
    assert out.size == rotated.size
    assert ImageOps.exif_transpose(out).size == (10, 30)


def test_batch_items_equal_single_calls() -> None:
    images = torch.rand(4, 3, 9, 11)
    seeds = [5, 6, 7, 8]
    batch = Invert().batch(images, seeds)
    for index, seed in enumerate(seeds):
        torch.testing.assert_close(batch[index], Invert()(images[index], seed=seed))


def test_unsupported_inputs_name_the_problem() -> None:
    with pytest.raises(DistortionError, match="PIL image, a uint8 numpy array or a float tensor"):
        Invert()([1, 2, 3], seed=0)
    with pytest.raises(DistortionError, match=r"\(H, W\) or \(H, W, C\)"):
        Invert()(np.zeros((2, 2, 7), dtype=np.uint8), seed=0)
    with pytest.raises(DistortionError, match=r"\(C, H, W\) or \(B, C, H, W\)"):
        Invert()(torch.zeros(4, 4), seed=0)
    with pytest.raises(DistortionError, match="zero size"):
        Invert()(Image.new("RGB", (0, 3)), seed=0)
    with pytest.raises(DistortionError, match="batch"):
        Invert().batch(torch.zeros(3, 4, 4), [0])  # type: ignore[arg-type]


def test_philox_noise_is_numpy_philox_through_box_muller() -> None:
    raw = np.random.Philox(key=42).random_raw(3).view(np.int64)
    lo = (raw & 0xFFFFFFFF).astype(np.float64)
    hi = ((raw >> 32) & 0xFFFFFFFF).astype(np.float64)
    radius = np.sqrt(-2 * np.log((lo + 1) / 2**32))
    angle = 2 * np.pi * hi / 2**32
    expected = np.stack([radius * np.cos(angle), radius * np.sin(angle)], -1).reshape(-1)[:5]
    np.testing.assert_allclose(gaussian_noise([42], (5,))[0].numpy(), expected, atol=1e-5)


def test_philox_noise_statistics_and_independence() -> None:
    noise = gaussian_noise([1, 2], (200_000,))
    assert abs(noise.mean().item()) < 0.01
    assert noise.std().item() == pytest.approx(1.0, abs=0.01)
    assert abs(torch.corrcoef(noise)[0, 1].item()) < 0.01
    assert torch.equal(gaussian_noise([2], (200_000,))[0], noise[1])  # not batch-dependent
