"""Contact sheets of preference pairs."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from datasets import Dataset, Features
from PIL import Image as PILImage

from povidgen.pairs.trl_format import pair_features
from povidgen.preview import EDIT_COLORS, render_preview, save_preview

CLEAN = (30, 160, 90)
DISTORTED = (255, 0, 255)


def features(*, distorted: bool) -> Features:
    """The published pairs schema, as the builder writes it."""
    return pair_features(with_rejected_images=distorted)


def png(color: tuple[int, int, int], size: tuple[int, int] = (64, 48)) -> dict[str, Any]:
    buffer = io.BytesIO()
    PILImage.new("RGB", size, color).save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}


def edits_for(rejected: str, *spans: tuple[str, str, str]) -> list[dict[str, Any]]:
    """Edit records for (kind, original, injected) triples, located in ``rejected``."""
    out = []
    for kind, original, injected in spans:
        start = rejected.index(injected)
        out.append(
            {
                "kind": kind,
                "original": original,
                "injected": injected,
                "start": start,
                "end": start + len(injected),
            }
        )
    return out


def row(
    index: int,
    prompt: str,
    chosen: str,
    rejected: str,
    edits: list[dict[str, Any]],
    *,
    distorted: bool,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": f"pair-{index}",
        "images": [png(CLEAN)],
        "prompt": [
            {
                "role": "user",
                "content": [{"type": "image", "text": None}, {"type": "text", "text": prompt}],
            }
        ],
        "chosen": [{"role": "assistant", "content": [{"type": "text", "text": chosen}]}],
        "rejected": [{"role": "assistant", "content": [{"type": "text", "text": rejected}]}],
    }
    if distorted:
        out["rejected_images"] = [png(DISTORTED)]
    out["provenance"] = {
        "hallucinator": "rule",
        "hallucinator_params": "{}",
        "distorter": "diffusion" if distorted else None,
        "distorter_params": "{}" if distorted else None,
        "seed": 0,
        "example_seed": 1000 + index,
        "edits": edits,
        "povidgen_version": "0.1.0",
    }
    return out


def make_pairs(*, distorted: bool = False, with_edits: bool = True, n: int = 3) -> Dataset:
    chosen = "There are two red apples on the left and a blue book on the right."
    rejected = "There are three red bananas on the left and a blue book on the right."
    long_chosen = " ".join(["The apples are above the book and the kite is yellow."] * 12)
    long_rejected = long_chosen.replace("above", "below").replace("yellow", "green")
    texts = [
        (
            "How many apples are there?",
            chosen,
            rejected,
            [("count", "two", "three"), ("object", "apples", "bananas")],
        ),
        (
            "Describe the image in detail.",
            long_chosen,
            long_rejected,
            [("spatial", "above", "below"), ("attribute", "yellow", "green")],
        ),
        (
            "这是什么\uff1f مرحبا 🍎\tcafé",
            "这是一个红色的苹果。",
            "这是一个绿色的苹果。",
            [("attribute", "红色", "绿色"), ("mystery", "苹果", "苹果。")],
        ),
    ]
    rows = []
    for index in range(n):
        prompt, good, bad, spans = texts[index % len(texts)]
        edits = edits_for(bad, *spans) if with_edits else []
        rows.append(row(index, prompt, good, bad, edits, distorted=distorted))
    return Dataset.from_list(rows, features=features(distorted=distorted))


def count_color(image: PILImage.Image, color: tuple[int, int, int]) -> int:
    return int(np.all(np.asarray(image) == color, axis=-1).sum())


@pytest.fixture(scope="module")
def pairs() -> Dataset:
    return make_pairs()


def test_renders_without_distorted_images(pairs: Dataset) -> None:
    sheet = render_preview(pairs)
    assert sheet.mode == "RGB"
    assert sheet.width == 1200
    assert 300 < sheet.height < 4000
    assert count_color(sheet, CLEAN) > 1000
    assert count_color(sheet, DISTORTED) == 0


def test_renders_distorted_images() -> None:
    sheet = render_preview(make_pairs(distorted=True), width=900)
    assert sheet.width == 900
    assert count_color(sheet, DISTORTED) > 1000
    assert count_color(sheet, CLEAN) > 1000


def test_injected_spans_are_highlighted(pairs: Dataset) -> None:
    plain = render_preview(make_pairs(with_edits=False))
    marked = render_preview(pairs)
    # The legend shows every colour once; only the spans add more of it.
    for kind in ("count", "object", "spatial", "attribute"):
        assert count_color(marked, EDIT_COLORS[kind]) > count_color(plain, EDIT_COLORS[kind]), kind


def test_omissions_are_marked_in_both_answers() -> None:
    chosen = "The image shows two red books on the left, a blue cup at the top and a kite."
    rejected = "The image shows two red books on the left and a blue cup at the top."
    left_out = ", a blue cup at the top and a kite"

    def sheet(original: str, *, with_edits: bool = True) -> PILImage.Image:
        edits = edits_for(rejected, ("omission", original, " and a blue cup at the top"))
        one = row(0, "Describe.", chosen, rejected, edits if with_edits else [], distorted=False)
        return render_preview(Dataset.from_list([one], features=features(distorted=False)))

    color = EDIT_COLORS["omission"]
    legend_only = count_color(sheet(left_out, with_edits=False), color)
    # an original not in the chosen answer (hand-edited data): only the rejected span is marked
    rejected_only = count_color(sheet("a text the chosen answer does not hold"), color)
    both = count_color(sheet(left_out), color)
    assert legend_only < rejected_only < both


def test_takes_the_first_n_rows() -> None:
    many = make_pairs(n=5)
    one = render_preview(many, n=1)
    assert one.height < render_preview(many, n=2).height
    assert render_preview(many, n=50).height == render_preview(many, n=5).height


def test_narrow_sheets_still_wrap_long_text() -> None:
    sheet = render_preview(make_pairs(distorted=True), width=480)
    assert sheet.width == 480
    assert count_color(sheet, EDIT_COLORS["spatial"]) > 0


def test_bad_spans_are_found_by_text_or_skipped(pairs: Dataset) -> None:
    rejected = "There are three red bananas on the left."
    edits = [
        {"kind": "count", "original": "two", "injected": "three", "start": 0, "end": 5},
        {"kind": "object", "original": "x", "injected": "not there", "start": 90, "end": 99},
    ]
    broken = Dataset.from_list(
        [row(0, "How many?", "There are two red apples.", rejected, edits, distorted=False)],
        features=features(distorted=False),
    )
    assert count_color(render_preview(broken), EDIT_COLORS["count"]) > count_color(
        render_preview(make_pairs(with_edits=False, n=1)), EDIT_COLORS["count"]
    )


def test_save_preview(tmp_path: Path, pairs: Dataset) -> None:
    written = save_preview(pairs, tmp_path / "sub" / "sheet.png", n=2)
    assert written == tmp_path / "sub" / "sheet.png"
    with PILImage.open(written) as image:
        assert image.format == "PNG"
        assert image.width == 1200


@pytest.mark.parametrize("n", [0, -1])
def test_n_must_be_positive(pairs: Dataset, n: int) -> None:
    with pytest.raises(ValueError, match="n must be at least 1"):
        render_preview(pairs, n=n)


def test_width_must_be_sane(pairs: Dataset) -> None:
    with pytest.raises(ValueError, match="width"):
        render_preview(pairs, width=100)


def test_empty_dataset_is_refused(pairs: Dataset) -> None:
    with pytest.raises(ValueError, match="empty"):
        render_preview(pairs.select([]))


def test_missing_columns_are_named(pairs: Dataset) -> None:
    with pytest.raises(ValueError, match="'rejected', 'provenance'") as caught:
        render_preview(pairs.remove_columns(["rejected", "provenance"]))
    assert "'chosen'" in str(caught.value)  # the columns present are listed
