"""PairBuilder end to end: the demo run, determinism, and every kind of bad row."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pytest
from PIL import Image

from povidgen import (
    DatasetFormatError,
    DiffusionNoise,
    Distorter,
    Edit,
    Example,
    Hallucination,
    HallucinationError,
    Hallucinator,
    MissingColumnError,
    PairBuilder,
    RuleHallucinator,
    derive_seed,
)
from povidgen.pairs.trl_format import message_text
from povidgen.sources.demo import CAPTION_PROMPT, contradicts, demo_dataset, parse_scene
from tests.conftest import encode


@pytest.fixture(scope="module")
def demo() -> datasets.Dataset:
    return demo_dataset(n=64, seed=0)


def _build(dataset: Any, seed: int = 0, **kwargs: Any) -> tuple[datasets.Dataset, PairBuilder]:
    options: dict[str, Any] = {
        "image_column": "image",
        "prompt_column": "question",
        "answer_column": "answer",
        "id_column": "id",
        "hallucinator": RuleHallucinator(),
        "distorter": DiffusionNoise(step=500),
        "seed": seed,
    }
    options.update(kwargs)
    builder = PairBuilder.from_dataset(dataset, **options)
    return builder.build(), builder


@pytest.fixture(scope="module")
def demo_pairs(demo: datasets.Dataset) -> tuple[datasets.Dataset, PairBuilder]:
    return _build(demo)


def test_demo_run_gives_trl_vision_pairs(
    demo: datasets.Dataset, demo_pairs: tuple[datasets.Dataset, PairBuilder]
) -> None:
    pairs, builder = demo_pairs
    assert builder.errors == []
    assert len(pairs) == len(demo) == 64
    assert {"images", "prompt", "chosen", "rejected", "rejected_images", "id", "provenance"} <= set(
        pairs.column_names
    )
    scenes = {row["id"]: row for row in demo}
    for row in pairs:
        source = scenes[row["id"]]
        assert row["prompt"][0]["role"] == "user"
        assert row["prompt"][0]["content"][0] == {"type": "image", "text": None}
        assert row["prompt"][0]["content"][1]["text"] == source["question"]
        chosen, rejected = message_text(row["chosen"]), message_text(row["rejected"])
        assert chosen == source["answer"]
        assert rejected != chosen
        assert row["images"][0].size == row["rejected_images"][0].size == (256, 256)
        assert row["images"][0].tobytes() == source["image"].tobytes()
        assert row["images"][0].tobytes() != row["rejected_images"][0].tobytes()
        provenance = row["provenance"]
        assert provenance["hallucinator"] == "rule"
        assert json.loads(provenance["distorter_params"])["step"] == 500
        assert provenance["example_seed"] == derive_seed(0, row["id"])
        assert provenance["edits"], row["id"]
        for edit in provenance["edits"]:
            assert rejected[edit["start"] : edit["end"]] == edit["injected"]


def test_every_rejected_answer_contradicts_its_scene(
    demo: datasets.Dataset, demo_pairs: tuple[datasets.Dataset, PairBuilder]
) -> None:
    pairs, _ = demo_pairs
    scenes = {row["id"]: parse_scene(row["scene"]) for row in demo}
    undecided = []
    for row in pairs:
        scene = scenes[row["id"]]
        edits = row["provenance"]["edits"]
        # Read in its clause: "The kites are on the left" is false for kites on the right even
        # when another group is on the left.
        rejected = message_text(row["rejected"])
        verified = (
            contradicts(scene, e["kind"], e["injected"], rejected=rejected, start=e["start"])
            for e in edits
        )
        if not any(verified):
            undecided.append((row["id"], message_text(row["rejected"]), edits))
    assert undecided == []


def test_two_edits_where_the_answer_allows(
    demo_pairs: tuple[datasets.Dataset, PairBuilder],
) -> None:
    pairs, _ = demo_pairs
    # Captions allow two edits or more; an answer to a question keeps the asked object, so a
    # short one ("The apples are white.") may allow only the asked one.
    captions = [
        len(row["provenance"]["edits"])
        for row in pairs
        if row["prompt"][0]["content"][1]["text"] == CAPTION_PROMPT
    ]
    assert captions
    assert all(count >= 2 for count in captions)
    assert all(len(row["provenance"]["edits"]) >= 1 for row in pairs)


def test_same_seed_same_dataset_other_seed_other_pairs(
    demo: datasets.Dataset, demo_pairs: tuple[datasets.Dataset, PairBuilder]
) -> None:
    small = demo.select(range(12))
    first, _ = _build(small)
    again, _ = _build(small)
    other, _ = _build(small, seed=1)
    assert first.data.table.equals(again.data.table)
    assert first["rejected"] != other["rejected"]
    for a, b in zip(first, other, strict=True):
        assert a["rejected_images"][0].tobytes() != b["rejected_images"][0].tobytes()
    # a pair does not depend on which rows surround it or on the batch size
    reordered, _ = _build(small.select(range(11, -1, -1)), batch_size=5)
    assert sorted(reordered["rejected"], key=str) == sorted(first["rejected"], key=str)


def test_a_pair_can_be_made_again_from_its_provenance(
    demo: datasets.Dataset, demo_pairs: tuple[datasets.Dataset, PairBuilder]
) -> None:
    pairs, _ = demo_pairs
    row = pairs[3]
    params = json.loads(row["provenance"]["distorter_params"])
    noise = DiffusionNoise(**params)
    again = noise(row["images"][0], seed=row["provenance"]["example_seed"])
    assert again.tobytes() == row["rejected_images"][0].tobytes()


def test_missing_column_names_it_and_lists_the_others(demo: datasets.Dataset) -> None:
    with pytest.raises(MissingColumnError) as raised:
        PairBuilder.from_dataset(demo, prompt_column="prompt", answer_column="answer")
    message = str(raised.value)
    assert "'prompt'" in message
    for column in demo.column_names:
        assert repr(column) in message
    with pytest.raises(MissingColumnError, match="id column 'uid'"):
        PairBuilder.from_dataset(demo, prompt_column="question", id_column="uid")


def _odd_rows(rgb: Image.Image) -> list[dict[str, Any]]:
    palette = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    sixteen = Image.fromarray((np.arange(24 * 16).reshape(16, 24) * 150).astype(np.uint16))
    cases = {
        "rgb": encode(rgb),
        "cmyk": encode(rgb.convert("CMYK"), "JPEG"),
        "rgba": encode(rgb.convert("RGBA")),
        "sixteen-bit": encode(sixteen),
        "palette": encode(palette),
        "corrupt": b"\x89PNG\r\n\x1a\n this is not really a png",
        "empty-answer": encode(rgb),
        "no-image": None,
        "two-images": [encode(rgb), encode(rgb)],
    }
    rows = []
    for name, data in cases.items():
        answer = "" if name == "empty-answer" else "Two red apples are on the left of a cup."
        image = data if data is None or isinstance(data, list) else {"bytes": data, "path": None}
        rows.append({"id": name, "image": image, "q": "<image>\nDescribe it.", "a": answer})
    return rows


def test_odd_images_and_bad_rows_become_pairs_or_row_errors(rgb_image: Image.Image) -> None:
    rows = _odd_rows(rgb_image)
    pairs, builder = _build(rows, prompt_column="q", answer_column="a")
    built = set(pairs["id"])
    failed = {e.id: e for e in builder.errors}
    assert built == {"rgb", "cmyk", "rgba", "sixteen-bit", "palette"}
    assert set(failed) == {"corrupt", "empty-answer", "no-image", "two-images"}
    assert failed["corrupt"].stage == "image"
    assert "cannot decode" in failed["corrupt"].reason
    assert failed["empty-answer"].stage == "input"
    assert "answer is empty" in failed["empty-answer"].reason
    assert "no image" in failed["no-image"].reason
    assert "multi-image" in failed["two-images"].reason
    assert builder.report.rows == len(rows)
    assert builder.report.pairs + builder.report.failed == len(rows)
    for row in pairs:
        assert row["images"][0].mode == "RGB"
        assert row["prompt"][0]["content"][1]["text"] == "Describe it."


def test_a_dataset_image_column_with_a_corrupt_image_does_not_stop_the_run(
    rgb_image: Image.Image,
) -> None:
    features = datasets.Features(
        {"id": datasets.Value("string"), "image": datasets.Image(), "q": datasets.Value("string")}
    )
    good = {"bytes": encode(rgb_image), "path": None}
    bad = {"bytes": b"garbage", "path": None}
    dataset = datasets.Dataset.from_list(
        [
            {"id": "good", "image": good, "q": "Two cats."},
            {"id": "bad", "image": bad, "q": "A dog."},
        ],
        features=features,
    )
    pairs, builder = _build(dataset, prompt_column="q", answer_column="q")
    assert pairs["id"] == ["good"]
    assert [(e.id, e.stage) for e in builder.errors] == [("bad", "image")]


class _Failing(Hallucinator):
    name = "failing"

    async def ahallucinate(self, example: Example) -> Hallucination:
        if example.id == "raise":
            raise HallucinationError("the provider refused")
        if example.id == "crash":
            raise KeyError("unexpected")
        return Hallucination(rejected=example.answer + " ", edits=[])  # same text


class _BrokenDistorter(Distorter):
    name = "broken"

    def distort(self, image: Image.Image, *, seed: int) -> Image.Image:
        raise RuntimeError("GPU fell over")


def test_hallucinator_and_distorter_failures_are_recorded(rgb_image: Image.Image) -> None:
    rows = [
        {"id": i, "image": rgb_image, "prompt": "Describe.", "answer": "A red ball."}
        for i in ("raise", "crash", "same")
    ]
    pairs, builder = _build(rows, prompt_column="prompt", hallucinator=_Failing(), distorter=None)
    assert len(pairs) == 0
    assert pairs.column_names == ["id", "images", "prompt", "chosen", "rejected", "provenance"]
    errors = {e.id: e for e in builder.errors}
    assert errors["raise"].stage == "hallucinate"
    assert errors["raise"].error_type == "HallucinationError"
    assert errors["crash"].error_type == "KeyError"
    assert errors["same"].stage == "pair"
    assert "identical" in errors["same"].reason

    _, builder = _build(rows[:1], prompt_column="prompt", distorter=_BrokenDistorter())
    assert [(e.stage, e.reason) for e in builder.errors] == [("distort", "GPU fell over")]


def test_duplicate_and_missing_ids(rgb_image: Image.Image) -> None:
    rows = [
        {"id": "x", "image": rgb_image, "prompt": "Describe.", "answer": "A red ball on the left."},
        {
            "id": "x",
            "image": rgb_image,
            "prompt": "Describe.",
            "answer": "A blue cup on the right.",
        },
        {"id": None, "image": rgb_image, "prompt": "Describe.", "answer": "A red ball."},
        {"id": "y", "image": rgb_image, "prompt": 5, "answer": "A red ball."},
    ]
    pairs, builder = _build(rows, prompt_column="prompt")
    assert pairs["id"] == ["x"]
    reasons = [(e.index, e.reason) for e in builder.errors]
    assert reasons == [
        (1, "duplicate id 'x' (first seen at row 0)"),
        (2, "empty id in column 'id'"),
        (3, "prompt is not text (got int)"),
    ]


def test_without_an_id_column_rows_are_numbered(rgb_image: Image.Image) -> None:
    rows = [{"image": rgb_image, "prompt": "Q?", "answer": "Two red apples."}] * 2
    pairs, _ = _build(rows, prompt_column="prompt", id_column=None, distorter=None)
    assert pairs["id"] == ["row-0", "row-1"]
    assert "rejected_images" not in pairs.column_names


def test_images_from_paths_resolve_against_the_image_folder(
    tmp_path: Path, rgb_image: Image.Image
) -> None:
    rgb_image.save(tmp_path / "a.jpg", quality=95)
    rows = [{"id": "a", "image": "a.jpg", "prompt": "Q?", "answer": "Two red apples."}]
    pairs, builder = _build(rows, prompt_column="prompt", image_folder=tmp_path)
    assert builder.errors == []
    stored = pairs.cast_column("images", datasets.List(datasets.Image(decode=False)))[0]
    assert stored["images"][0]["bytes"] == (tmp_path / "a.jpg").read_bytes()  # not re-encoded


def test_bad_arguments(rgb_image: Image.Image) -> None:
    rows = [{"image": rgb_image, "prompt": "Q?", "answer": "A."}]
    with pytest.raises(TypeError, match=r"povidgen\.Hallucinator"):
        PairBuilder.from_dataset(rows, hallucinator=object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"povidgen\.Distorter"):
        PairBuilder.from_dataset(rows, distorter=lambda im, seed: im)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="list of dicts"):
        PairBuilder.from_dataset(42)  # type: ignore[arg-type]
    with pytest.raises(DatasetFormatError, match=r"no dataset at rows\.json"):
        PairBuilder.from_dataset("rows.json")  # a string is a path or a Hub id
    with pytest.raises(TypeError, match="only when dataset is a Hub id"):
        PairBuilder.from_dataset(rows, split="train")
    with pytest.raises(ValueError, match="at least 1"):
        PairBuilder.from_dataset(rows, concurrency=0)


def test_build_works_inside_a_running_event_loop(rgb_image: Image.Image) -> None:
    """Notebooks run cells inside an event loop; build() must not trip over it."""
    rows = [{"image": rgb_image, "prompt": "Q?", "answer": "Two red apples on the left."}]

    async def notebook_cell() -> datasets.Dataset:
        return _build(rows, prompt_column="prompt", id_column=None)[0]

    assert len(asyncio.run(notebook_cell())) == 1


class _SlowFirst(Hallucinator):
    """Row 0 takes a long time; the others are quick. Records how many calls run at once."""

    name = "slow-first"

    def __init__(self) -> None:
        self.in_flight = 0
        self.most_in_flight = 0
        self.started_while_first_ran = 0
        self.first_running = False

    async def ahallucinate(self, example: Example) -> Hallucination:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        if example.id == "r0":
            self.first_running = True
            await asyncio.sleep(0.5)
            self.first_running = False
        else:
            self.started_while_first_ran += self.first_running
            await asyncio.sleep(0.01)
        self.in_flight -= 1
        rejected = example.answer.replace("red", "blue")
        start = rejected.index("blue")
        edit = Edit(kind="attribute", original="red", injected="blue", start=start, end=start + 4)
        return Hallucination(rejected=rejected, edits=[edit])


def test_calls_stream_in_a_sliding_window_without_a_batch_barrier() -> None:
    image = Image.new("RGB", (8, 8))
    rows = [
        {"id": f"r{i}", "image": image, "prompt": "q?", "answer": f"a red cup number {i}."}
        for i in range(24)
    ]
    slow = _SlowFirst()
    builder = PairBuilder.from_dataset(
        rows, hallucinator=slow, id_column="id", concurrency=4, batch_size=4
    )
    pairs = builder.build()
    assert pairs["id"] == [f"r{i}" for i in range(24)]  # input order
    assert slow.most_in_flight == 4  # the concurrency bound holds
    # while row 0 waited, the other three slots kept working through later rows (a batch of
    # 4 with a barrier would have started 3)
    assert slow.started_while_first_ran >= 12
