"""Pair modes (text-, image-contrast or both per row, a seeded mix) and dropping duplicates:
the split, its determinism under resume and shards, each mode's row, the trainer on each mode,
near-duplicate and repeated rows dropped and counted, the card, the CLI."""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import datasets
import pytest
import yaml
from huggingface_hub import DatasetCard
from PIL import Image, ImageOps

from povidgen import (
    Distorter,
    Example,
    Hallucination,
    Hallucinator,
    PairBuilder,
    RuleHallucinator,
    ShardLimits,
    derive_seed,
    load_pairs,
    merge_builds,
    publish,
)
from povidgen.cli import main
from povidgen.pairs.duplicates import (
    NEAR_DUPLICATE,
    REPEATED,
    content_key,
    near_duplicate,
)
from povidgen.pairs.modes import PairModes, pair_mode_of, parse_mix
from povidgen.pairs.output import OutputFolderError
from povidgen.pairs.shards import ERRORS, MANIFEST, SUMMARY, read_manifest
from povidgen.pairs.trl_format import message_text
from povidgen.sources.demo import demo_dataset

LIMITS = ShardLimits(max_rows=16, group_rows=4)


class _Invert(Distorter):
    """A cheap distorter (the tests are about rows, not noise): the negative image."""

    name = "invert"

    def distort(self, image: Image.Image, *, seed: int) -> Image.Image:
        return ImageOps.invert(image.convert("RGB"))


class _Recording(RuleHallucinator):
    """The rule hallucinator, remembering which rows it was asked to rewrite."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[str] = []

    async def ahallucinate(self, example: Example) -> Hallucination:
        self.asked.append(example.id)
        return await super().ahallucinate(example)


class _Batched(_Recording):
    """Takes rows a batch at a time (the path of batch-API providers)."""

    async def ahallucinate_many(
        self, examples: Sequence[Example], *, concurrency: int = 8, on_result: Any = None
    ) -> list[Any]:
        return [await self.ahallucinate(example) for example in examples]


@pytest.fixture(scope="module")
def demo() -> datasets.Dataset:
    return demo_dataset(n=300, seed=0)


def build(
    dataset: Any,
    out: Path | None = None,
    *,
    hallucinator: Hallucinator | None = None,
    **options: Any,
) -> PairBuilder:
    settings: dict[str, Any] = {
        "image_column": "image",
        "prompt_column": "question",
        "answer_column": "answer",
        "id_column": "id",
        "hallucinator": hallucinator or RuleHallucinator(),
        "distorter": _Invert(),
        "shard_limits": LIMITS,
        "workers": 2,
        "concurrency": 4,
    }
    settings.update(options)
    builder = PairBuilder.from_dataset(dataset, **settings)
    if out is not None:
        builder.run(out)
    return builder


def data_bytes(folder: Path) -> dict[str, bytes]:
    """What must equal between two builds: the shards, the failures and the manifest's rows."""
    files = {p.name: p.read_bytes() for p in sorted((folder / "data").glob("train-*.parquet"))}
    files[ERRORS] = (folder / ERRORS).read_bytes()
    files[MANIFEST] = "\n".join(
        json.dumps([s.shard, s.first, s.end, s.ids, s.positions, s.failed, s.sha256])
        for s in read_manifest(folder)
    ).encode()
    return files


def summary_of(folder: Path) -> dict[str, Any]:
    summary: dict[str, Any] = json.loads((folder / SUMMARY).read_text(encoding="utf-8"))
    return summary


# -- the split -----------------------------------------------------------------------------------


def test_the_mode_is_the_documented_draw() -> None:
    modes = PairModes.mix({"text": 1, "image": 1, "both": 2})
    assert modes.as_dict() == {"text": 0.25, "image": 0.25, "both": 0.5}
    for row_id in ("a", "b", "coco-42", "row-7#turn2"):
        u = derive_seed(3, row_id, "pair-mode") / 2**63
        expected = "text" if u < 0.25 else "image" if u < 0.5 else "both"
        assert modes.mode_of(3, row_id) == expected
    # one mode: no draw at all
    assert {PairModes.only("image").mode_of(s, "x") for s in range(20)} == {"image"}


@pytest.mark.parametrize(
    ("weights", "fractions"),
    [
        ({"text": 3, "image": 1}, {"text": 0.75, "image": 0.25, "both": 0.0}),
        ({"text": 1, "image": 1, "both": 2}, {"text": 0.25, "image": 0.25, "both": 0.5}),
    ],
)
def test_the_split_follows_the_ratio(
    weights: dict[str, float], fractions: dict[str, float]
) -> None:
    """Each mode's count is Binomial(n, p): within 4 standard deviations of n p (a bound a
    fair draw misses about once in 16,000 seeds)."""
    n = 400
    ids = [f"row-{i}" for i in range(n)]
    modes = PairModes.mix(weights)
    counts = modes.count(0, ids)
    assert sum(counts.values()) == n
    for mode, p in fractions.items():
        slack = 4 * math.sqrt(n * p * (1 - p))
        assert abs(counts[mode] - n * p) <= slack, (mode, counts)
    # the draw depends on the seed and id alone: not on order or on which rows are counted
    assert modes.count(0, reversed(ids)) == counts
    halves = modes.count(0, ids[::2]), modes.count(0, ids[1::2])
    assert {m: halves[0][m] + halves[1][m] for m in counts} == counts
    assert modes.count(1, ids) != counts  # another seed, another draw


def test_a_mix_build_splits_a_few_hundred_demo_rows(demo: datasets.Dataset, tmp_path: Path) -> None:
    hallucinator = _Recording()
    builder = build(
        demo,
        tmp_path / "out",
        hallucinator=hallucinator,
        pair_mode="mix",
        mix={"text": 3, "image": 1},
    )
    pairs = load_pairs(tmp_path / "out")
    recorded = Counter(row["pair_mode"] for row in pairs["provenance"])
    n, p = len(demo), 0.75
    assert len(pairs) == n
    assert abs(recorded["text"] - n * p) <= 4 * math.sqrt(n * p * (1 - p))
    assert recorded["text"] + recorded["image"] == n
    # the summary, the report and the rule agree with the rows
    expected = PairModes.mix({"text": 3, "image": 1}).count(0, demo["id"])
    assert summary_of(tmp_path / "out")["pair_modes"] == expected == builder.report.pair_modes
    assert dict(recorded) == {m: c for m, c in expected.items() if c}
    # the hallucinator saw the text rows only
    text_ids = [row["id"] for row in pairs if row["provenance"]["pair_mode"] == "text"]
    assert sorted(hallucinator.asked) == sorted(text_ids)


def test_mix_is_the_same_across_runs_resume_and_shards(
    demo: datasets.Dataset, tmp_path: Path
) -> None:
    rows = demo.select(range(48))
    options: dict[str, Any] = {"pair_mode": "mix", "mix": {"text": 1, "image": 1, "both": 1}}
    build(rows, tmp_path / "one", **options)
    build(rows, tmp_path / "again", **options)
    reference = data_bytes(tmp_path / "one")
    assert data_bytes(tmp_path / "again") == reference
    # interrupted after 21 rows (inside a segment), then resumed
    done = []

    def stop_after(count: int) -> None:
        done.append(count)
        if len(done) == 21:
            raise KeyboardInterrupt

    interrupted = build(rows, **options)
    with pytest.raises(KeyboardInterrupt):
        interrupted.run(tmp_path / "resumed", progress=stop_after)
    assert summary_of(tmp_path / "resumed")["complete"] is False
    resumed = build(rows, tmp_path / "resumed", **options)
    assert resumed.report.resumed_rows > 0
    assert data_bytes(tmp_path / "resumed") == reference
    assert (
        summary_of(tmp_path / "resumed")["pair_modes"] == summary_of(tmp_path / "one")["pair_modes"]
    )
    # three shares, merged
    shares = [tmp_path / f"share-{i}" for i in range(3)]
    for index, share in enumerate(shares):
        build(rows, share, num_shards=3, shard_index=index, **options)
    merge_builds(tmp_path / "merged", shares)
    assert data_bytes(tmp_path / "merged") == reference
    merged = summary_of(tmp_path / "merged")
    assert merged["pair_modes"] == summary_of(tmp_path / "one")["pair_modes"]


# -- each mode's rows ----------------------------------------------------------------------------


def test_each_mode_has_its_row_shape(demo: datasets.Dataset, tmp_path: Path) -> None:
    rows = demo.select(range(60))
    build(rows, tmp_path / "out", pair_mode="mix", mix={"text": 1, "image": 1, "both": 1})
    pairs = load_pairs(tmp_path / "out")
    assert pairs.features["provenance"]["pair_mode"] == datasets.Value("string")
    sources = {row["id"]: row for row in rows}
    seen = set()
    for row in pairs:
        mode = row["provenance"]["pair_mode"]
        seen.add(mode)
        chosen, rejected = message_text(row["chosen"]), message_text(row["rejected"])
        clean = sources[row["id"]]["image"]
        assert chosen == sources[row["id"]]["answer"]
        assert pair_mode_of(row) == mode
        assert pair_mode_of({**row, "provenance": None}) == mode  # read from the row alone
        if mode == "text":
            assert rejected != chosen
            assert row["provenance"]["edits"]
            assert row["rejected_images"] is None
        else:
            distorted = row["rejected_images"][0]
            assert distorted.tobytes() == ImageOps.invert(clean.convert("RGB")).tobytes()
        if mode == "image":
            assert rejected == chosen
            assert row["provenance"]["edits"] == []
        if mode == "both":
            assert rejected != chosen
            assert row["provenance"]["edits"]
    assert seen == {"text", "image", "both"}


def test_single_mode_builds(demo: datasets.Dataset, tmp_path: Path) -> None:
    rows = demo.select(range(12))
    text = build(rows, tmp_path / "text", pair_mode="text")
    pairs = load_pairs(tmp_path / "text")
    assert "rejected_images" not in pairs.column_names  # nothing distorted: no column
    assert text.configuration()["rejected_images"] is False
    assert set(pairs.to_pandas()["provenance"].map(lambda p: p["pair_mode"])) == {"text"}
    hallucinator = _Batched()  # the batch path leaves image rows out of the call too
    assert not hallucinator.streams
    image = build(rows, tmp_path / "image", pair_mode="image", hallucinator=hallucinator)
    assert hallucinator.asked == []
    pairs = load_pairs(tmp_path / "image")
    assert pairs["chosen"] == pairs["rejected"]
    assert image.report.pair_modes == {"text": 0, "image": 12, "both": 0}
    # image rows without stored images: the trainer remakes them from the seed
    bare = build(rows, tmp_path / "bare", pair_mode="image", store_rejected_images=False)
    assert "rejected_images" not in load_pairs(tmp_path / "bare").column_names
    assert bare.report.pairs == 12


def test_mixed_batches_leave_image_rows_out_of_the_call(
    demo: datasets.Dataset, tmp_path: Path
) -> None:
    rows = demo.select(range(24))
    hallucinator = _Batched()
    build(rows, tmp_path / "out", hallucinator=hallucinator, pair_mode="mix", batch_size=5)
    pairs = load_pairs(tmp_path / "out")
    called = [r["id"] for r in pairs if r["provenance"]["pair_mode"] == "text"]
    assert 0 < len(called) < len(pairs)
    assert sorted(hallucinator.asked) == sorted(called)


def test_builds_without_pair_modes_are_unchanged(demo: datasets.Dataset, tmp_path: Path) -> None:
    rows = demo.select(range(12))
    default = build(rows, tmp_path / "default")
    configuration = default.configuration()
    assert "pairs" not in configuration
    assert "pair_mode" not in default.features()["provenance"]
    # naming the default mode changes nothing: the same configuration, the same bytes
    both = build(rows, tmp_path / "both", pair_mode="both")
    assert both.configuration() == configuration
    assert data_bytes(tmp_path / "both") == data_bytes(tmp_path / "default")
    plain = build(rows, distorter=None)
    assert build(rows, distorter=None, pair_mode="text").configuration() == plain.configuration()
    summary = summary_of(tmp_path / "default")
    assert summary["pair_modes"] == {"text": 0, "image": 0, "both": 12}
    assert summary["dropped"] == {"near_duplicate": 0, "repeated": 0}


def test_another_mode_or_mix_is_not_resumed(demo: datasets.Dataset, tmp_path: Path) -> None:
    rows = demo.select(range(8))
    build(rows, tmp_path / "out", pair_mode="mix", mix={"text": 1, "image": 1})
    for options in (
        {"pair_mode": "mix", "mix": {"text": 3, "image": 1}},
        {"pair_mode": "text"},
        {"pair_mode": "mix", "mix": {"text": 1, "image": 1}, "drop_duplicates": True},
        {},
    ):
        with pytest.raises(OutputFolderError, match=r"another configuration.*pairs"):
            build(rows, tmp_path / "out", **options)
    # the same settings in other words are the same build: 2:2 is 1:1
    again = build(rows, tmp_path / "out", pair_mode="mix", mix={"text": 2, "image": 2})
    assert again.report.already_complete


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"pair_mode": "image", "distorter": None}, "pair mode 'image' needs a distorter"),
        ({"pair_mode": "mix", "distorter": None}, "pair mode 'image' needs a distorter"),
        ({"pair_mode": "sideways"}, "pair_mode must be one of text, image, both, mix"),
        ({"mix": {"text": 1}}, "mix= goes with pair_mode='mix'"),
        ({"pair_mode": "mix", "mix": {"txt": 1}}, "unknown pair mode 'txt'"),
        ({"pair_mode": "mix", "mix": {"text": 0, "image": 0}}, "at least one weight"),
        ({"pair_mode": "mix", "mix": {"text": -1, "image": 2}}, "must be >= 0"),
    ],
)
def test_bad_pair_settings_are_refused(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build([{"id": "a", "image": b"", "question": "q", "answer": "a"}], **options)


# -- the trainer on each mode --------------------------------------------------------------------


@pytest.fixture(scope="module")
def mixed_rows(tmp_path_factory: pytest.TempPathFactory, demo: datasets.Dataset) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("mixed") / "out"
    build(demo.select(range(30)), out, pair_mode="mix", mix={"text": 1, "image": 1, "both": 1})
    by_mode: dict[str, list[dict[str, Any]]] = {"text": [], "image": [], "both": []}
    for row in load_pairs(out):
        by_mode[row["provenance"]["pair_mode"]].append(row)
    return {mode: rows[:2] for mode, rows in by_mode.items()}


_TRAINERS: dict[tuple[str, str | None], Any] = {}


def _trainer(mode: str, rows: list[dict[str, Any]], distorter: str | None = None) -> Any:
    """A trainer on a tiny random LLaVA, one per mode and distorter for the module (a trainer
    only collates and scores here, so it can be shared)."""
    pytest.importorskip("transformers")
    pytest.importorskip("peft")
    from povidgen.train import DPOConfig, DPOTrainer
    from povidgen.train.tiny import tiny_vlm

    if (mode, distorter) not in _TRAINERS:
        model, processor = tiny_vlm("llava")
        config = DPOConfig(
            mode=mode,  # type: ignore[arg-type]
            batch_size=2,
            lora_r=4,
            lora_alpha=8,
            distorter=distorter,
        )
        _TRAINERS[mode, distorter] = DPOTrainer(model, processor, rows, config)
    return _TRAINERS[mode, distorter]


@pytest.mark.parametrize(
    ("pair_mode", "train_mode"),
    [("text", "text"), ("both", "text"), ("image", "image"), ("both", "image"), ("both", "povid")],
)
def test_the_trainer_takes_each_mode(
    mixed_rows: dict[str, Any], pair_mode: str, train_mode: str
) -> None:
    import torch

    rows = mixed_rows[pair_mode]
    trainer = _trainer(train_mode, mixed_rows["both"])
    batch = trainer.collator(rows)
    loss, _ = trainer.compute_loss(batch)
    assert torch.isfinite(loss)
    if train_mode != "text":  # the distorted image is the row's own
        assert batch.noisy_vision is not None


def test_image_pairs_under_povid_train_only_the_image_half(mixed_rows: dict[str, Any]) -> None:
    """``rejected`` repeats ``chosen``: the text half's margin is zero (its gradient too),
    and the image half is POVID's noisy-image term."""
    rows = mixed_rows["image"]
    trainer = _trainer("povid", mixed_rows["both"])
    _, metrics = trainer.compute_loss(trainer.collator(rows))
    assert metrics["logps/chosen"].tolist() == pytest.approx(
        metrics["logps/rejected"].tolist(), abs=1e-4
    )


def test_the_collator_names_a_row_a_mode_cannot_use(mixed_rows: dict[str, Any]) -> None:
    from povidgen.train import TrainingDataError

    with pytest.raises(TrainingDataError, match=r"'rejected' equals 'chosen' \(an image-contrast"):
        _trainer("text", mixed_rows["both"]).collator(mixed_rows["image"])
    # text rows sit in a build with a rejected_images column, as null
    text_rows = mixed_rows["text"]
    with pytest.raises(TrainingDataError, match="a text-contrast pair, pair_mode 'text'"):
        _trainer("image", mixed_rows["both"]).collator(text_rows)
    # a distorter makes their rejected image, so a whole mix trains under povid
    every = [row for rows in mixed_rows.values() for row in rows]
    trainer = _trainer("povid", every, distorter="diffusion")
    batch = trainer.collator(every)
    assert batch.noisy_vision is not None
    loss, _ = trainer.compute_loss(batch)
    assert loss.isfinite()


# -- near-duplicates and repeated rows -----------------------------------------------------------


class _Sloppy(Hallucinator):
    """Rewrites an answer by id: only its case and spaces, not at all, or really."""

    name = "sloppy"

    async def ahallucinate(self, example: Example) -> Hallucination:
        if example.id.startswith("case"):
            return Hallucination(rejected="  " + example.answer.upper().replace(" ", "   "))
        if example.id.startswith("same"):
            return Hallucination(rejected=example.answer + " ")
        return Hallucination(rejected=example.answer + " Also a dog.")


def _duplicate_rows(images: list[Image.Image]) -> list[dict[str, Any]]:
    """Ten rows: two replies that change only case and spaces (``case-*``), one identical
    reply (``same-4``), and rows 6, 8 and 9 repeating rows 1, 1 and 3 under other ids (row 5
    differs from row 3 by its image only, row 7 from row 1 by one character)."""
    import io

    def encoded(image: Image.Image) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue()

    first, second = encoded(images[0]), encoded(images[1])
    rows = [
        {"id": "case-0", "image": first, "question": "What is it?", "answer": "A red cat."},
        {"id": "ok-1", "image": first, "question": "Describe.", "answer": "A red cat sits."},
        {"id": "case-2", "image": second, "question": "Describe.", "answer": "A cat on a mat."},
        {"id": "ok-3", "image": second, "question": "Count.", "answer": "Two cats."},
        {"id": "same-4", "image": second, "question": "Colour?", "answer": "Red."},
        {"id": "ok-5", "image": first, "question": "Count.", "answer": "Two cats."},
        {"id": "ok-6", "image": first, "question": "Describe.", "answer": "A red cat sits."},
        {"id": "ok-7", "image": first, "question": "Describe.", "answer": "A red cat sits!"},
        {"id": "ok-8", "image": first, "question": "Describe.", "answer": "A red cat sits."},
        {"id": "ok-9", "image": second, "question": "Count.", "answer": "Two cats."},
    ]
    return rows


def _dedupe(rows: list[dict[str, Any]], out: Path, **options: Any) -> PairBuilder:
    return build(rows, out, hallucinator=_Sloppy(), distorter=None, drop_duplicates=True, **options)


def test_near_duplicates_and_repeats_are_dropped_and_counted(
    demo: datasets.Dataset, tmp_path: Path
) -> None:
    rows = _duplicate_rows(demo["image"][:2])
    builder = _dedupe(rows, tmp_path / "out")
    pairs = load_pairs(tmp_path / "out")
    assert pairs["id"] == ["ok-1", "ok-3", "ok-5", "ok-7"]
    records = [json.loads(line) for line in (tmp_path / "out" / ERRORS).read_text().splitlines()]
    assert [(r["id"], r["stage"], r["error_type"]) for r in records] == [
        ("case-0", "pair", NEAR_DUPLICATE),
        ("case-2", "pair", NEAR_DUPLICATE),
        ("same-4", "pair", NEAR_DUPLICATE),
        ("ok-6", "input", REPEATED),
        ("ok-8", "input", REPEATED),
        ("ok-9", "input", REPEATED),
    ]
    assert "as row 1 (id 'ok-1')" in records[3]["reason"]
    assert "as row 3 (id 'ok-3')" in records[5]["reason"]
    summary = summary_of(tmp_path / "out")
    assert summary["dropped"] == {"near_duplicate": 3, "repeated": 3}
    assert (summary["rows"], summary["pairs"], summary["failed"]) == (10, 4, 0)
    assert summary["failures"] == {}
    assert builder.report.dropped == {"near_duplicate": 3, "repeated": 3}
    assert builder.report.failed == 0
    assert [e.id for e in builder.errors] == [r["id"] for r in records]
    # off, nothing is dropped: case changes make pairs, an identical reply fails as before
    kept = build(rows, tmp_path / "kept", hallucinator=_Sloppy(), distorter=None)
    assert len(load_pairs(tmp_path / "kept")) == 9
    assert [(e.id, e.stage) for e in kept.errors] == [("same-4", "pair")]
    assert "identical" in kept.errors[0].reason


def test_repeats_are_found_across_shares_and_after_a_resume(
    demo: datasets.Dataset, tmp_path: Path
) -> None:
    rows = _duplicate_rows(demo["image"][:2]) * 3
    rows = [{**row, "id": f"{row['id']}-{n // 10}"} for n, row in enumerate(rows)]
    _dedupe(rows, tmp_path / "one", shard_limits=ShardLimits(max_rows=4, group_rows=2))
    reference = data_bytes(tmp_path / "one")
    # the second and third copies repeat the first: near-duplicates are found once
    assert summary_of(tmp_path / "one")["dropped"] == {"near_duplicate": 3, "repeated": 23}
    assert load_pairs(tmp_path / "one")["id"] == ["ok-1-0", "ok-3-0", "ok-5-0", "ok-7-0"]
    shares = [tmp_path / f"share-{i}" for i in range(3)]
    for index, share in enumerate(shares):
        _dedupe(
            rows,
            share,
            num_shards=3,
            shard_index=index,
            shard_limits=ShardLimits(max_rows=4, group_rows=2),
        )
    merge_builds(tmp_path / "merged", shares)
    assert data_bytes(tmp_path / "merged") == reference
    assert summary_of(tmp_path / "merged")["dropped"] == summary_of(tmp_path / "one")["dropped"]
    # a resumed run drops the same rows
    calls = []

    def stop(count: int) -> None:
        calls.append(count)
        if len(calls) == 13:
            raise KeyboardInterrupt

    first = build(
        rows,
        hallucinator=_Sloppy(),
        distorter=None,
        drop_duplicates=True,
        shard_limits=ShardLimits(max_rows=4, group_rows=2),
    )
    with pytest.raises(KeyboardInterrupt):
        first.run(tmp_path / "resumed", progress=stop)
    again = _dedupe(rows, tmp_path / "resumed", shard_limits=ShardLimits(max_rows=4, group_rows=2))
    assert again.report.resumed_rows > 0
    assert again.report.dropped == {"near_duplicate": 3, "repeated": 23}
    assert data_bytes(tmp_path / "resumed") == reference


def test_near_duplicate_and_content_key_by_hand() -> None:
    assert near_duplicate("A red cat.", "  a RED\ncat. ")
    assert near_duplicate("A red cat.", "Ared cat.")  # whitespace is ignored, not collapsed
    assert not near_duplicate("A red cat.", "A red cat!")
    key = content_key({"bytes": b"\x89PNG1", "path": "a.png"}, "q", "a")
    assert key == content_key(b"\x89PNG1", "q", "a")  # bytes are bytes, however they come
    assert key == content_key([{"bytes": b"\x89PNG1", "path": "b.png"}], "q", "a")
    assert key != content_key(b"\x89PNG2", "q", "a")
    assert content_key("x/a.png", "q", "a") == content_key({"path": "x/a.png"}, "q", "a")
    assert content_key("x/a.png", "q", "a") != content_key("x/b.png", "q", "a")
    assert content_key(b"i", "q a", "b") != content_key(b"i", "q", "a b")  # no shifted split
    assert len(key) == 16


# -- the card ------------------------------------------------------------------------------------


def _table(text: str) -> dict[str, str]:
    cells = {}
    for line in text.splitlines():
        parts = [p.strip() for p in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(parts) == 2:
            cells[parts[0]] = parts[1]
    return cells


def test_the_card_shows_pair_modes_and_drops(demo: datasets.Dataset, tmp_path: Path) -> None:
    rows = demo.select(range(24)).to_list()
    rows.append({**rows[0], "id": "again"})  # a repeat of row 0
    build(
        rows,
        tmp_path / "out",
        pair_mode="mix",
        mix={"text": 1, "image": 1, "both": 1},
        drop_duplicates=True,
    )
    summary = summary_of(tmp_path / "out")
    publish(tmp_path / "out", "user/modes", dry_run=tmp_path / "dry")
    text = DatasetCard.load(tmp_path / "dry" / "README.md").text
    table = _table(text)
    modes = summary["pair_modes"]
    assert all(modes.values())  # 24 rows in thirds: each mode has rows
    assert table["Pair modes"] == ", ".join(f"{m} {modes[m]}" for m in ("text", "image", "both"))
    assert table["Rows dropped"] == "1 (near-duplicate 0, repeated 1)"
    assert table["Rows in"] == "25"
    assert table["Rows failed"] == "0"
    assert table["Image-contrast pairs"] == str(modes["image"] + modes["both"])
    assert table["Text-contrast pairs"] == str(modes["text"] + modes["both"])
    assert "`provenance.pair_mode` says which" in text
    # a build that did not look for duplicates says so
    build(demo.select(range(4)), tmp_path / "plain")
    publish(tmp_path / "plain", "user/plain", dry_run=tmp_path / "dry-plain")
    plain = _table(DatasetCard.load(tmp_path / "dry-plain" / "README.md").text)
    assert plain["Rows dropped"] == "none (duplicates were not dropped)"
    assert plain["Pair modes"] == "both 4"


# -- the command line ----------------------------------------------------------------------------


def test_cli_flags_build_a_mix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    argv = ["build", "--demo", "--demo-size", "12", "--out", str(out), "--distorter", "none"]
    code = main([*argv, "--pair-mode", "mix", "--mix", "1:0", "--drop-duplicates"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "rows dropped: 0" in printed
    assert "pair modes:   text 12, image 0, both 0" in printed
    summary = summary_of(out)
    assert summary["configuration"]["pairs"] == {
        "modes": {"text": 1.0, "image": 0.0, "both": 0.0},
        "drop_duplicates": True,
    }
    written = yaml.safe_load((out / "povidgen-config.yaml").read_text())
    assert (written["pair_mode"], written["mix"], written["drop_duplicates"]) == (
        "mix",
        "1:0",
        True,
    )
    # the written file builds the same thing again (nothing to do)
    assert main(["build", "--config", str(out / "povidgen-config.yaml")]) == 0
    assert "already holds this build" in capsys.readouterr().out


def test_a_config_file_takes_the_mix_as_a_mapping(tmp_path: Path) -> None:
    config = tmp_path / "build.yaml"
    out = tmp_path / "out"
    config.write_text(
        f"demo: true\ndemo_size: 6\nout: {out}\npair_mode: mix\nmix: {{text: 1, image: 2}}\n"
    )
    assert main(["build", "--config", str(config)]) == 0
    modes = summary_of(out)["configuration"]["pairs"]["modes"]
    assert modes == pytest.approx({"text": 1 / 3, "image": 2 / 3, "both": 0.0})


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--pair-mode", "sideways"], "argument --pair-mode: invalid choice: 'sideways'"),
        (["--pair-mode", "mix", "--mix", "1:x"], "mix weight 'x' (for image) is not a number"),
        (["--pair-mode", "mix", "--mix", "0:0"], "at least one weight must be > 0"),
        (["--pair-mode", "mix", "--mix", "1:2:3:4"], "expected TEXT:IMAGE or TEXT:IMAGE:BOTH"),
        (["--pair-mode", "mix", "--mix", "1:-1"], "must be a number >= 0"),
        (["--mix", "1:1"], "--mix goes with --pair-mode mix"),
        (["--pair-mode", "image", "--distorter", "none"], "it needs a distorter"),
        (["--pair-mode", "mix", "--distorter", "none"], "it needs a distorter"),
    ],
)
def test_bad_cli_values_are_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    out = tmp_path / "out"
    assert main(["build", "--demo", "--out", str(out), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("povidgen: error: ")
    assert message in err
    assert err.count("\n") == 1
    assert not out.exists()


def test_an_unquoted_yaml_ratio_is_explained(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "build.yaml"
    config.write_text(f"demo: true\nout: {tmp_path / 'out'}\npair_mode: mix\nmix: 3:1\n")
    assert main(["build", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "mix: 181 is a number; write the weights quoted ('3:1')" in err


def test_parse_mix() -> None:
    assert parse_mix("3:1") == {"text": 3.0, "image": 1.0}
    assert parse_mix(" 0.7 : 0.3 : 0 ") == {"text": 0.7, "image": 0.3, "both": 0.0}
    for bad, message in (
        ("3", "expected TEXT:IMAGE"),
        ("a:b", "'a' (for text) is not a number"),
        ("1:inf", "must be a number >= 0"),
        ("0:0:0", "at least one weight"),
        ("1:1:1:1", "expected TEXT:IMAGE"),
    ):
        with pytest.raises(ValueError, match=re.escape(message)):
            parse_mix(bad)


def test_exports_and_their_readers_keep_the_pair_mode(
    demo: datasets.Dataset, tmp_path: Path
) -> None:
    """TRL, LLaVA and VLFeedback exports of a mixed build, and each read back, keep
    ``provenance.pair_mode`` (``povidgen train --mode auto`` needs it)."""
    from povidgen.convert import export, read_pairs

    rows = demo.select(range(24))
    build(rows, tmp_path / "out", pair_mode="mix", mix={"text": 1, "image": 1, "both": 1})
    modes = {row["id"]: row["provenance"]["pair_mode"] for row in load_pairs(tmp_path / "out")}
    assert set(modes.values()) == {"text", "image", "both"}
    for fmt in ("trl", "llava", "vlfeedback"):
        export(tmp_path / "out", tmp_path / fmt, format=fmt)
        back = read_pairs(tmp_path / fmt)
        assert {r["id"]: r["provenance"]["pair_mode"] for r in back} == modes, fmt
