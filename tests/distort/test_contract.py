"""One contract, run over every distorter: the built-ins (found through the entry points, as a
user's would be), Compose and OneOf, and a user subclass."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from povidgen import (
    Compose,
    DiffusionNoise,
    Distorter,
    GaussianBlur,
    OneOf,
    PatchMask,
    available_distorters,
    get_distorter,
)

BUILTINS = [
    "color_jitter",
    "diffusion",
    "downscale",
    "gaussian_blur",
    "gaussian_noise",
    "jpeg",
    "patch_mask",
    "random_resized_crop",
]


class Posterize(Distorter):
    """A user's distorter: quantise to a seed-dependent number of levels."""

    name = "posterize"

    def distort_batch(self, images: torch.Tensor, seeds: list[int]) -> torch.Tensor:
        levels = torch.tensor([2 + s % 3 for s in seeds], dtype=images.dtype)
        levels = levels.to(images.device).view(-1, 1, 1, 1)
        return torch.round(images * levels) / levels


def make(name: str, severity: int = 3) -> Distorter:
    if name == "compose":
        return Compose([DiffusionNoise(severity=severity), GaussianBlur(severity=severity)])
    if name == "one_of":
        return OneOf([PatchMask(severity=severity), DiffusionNoise(severity=severity)])
    if name == "posterize":
        return Posterize()
    return get_distorter(name, severity=severity)


ALL = [*BUILTINS, "compose", "one_of", "posterize"]


def textured(size: tuple[int, int] = (48, 40)) -> Image.Image:
    rng = np.random.default_rng(0)
    width, height = size
    base = np.linspace(0, 255, width, dtype=np.float32)[None, :, None].repeat(height, 0)
    noise = rng.normal(0, 40, (height, width, 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


def test_every_builtin_is_registered() -> None:
    assert set(BUILTINS) <= set(available_distorters())


MODES = [
    ("1", "L"),
    ("L", "L"),
    ("LA", "LA"),
    ("P", "RGB"),
    ("RGB", "RGB"),
    ("RGBA", "RGBA"),
    ("CMYK", "CMYK"),
    ("I;16", "I;16"),
]


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize(("mode", "family"), MODES)
def test_every_pil_mode_keeps_size_and_mode_family(name: str, mode: str, family: str) -> None:
    image = textured().convert(mode) if mode != "I;16" else _sixteen_bit()
    out = make(name)(image, seed=1)
    assert isinstance(out, Image.Image)
    assert out.size == image.size
    assert out.mode == family


def _sixteen_bit() -> Image.Image:
    values = (np.asarray(textured().convert("L")).astype(np.uint16) * 257).astype(np.uint16)
    return Image.fromarray(values)


@pytest.mark.parametrize("name", ALL)
def test_exif_rotated_images_keep_their_orientation(name: str) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    textured().save(buffer, format="JPEG", exif=exif)
    rotated = Image.open(io.BytesIO(buffer.getvalue()))
    out = make(name)(rotated, seed=2)
    assert out.size == rotated.size
    assert ImageOps.exif_transpose(out).size == ImageOps.exif_transpose(rotated).size


@pytest.mark.parametrize("name", ALL)
def test_arrays_and_tensors_keep_their_kind(name: str) -> None:
    distorter = make(name)
    array = np.array(textured())
    out = distorter(array, seed=3)
    assert isinstance(out, np.ndarray)
    assert out.dtype == np.uint8
    assert out.shape == array.shape
    grey = distorter(array[..., 0], seed=3)
    assert grey.shape == array.shape[:2]
    tensor = torch.from_numpy(array).permute(2, 0, 1).float() / 255
    single = distorter(tensor, seed=3)
    assert single.shape == tensor.shape
    assert single.dtype == tensor.dtype
    batch = distorter(tensor.expand(2, -1, -1, -1).double(), seed=3)
    assert batch.shape == (2, *tensor.shape)
    assert batch.dtype == torch.float64


@pytest.mark.parametrize("name", ALL)
def test_same_seed_same_result_and_batch_equals_single_calls(name: str) -> None:
    distorter = make(name)
    images = torch.stack(
        [torch.from_numpy(np.array(textured())).permute(2, 0, 1).float() / 255] * 3
    )
    images[1] = images[1].flip(-1)
    seeds = [11, 12, 13]
    batch = distorter.batch(images, seeds)
    again = distorter.batch(images, seeds)
    assert torch.equal(batch, again)
    for index, seed in enumerate(seeds):
        single = distorter(images[index], seed=seed)
        torch.testing.assert_close(batch[index], single, atol=1e-5, rtol=0)
    assert float(batch.min()) >= 0.0
    assert float(batch.max()) <= 1.0


@pytest.mark.parametrize("name", ALL)
def test_pil_and_tensor_paths_agree(name: str) -> None:
    distorter = make(name)
    image = textured()
    from_pil = np.asarray(distorter(image, seed=5)).astype(np.float32) / 255
    tensor = torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255
    from_tensor = distorter(tensor, seed=5).permute(1, 2, 0).numpy()
    # the PIL path rounds to 8 bits at the end; everything else is the same computation
    assert np.abs(from_pil - from_tensor).max() <= 0.5 / 255 + 1e-4


@pytest.mark.parametrize("name", BUILTINS)
def test_severities_build_and_params_rebuild(name: str) -> None:
    for severity in range(1, 6):
        distorter = make(name, severity)
        rebuilt = get_distorter(name, **distorter.params())
        assert rebuilt.params() == distorter.params()
        assert type(distorter).__name__ in repr(distorter)
    with pytest.raises(ValueError, match="severity"):
        get_distorter(name, severity=0)


@pytest.mark.parametrize("name", BUILTINS)
def test_severity_five_distorts_more_than_severity_one(name: str) -> None:
    image = textured((64, 64))
    clean = np.asarray(image).astype(float)

    def damage(severity: int) -> float:
        out = np.asarray(make(name, severity)(image, seed=7)).astype(float)
        return float(np.abs(out - clean).mean())

    assert damage(5) > damage(1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ALL)
def test_cuda_gives_the_cpu_result(name: str) -> None:
    distorter = make(name)
    images = torch.rand(3, 3, 33, 47)
    cpu = distorter.batch(images, [1, 2, 3])
    gpu = distorter.batch(images.cuda(), [1, 2, 3])
    assert gpu.is_cuda
    close = (cpu - gpu.cpu()).abs() <= 1e-4
    assert close.float().mean() > 0.999
