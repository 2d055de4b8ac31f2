"""RandomResizedCrop, ColorJitter, PatchMask, Compose / OneOf and the DistortingCollator."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from povidgen.distort.base import Distorter
from povidgen.distort.collate import DistortingCollator
from povidgen.distort.color import ColorJitter, hsv_to_rgb, rgb_to_hsv
from povidgen.distort.compose import Compose, OneOf
from povidgen.distort.crop import RandomResizedCrop
from povidgen.distort.diffusion import DiffusionNoise
from povidgen.distort.mask import PatchMask
from povidgen.seeding import derive_seed

Factory = Callable[[], Distorter]

FACTORIES: dict[str, Factory] = {
    "crop": lambda: RandomResizedCrop(),
    "color": lambda: ColorJitter(),
    "mask": lambda: PatchMask(patch_size=4),
    "mask_mean": lambda: PatchMask(0.5, patch_size=5, fill="mean"),
    "compose": lambda: Compose(
        [ColorJitter(), PatchMask(patch_size=4), RandomResizedCrop()], p=[0.7, 0.5, 0.5]
    ),
    "one_of": lambda: OneOf(
        [ColorJitter(severity=5), PatchMask(patch_size=4), RandomResizedCrop()], p=[1, 2, 1]
    ),
}
SIMPLE = ("crop", "color", "mask", "mask_mean")


def _images(batch: int, channels: int = 3, height: int = 16, width: int = 24) -> torch.Tensor:
    rng = np.random.default_rng(1234)
    return torch.from_numpy(rng.random((batch, channels, height, width), dtype=np.float32))


def _pil(mode: str) -> Image.Image:
    rng = np.random.default_rng(7)
    channels = {"L": 1, "RGB": 3, "RGBA": 4}[mode]
    array = rng.integers(0, 256, size=(16, 24, channels), dtype=np.uint8)
    return Image.fromarray(array[..., 0] if channels == 1 else array, mode=mode)


# -- shared behaviour ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", FACTORIES)
def test_same_seed_same_result_other_seed_differs(kind: str) -> None:
    distorter = FACTORIES[kind]()
    image = _images(1)[0]
    first = distorter(image, seed=5)
    assert first.shape == image.shape
    assert torch.equal(first, distorter(image, seed=5))
    assert torch.equal(first, FACTORIES[kind]()(image, seed=5))
    others = [distorter(image, seed=s) for s in (6, 7, 8)]
    assert any(not torch.allclose(first, other) for other in others)
    assert float(first.min()) >= 0.0
    assert float(first.max()) <= 1.0


@pytest.mark.parametrize("kind", FACTORIES)
def test_batch_item_equals_single_call(kind: str) -> None:
    distorter = FACTORIES[kind]()
    images = _images(6)
    seeds = [3, 1, 4, 1_000_003, 2**63 + 5, 9]
    out = distorter.batch(images, seeds)
    assert out.shape == images.shape
    for i, seed in enumerate(seeds):
        single = distorter(images[i], seed=seed)
        torch.testing.assert_close(out[i], single, atol=1e-6, rtol=0)
    assert torch.equal(images, _images(6)), "the input batch must not be modified"


@pytest.mark.parametrize("kind", FACTORIES)
@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA"])
def test_pil_keeps_mode_and_size(kind: str, mode: str) -> None:
    image = _pil(mode)
    out = FACTORIES[kind]()(image, seed=11)
    assert isinstance(out, Image.Image)
    assert out.mode == mode
    assert out.size == image.size
    if mode == "RGBA":
        assert np.array_equal(np.asarray(out)[..., 3], np.asarray(image)[..., 3])


@pytest.mark.parametrize("kind", SIMPLE)
def test_params_round_trip(kind: str) -> None:
    distorter = FACTORIES[kind]()
    params = distorter.params()
    rebuilt = type(distorter)(**json.loads(json.dumps(params)))
    assert rebuilt.params() == params
    image = _images(1)[0]
    assert torch.equal(rebuilt(image, seed=3), distorter(image, seed=3))


@pytest.mark.parametrize("cls", [RandomResizedCrop, ColorJitter, PatchMask])
def test_severities(cls: type[Distorter]) -> None:
    image = _images(1)[0]
    for severity in range(1, 6):
        distorter = cls(severity=severity)
        assert distorter(image, seed=1).shape == image.shape
    for bad in (0, 6, True):
        with pytest.raises(ValueError, match="severity"):
            cls(severity=bad)


# -- RandomResizedCrop ---------------------------------------------------------------------------


@pytest.mark.parametrize("severity", [None, 1, 3, 5])
@pytest.mark.parametrize(("height", "width"), [(16, 24), (64, 64), (8, 100), (300, 7)])
def test_crop_area_inside_its_range(severity: int | None, height: int, width: int) -> None:
    crop = RandomResizedCrop(severity=severity)
    lo, hi = crop.area
    boxes = crop.crop_boxes(list(range(300)), height, width)
    fractions = []
    for top, left, h, w in boxes:
        assert top >= 0.0
        assert top + h <= height + 1e-9
        assert left >= 0.0
        assert left + w <= width + 1e-9
        fractions.append(h * w / (height * width))
    assert min(fractions) >= lo - 1e-9
    assert max(fractions) <= hi + 1e-9
    assert max(fractions) - min(fractions) > (hi - lo) / 2  # spread over the range


def test_crop_aspect_ratio_is_in_range_when_it_fits() -> None:
    crop = RandomResizedCrop((0.01, 0.2), ratio=(0.5, 2.0))
    ratios = [w / h for _, _, h, w in crop.crop_boxes(list(range(300)), 100, 100)]
    assert min(ratios) >= 0.5 - 1e-9
    assert max(ratios) <= 2.0 + 1e-9
    assert min(ratios) < 0.7
    assert max(ratios) > 1.4


def test_crop_of_the_whole_image_is_the_identity() -> None:
    crop = RandomResizedCrop((1.0, 1.0), ratio=(1.0, 1.0))
    images = _images(2, height=16, width=16)
    torch.testing.assert_close(crop.batch(images, [1, 2]), images, atol=1e-5, rtol=0)


def test_crop_output_size_preserved_and_content_varies() -> None:
    image = torch.zeros(3, 32, 32)
    image[:, :, :16] = 1.0  # left half white, right half black
    crop = RandomResizedCrop()
    means = [float(crop(image, seed=seed).mean()) for seed in range(60)]
    assert crop(image, seed=0).shape == (3, 32, 32)
    assert any(m > 0.99 for m in means), "some crops should be all white"
    assert any(m < 0.01 for m in means), "some crops should be all black"
    assert any(0.05 < m < 0.95 for m in means), "some crops should straddle the edge"
    out = crop(Image.new("RGB", (40, 30), (10, 200, 30)), seed=2)
    assert out.size == (40, 30)


def test_crop_bad_arguments() -> None:
    with pytest.raises(ValueError, match="area"):
        RandomResizedCrop((0.0, 0.2))
    with pytest.raises(ValueError, match="area"):
        RandomResizedCrop((0.5, 0.2))
    with pytest.raises(ValueError, match="area"):
        RandomResizedCrop((0.5, 1.5))
    with pytest.raises(TypeError, match="area"):
        RandomResizedCrop(0.2)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="area"):
        RandomResizedCrop(("a", 0.2))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ratio"):
        RandomResizedCrop(ratio=(0.0, 1.0))
    with pytest.raises(ValueError, match="ratio"):
        RandomResizedCrop(ratio=(1.0, math.inf))
    with pytest.raises(ValueError, match="height"):
        RandomResizedCrop().crop_boxes([1], 0, 5)


# -- ColorJitter ---------------------------------------------------------------------------------


def test_color_all_zero_is_the_identity() -> None:
    images = _images(3)
    out = ColorJitter(0, 0, 0, 0).batch(images, [1, 2, 3])
    assert torch.equal(out, images)


def test_color_brightness_uses_a_different_factor_per_item() -> None:
    jitter = ColorJitter(brightness=0.5, contrast=0, saturation=0, hue=0)
    images = torch.full((4, 3, 5, 5), 0.5)
    seeds = [10, 11, 12, 13]
    out = jitter.batch(images, seeds)
    factors = [b for b, _, _, _ in jitter.factors(seeds)]
    assert len(set(factors)) == 4
    for i, factor in enumerate(factors):
        assert 0.5 <= factor <= 1.5
        torch.testing.assert_close(out[i], torch.full((3, 5, 5), 0.5 * factor))


def test_color_contrast_blends_with_the_grey_mean() -> None:
    jitter = ColorJitter(0, 0.6, 0, 0)
    image = _images(1)[0]
    (_, c, _, _) = jitter.factors([4])[0]
    r, g, b = image
    mean = (0.2989 * r + 0.587 * g + 0.114 * b).mean()
    expected = (c * image + (1 - c) * mean).clamp(0, 1)
    torch.testing.assert_close(jitter(image, seed=4), expected)


def test_color_saturation_zero_factor_gives_grey() -> None:
    jitter = ColorJitter(0, 0, 1.0, 0)
    image = _images(1)[0]
    seed = next(s for s in range(1000) if jitter.factors([s])[0][2] < 0.01)
    out = jitter(image, seed=seed)
    spread = out.amax(dim=0) - out.amin(dim=0)
    assert float(spread.max()) < 0.02


def test_color_hue_conversion_round_trips_and_shifts() -> None:
    images = _images(2)
    torch.testing.assert_close(hsv_to_rgb(rgb_to_hsv(images)), images, atol=1e-5, rtol=0)
    red = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
    hsv = rgb_to_hsv(red)
    hsv[:, 0] = 1 / 3  # a third of a turn: green
    torch.testing.assert_close(hsv_to_rgb(hsv), torch.tensor([0.0, 1.0, 0.0]).view(1, 3, 1, 1))
    out = ColorJitter(0, 0, 0, 0.5)(images[0], seed=3)
    assert not torch.allclose(out, images[0], atol=1e-3)


def test_color_grey_images_unchanged_by_hue_and_saturation() -> None:
    image = _pil("L")
    out = ColorJitter(0, 0, 0.8, 0.5)(image, seed=1)
    assert out.mode == "L"
    assert np.array_equal(np.asarray(out), np.asarray(image))
    assert not np.array_equal(
        np.asarray(ColorJitter(0.8, 0, 0, 0)(image, seed=1)), np.asarray(image)
    )


def test_color_bad_arguments() -> None:
    with pytest.raises(ValueError, match="brightness"):
        ColorJitter(brightness=-0.1)
    with pytest.raises(ValueError, match="hue"):
        ColorJitter(hue=0.6)
    with pytest.raises(ValueError, match="contrast"):
        ColorJitter(contrast=math.nan)
    with pytest.raises(TypeError, match="saturation"):
        ColorJitter(saturation="0.4")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="brightness"):
        ColorJitter(brightness=True)


# -- PatchMask -----------------------------------------------------------------------------------


def _blank_patches(out: torch.Tensor, size: int, value: torch.Tensor) -> int:
    """Patches of ``out`` (C, H, W) whose pixels all equal ``value`` (C, 1, 1)."""
    _, height, width = out.shape
    count = 0
    for top in range(0, height, size):
        for left in range(0, width, size):
            patch = out[:, top : top + size, left : left + size]
            count += bool(torch.all(patch == value.expand_as(patch)))
    return count


@pytest.mark.parametrize(
    ("fraction", "size", "height", "width", "expected"),
    [
        (0.4, 8, 40, 40, 10),  # 25 patches
        (0.25, 8, 37, 45, 8),  # 5 x 6 = 30 patches, partial edges; round(7.5) = 8
        (0.1, 4, 16, 24, 2),  # 24 patches; round(2.4) = 2
        (0.0, 4, 16, 24, 0),
        (1.0, 5, 16, 24, 20),  # 4 x 5
    ],
)
def test_patch_mask_covers_the_exact_fraction(
    fraction: float, size: int, height: int, width: int, expected: int
) -> None:
    mask = PatchMask(fraction, patch_size=size)
    images = _images(3, height=height, width=width) * 0.8 + 0.1  # no zero pixels
    out = mask.batch(images, [1, 2, 3])
    zero = torch.zeros(3, 1, 1)
    for item in out:
        assert _blank_patches(item, size, zero) == expected
        assert int((item == 0).all(dim=0).sum()) <= expected * size * size
    assert int(mask.patch_masks([1], height, width).sum()) == expected


def test_patch_mask_fill_mean_and_constant() -> None:
    images = _images(2, height=20, width=20)
    out = PatchMask(0.5, patch_size=5, fill="mean").batch(images, [1, 2])
    for item, image in zip(out, images, strict=True):
        assert _blank_patches(item, 5, image.mean(dim=(1, 2), keepdim=True)) == 8
    out = PatchMask(0.5, patch_size=5, fill=1.0).batch(images, [1, 2])
    assert _blank_patches(out[0], 5, torch.ones(3, 1, 1)) == 8


def test_patch_mask_bad_arguments() -> None:
    with pytest.raises(ValueError, match="fraction"):
        PatchMask(1.5)
    with pytest.raises(TypeError, match="fraction"):
        PatchMask("half")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="patch_size"):
        PatchMask(patch_size=0)
    with pytest.raises(TypeError, match="patch_size"):
        PatchMask(patch_size=4.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="fill"):
        PatchMask(fill="median")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="fill"):
        PatchMask(fill=2.0)
    with pytest.raises(TypeError, match="fill"):
        PatchMask(fill=None)  # type: ignore[arg-type]


# -- Compose / OneOf -----------------------------------------------------------------------------


def test_compose_with_p_one_zero_equals_the_first_child() -> None:
    first, second = ColorJitter(), PatchMask(patch_size=4)
    compose = Compose([first, second], p=[1, 0])
    image = _images(1)[0]
    for seed in (1, 2, 3):
        expected = first(image, seed=derive_seed(seed, "compose", 0))
        assert torch.equal(compose(image, seed=seed), expected)


def test_compose_applies_in_order_with_each_childs_finish() -> None:
    crop, mask = RandomResizedCrop(), PatchMask(patch_size=4)
    compose = Compose([crop, mask])
    image = _images(1)[0]
    expected = mask(
        crop(image, seed=derive_seed(9, "compose", 0)), seed=derive_seed(9, "compose", 1)
    )
    torch.testing.assert_close(compose(image, seed=9), expected, atol=1e-6, rtol=0)
    # the child's own finish is used, and Compose adds no clamp of its own
    unbounded = Compose([DiffusionNoise(space="normalized")])
    out = unbounded(_images(1)[0], seed=1)
    assert float(out.max()) > 1.0 or float(out.min()) < 0.0
    wrapped = Compose([DiffusionNoise(overflow="wrap")])
    pil = _pil("RGB")
    assert np.array_equal(
        np.asarray(wrapped(pil, seed=4)),
        np.asarray(DiffusionNoise(overflow="wrap")(pil, seed=derive_seed(4, "compose", 0))),
    )


def test_compose_decisions_follow_p() -> None:
    compose = Compose([ColorJitter(), PatchMask()], p=[0.3, 0.8])
    plans = np.array(compose.plan(list(range(2000))))
    assert plans[:, 0].mean() == pytest.approx(0.3, abs=0.04)
    assert plans[:, 1].mean() == pytest.approx(0.8, abs=0.04)
    seeds = list(range(8))
    plan = compose.plan(seeds)
    assert len({tuple(row) for row in plan}) > 1  # the batch test below mixes groups


def test_one_of_picks_each_child_with_its_probability() -> None:
    children = [ColorJitter(), PatchMask(patch_size=4), RandomResizedCrop()]
    one_of = OneOf(children, p=[1, 0, 3])
    assert one_of.p == [0.25, 0.0, 0.75]
    chosen = np.array(one_of.choices(list(range(4000))))
    assert (chosen == 1).sum() == 0
    assert (chosen == 0).mean() == pytest.approx(0.25, abs=0.03)
    assert (chosen == 2).mean() == pytest.approx(0.75, abs=0.03)
    image = _images(1)[0]
    for seed in range(6):
        child = children[one_of.choices([seed])[0]]
        expected = child(image, seed=derive_seed(seed, "oneof"))
        torch.testing.assert_close(one_of(image, seed=seed), expected, atol=1e-6, rtol=0)
    uniform = np.array(OneOf(children).choices(list(range(3000))))
    for k in range(3):
        assert (uniform == k).mean() == pytest.approx(1 / 3, abs=0.04)


def test_compose_and_one_of_params() -> None:
    compose = Compose([ColorJitter(0.1, 0.2, 0.3, 0.04), PatchMask(0.5)], p=[0.5, 1])
    params = compose.params()
    assert params == {
        "distorters": [
            {"name": "color_jitter", "params": ColorJitter(0.1, 0.2, 0.3, 0.04).params()},
            {"name": "patch_mask", "params": PatchMask(0.5).params()},
        ],
        "p": [0.5, 1.0],
    }
    json.dumps(params)
    nested = OneOf([compose, RandomResizedCrop()])
    assert nested.name == "one_of"
    assert compose.name == "compose"
    assert nested.params()["distorters"][0] == {"name": "compose", "params": params}
    assert nested.params()["p"] == [0.5, 0.5]


def test_compose_and_one_of_bad_arguments() -> None:
    for cls in (Compose, OneOf):
        with pytest.raises(ValueError, match="at least one"):
            cls([])
        with pytest.raises(TypeError, match="Distorter instance"):
            cls([ColorJitter(), "blur"])  # type: ignore[list-item]
        with pytest.raises(TypeError, match="not the class"):
            cls([ColorJitter])  # type: ignore[list-item]
        with pytest.raises(TypeError, match="list of Distorter"):
            cls(ColorJitter())  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="one probability per distorter"):
            cls([ColorJitter(), PatchMask()], p=[1.0])
        with pytest.raises(ValueError, match="p values"):
            cls([ColorJitter()], p=[-0.5])
        with pytest.raises(TypeError, match="p must"):
            cls([ColorJitter()], p=0.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        Compose([ColorJitter()], p=[1.5])
    with pytest.raises(ValueError, match="positive sum"):
        OneOf([ColorJitter(), PatchMask()], p=[0, 0])


# -- DistortingCollator --------------------------------------------------------------------------


def _dataset(count: int = 10, *, ids: bool = True) -> list[dict[str, Any]]:
    images = _images(count, height=8, width=8)
    rows: list[dict[str, Any]] = []
    for i in range(count):
        row: dict[str, Any] = {"images": images[i]}
        if ids:
            row["id"] = f"ex-{i}"
        rows.append(row)
    return rows


class _Rows(Dataset[dict[str, Any]]):
    """A tiny in-memory map-style dataset of example dicts."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.rows[index]


def _run(loader: DataLoader[Any]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for batch in loader:
        assert batch["rejected_images"].shape == batch["images"].shape
        for example_id, rejected in zip(batch["id"], batch["rejected_images"], strict=True):
            out[example_id] = rejected
    return out


def test_collator_in_a_dataloader() -> None:
    dataset = _dataset()
    collator = DistortingCollator(PatchMask(0.5, patch_size=2), seed=3)
    loader: DataLoader[Any] = DataLoader(_Rows(dataset), batch_size=4, collate_fn=collator)
    batch = next(iter(loader))
    assert set(batch) == {"id", "images", "rejected_images"}
    assert batch["rejected_images"].shape == (4, 3, 8, 8)
    assert not torch.equal(batch["rejected_images"], batch["images"])
    first = _run(loader)
    again = _run(loader)
    assert first.keys() == again.keys() == {f"ex-{i}" for i in range(10)}
    assert all(torch.equal(first[k], again[k]) for k in first)
    collator.set_epoch(1)
    later = _run(loader)
    assert all(not torch.equal(first[k], later[k]) for k in first)
    collator.set_epoch(0)
    assert all(torch.equal(first[k], v) for k, v in _run(loader).items())
    # each example's result is its own, whatever the order and batching
    shuffled: DataLoader[Any] = DataLoader(
        _Rows(dataset),
        batch_size=3,
        sampler=[7, 2, 9, 0, 5, 1, 8, 3, 6, 4],
        collate_fn=collator,
    )
    assert all(torch.equal(first[k], v) for k, v in _run(shuffled).items())
    expected = PatchMask(0.5, patch_size=2)(dataset[4]["images"], seed=derive_seed(3, "ex-4", 0))
    assert torch.equal(first["ex-4"], expected)


def test_collator_without_ids_uses_positions_in_the_epoch() -> None:
    dataset = _dataset(6, ids=False)
    collator = DistortingCollator(ColorJitter(), seed=1)
    loader: DataLoader[Any] = DataLoader(_Rows(dataset), batch_size=4, collate_fn=collator)
    first = torch.cat([b["rejected_images"] for b in loader])
    collator.set_epoch(0)  # restart the position count
    assert torch.equal(first, torch.cat([b["rejected_images"] for b in loader]))
    expected = ColorJitter()(dataset[5]["images"], seed=derive_seed(1, 5, 0))
    torch.testing.assert_close(first[5], expected, atol=1e-6, rtol=0)
    assert collator.seeds([{"id": 7}, {"x": 1}], start=3) == [
        derive_seed(1, 7, 0),
        derive_seed(1, 4, 0),
    ]


def test_collator_errors() -> None:
    collator = DistortingCollator(ColorJitter())
    with pytest.raises(KeyError, match="no 'images' entry"):
        collator([{"id": "a", "pixels": torch.zeros(3, 4, 4)}])
    with pytest.raises(TypeError, match=r"float tensor \(B, C, H, W\)"):
        collator([{"id": "a", "images": torch.zeros(3, 4, 4, dtype=torch.uint8)}])
    with pytest.raises(TypeError, match=r"float tensor \(B, C, H, W\)"):
        collator([{"id": "a", "images": torch.zeros(4, 4)}])
    with pytest.raises(TypeError, match=r"float tensor \(B, C, H, W\)"):
        collator([{"id": "a", "images": "picture.png"}])
    with pytest.raises(TypeError, match="example ids"):
        collator([{"id": 1.5, "images": torch.zeros(3, 4, 4)}])
    with pytest.raises(TypeError, match="mapping"):
        DistortingCollator(ColorJitter(), base_collate=lambda rows: rows)([{"images": 1}])
    with pytest.raises(TypeError, match="Distorter instance"):
        DistortingCollator(ColorJitter)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="must differ"):
        DistortingCollator(ColorJitter(), output_key="images")
    with pytest.raises(ValueError, match="seed"):
        DistortingCollator(ColorJitter(), seed=-1)
    with pytest.raises(TypeError, match="image_key"):
        DistortingCollator(ColorJitter(), image_key=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="epoch"):
        collator.set_epoch(-2)
    with pytest.raises(TypeError, match="base_collate"):
        DistortingCollator(ColorJitter(), base_collate=42)  # type: ignore[arg-type]
