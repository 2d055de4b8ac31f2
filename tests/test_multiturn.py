"""Multi-turn conversations (``turns=`` / ``--turns``): one pair per chosen assistant turn,
the earlier turns kept as context in the prompt, in TRL's conversational format."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import datasets
import pytest
from PIL import Image

from povidgen import (
    Example,
    Exchange,
    Hallucination,
    Hallucinator,
    InvalidExampleError,
    OutputFolderError,
    PairBuilder,
    RuleHallucinator,
    derive_seed,
    load_pairs,
)
from povidgen.cli import main
from povidgen.convert import from_llava, to_llava
from povidgen.pairs.trl_format import message_text
from povidgen.sources.conversations import (
    TURN_KEY,
    ConversationRows,
    Turns,
    parse_conversation,
    select_turns,
    turn_id,
)

Q0, A0 = "What is on the table?", "Two red apples are on the table."
Q1, A1 = "What is to the left of them?", "A white cup is to the left of the apples."
Q2, A2 = "How many plates are there?", "There are three plates on the table."

THREE = [
    {"from": "human", "value": f"<image>\n{Q0}"},
    {"from": "gpt", "value": A0},
    {"from": "human", "value": Q1},
    {"from": "gpt", "value": A1},
    {"from": "human", "value": Q2},
    {"from": "gpt", "value": A2},
]
ONE = [
    {"from": "human", "value": "What colour is the cat?<image>"},
    {"from": "gpt", "value": "The cat is black and sits on a red mat."},
]


def image(colour: tuple[int, int, int]) -> Image.Image:
    return Image.new("RGB", (32, 24), colour)


def user(text: str, *, with_image: bool = False) -> dict[str, Any]:
    """A user message as ``datasets`` reads it back (every content struct has both keys)."""
    parts = [{"type": "image", "text": None}] if with_image else []
    return {"role": "user", "content": [*parts, {"type": "text", "text": text}]}


def assistant(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


# the prompt of each exchange of THREE, written out by hand
PROMPTS = {
    "r3": [user(Q0, with_image=True)],
    "r3#turn1": [user(Q0, with_image=True), assistant(A0), user(Q1)],
    "r3#turn2": [
        user(Q0, with_image=True),
        assistant(A0),
        user(Q1),
        assistant(A1),
        user(Q2),
    ],
}
CHOSEN = {"r3": A0, "r3#turn1": A1, "r3#turn2": A2}


def records() -> list[dict[str, Any]]:
    return [
        {"id": "r3", "image": image((200, 30, 30)), "conversations": THREE},
        {"id": "r1", "image": image((30, 30, 200)), "conversations": ONE},
    ]


def build(rows: Any, turns: Turns, **options: Any) -> tuple[datasets.Dataset, PairBuilder]:
    builder = PairBuilder.from_dataset(
        rows, id_column="id", hallucinator=RuleHallucinator(), turns=turns, **options
    )
    return builder.build(), builder


# -- splitting conversations ------------------------------------------------------------------


def test_a_conversation_is_read_as_its_exchanges() -> None:
    assert parse_conversation(THREE) == [
        Exchange(question=Q0, answer=A0),
        Exchange(question=Q1, answer=A1),
        Exchange(question=Q2, answer=A2),
    ]
    # JSON text (as LLaVA files are flattened), role/content keys, the placeholder anywhere
    alternative = [
        {"role": "user", "content": "Hi <image> there"},
        {"role": "assistant", "content": "Yo"},
    ]
    assert parse_conversation(json.dumps(alternative)) == [
        Exchange(question="Hi  there", answer="Yo")
    ]


@pytest.mark.parametrize(("turns", "expected"), [("first", [0]), ("last", [2]), ("all", [0, 1, 2])])
def test_which_exchanges_each_setting_picks(turns: Any, expected: list[int]) -> None:
    assert list(select_turns(3, turns)) == expected
    assert list(select_turns(1, turns)) == [0]


def test_ids_keep_the_record_id_for_the_first_exchange() -> None:
    assert turn_id("r3", 0) == "r3"
    assert turn_id("r3", 2) == "r3#turn2"


@pytest.mark.parametrize(
    ("turns", "made"),
    [
        ("first", [(0, 0, A0), (1, 0, ONE[1]["value"])]),
        ("last", [(0, 2, A2), (1, 0, ONE[1]["value"])]),
        ("all", [(0, 0, A0), (0, 1, A1), (0, 2, A2), (1, 0, ONE[1]["value"])]),
    ],
)
def test_expanded_rows_carry_their_exchange(turns: Any, made: list[tuple[int, int, str]]) -> None:
    expanded = ConversationRows(
        records(), turns=turns, prompt_column="prompt", answer_column="answer"
    )
    listed = list(expanded)
    assert len(expanded) == len(listed) == len(made)
    assert [(r[TURN_KEY].record, r[TURN_KEY].turn, r["answer"]) for r in listed] == made
    for row in listed:
        turn = row[TURN_KEY]
        assert list(turn.context) == parse_conversation(row["conversations"])[: turn.turn]
        assert row["prompt"] == parse_conversation(row["conversations"])[turn.turn].question
        assert turn.error is None


# -- building -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("turns", "ids"),
    [
        ("first", ["r3", "r1"]),
        ("last", ["r3#turn2", "r1"]),
        ("all", ["r3", "r3#turn1", "r3#turn2", "r1"]),
    ],
)
def test_a_three_exchange_record_gives_the_pairs_turns_asks_for(
    turns: Turns, ids: list[str]
) -> None:
    pairs, builder = build(records(), turns)
    assert builder.errors == []
    assert pairs["id"] == ids
    assert builder.configuration()["turns"] == turns
    for row in pairs:
        if row["id"] == "r1":
            assert row["prompt"] == [user("What colour is the cat?", with_image=True)]
            assert row["provenance"]["turn"] == 0
            continue
        assert row["prompt"] == PROMPTS[row["id"]]
        assert row["chosen"] == [assistant(CHOSEN[row["id"]])]
        rejected = message_text(row["rejected"])
        assert rejected != CHOSEN[row["id"]]
        provenance = row["provenance"]
        assert provenance["turn"] == len(PROMPTS[row["id"]]) // 2
        assert provenance["example_seed"] == derive_seed(0, row["id"])
        for edit in provenance["edits"]:  # the edits index the corrupted final answer
            assert rejected[edit["start"] : edit["end"]] == edit["injected"]


def test_a_pair_is_the_same_whichever_turns_made_it() -> None:
    every, _ = build(records(), "all")
    last, _ = build(records(), "last")
    first, _ = build(records(), "first")
    by_id = {row["id"]: row for row in every}
    for row in [*last, *first]:
        assert row == by_id[row["id"]]
    assert by_id["r3#turn1"]["images"][0].tobytes() == image((200, 30, 30)).tobytes()


def test_the_first_turn_is_what_a_single_turn_row_gives() -> None:
    """``turns="first"`` (the default) changes nothing for the pairs earlier versions made:
    same ids, prompt, answers and edits; only ``provenance.turn`` is new."""
    conversational, _ = build(records()[:1], "first")
    plain_rows = [
        {"id": "r3", "image": image((200, 30, 30)), "prompt": f"<image>\n{Q0}", "answer": A0}
    ]
    plain, plain_builder = build(plain_rows, "first")
    assert plain_builder.configuration()["turns"] == "first"
    assert plain[0]["provenance"]["turn"] is None
    converted = dict(conversational[0])
    converted["provenance"] = {**converted["provenance"], "turn": None}
    assert converted == plain[0]


class _Recorder(Hallucinator):
    """Records what it is asked to corrupt."""

    name = "recorder"

    def __init__(self) -> None:
        self.seen: dict[str, Example] = {}

    async def ahallucinate(self, example: Example) -> Hallucination:
        self.seen[example.id] = example
        return Hallucination(rejected=f"Not so: {example.answer}")


def test_the_hallucinator_gets_the_target_turn_and_its_context() -> None:
    recorder = _Recorder()
    builder = PairBuilder.from_dataset(
        records(), id_column="id", hallucinator=recorder, turns="all"
    )
    pairs = builder.build()
    assert len(pairs) == 4
    last = recorder.seen["r3#turn2"]
    assert (last.prompt, last.answer) == (Q2, A2)
    assert last.context == [Exchange(question=Q0, answer=A0), Exchange(question=Q1, answer=A1)]
    assert recorder.seen["r3"].context == []
    # only the final answer is corrupted: the context's answers are as they were
    row = pairs[2]
    assert message_text(row["rejected"]) == f"Not so: {A2}"
    assert [m["content"][-1]["text"] for m in row["prompt"] if m["role"] == "assistant"] == [A0, A1]


def test_ids_without_an_id_column_name_the_record(tmp_path: Path) -> None:
    rows = [{"image": r["image"], "conversations": r["conversations"]} for r in records()]
    builder = PairBuilder.from_dataset(rows, hallucinator=RuleHallucinator(), turns="all")
    assert builder.build()["id"] == ["row-0", "row-0#turn1", "row-0#turn2", "row-1"]


def test_a_dataset_with_conversations_needs_no_prompt_or_answer_column() -> None:
    dataset = datasets.Dataset.from_list(records())
    assert "prompt" not in dataset.column_names
    pairs, builder = build(dataset, "all")
    assert pairs["id"] == ["r3", "r3#turn1", "r3#turn2", "r1"]
    assert builder.report.pairs == 4


def test_turns_must_be_one_of_three() -> None:
    with pytest.raises(ValueError, match="turns must be one of first, last, all"):
        PairBuilder.from_dataset(records(), turns="middle")  # type: ignore[arg-type]


def test_a_resume_with_other_turns_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "pairs"
    PairBuilder.from_dataset(records(), id_column="id", turns="first").run(out)
    with pytest.raises(OutputFolderError, match='turns: "first" there, "all" now'):
        PairBuilder.from_dataset(records(), id_column="id", turns="all").run(out)


# -- bad records --------------------------------------------------------------------------------

BAD = [
    ([], "the conversation has no turns"),
    ([{"from": "human", "value": "<image>\nHi?"}], "has no assistant (gpt) turn"),
    (
        [{"from": "gpt", "value": "Hello."}, {"from": "human", "value": "<image>\nHi?"}],
        "conversations[0] is 'assistant' where a user (human) turn was expected",
    ),
    (
        [THREE[0], THREE[1], THREE[3], THREE[2]],
        "conversations[2] is 'assistant' where a user (human) turn was expected",
    ),
    ([THREE[0], {"from": "gpt", "value": "  "}], "conversations[1] (assistant) is empty"),
    (
        [{"from": "human", "value": "<image>"}, THREE[1]],
        "conversations[0] is empty besides <image>",
    ),
    ([*THREE, {"from": "human", "value": "And?"}], "conversations[6] is a user turn with no"),
    ([{"from": "system", "value": "Be brief."}, *THREE], "conversations[0] is from 'system'"),
    ([THREE[0], THREE[1], {"from": "human", "value": "<image> again?"}, THREE[3]], "2 <image>"),
    ([THREE[0], {"from": "gpt", "value": 3}], "conversations[1] has no text value (got int)"),
    ([THREE[0], "A cup."], "conversations[1] is not a {'from', 'value'} turn (got str)"),
    ("[not json", "conversations is not valid JSON"),
    (None, "conversations is not a list of turns (got NoneType)"),
]


@pytest.mark.parametrize(("conversation", "reason"), BAD, ids=[reason for _, reason in BAD])
def test_a_bad_conversation_is_a_clear_error(conversation: object, reason: str) -> None:
    with pytest.raises(InvalidExampleError) as raised:
        parse_conversation(conversation)
    assert reason in str(raised.value)


@pytest.mark.parametrize("turns", ["first", "last", "all"])
def test_bad_records_become_row_errors_beside_good_ones(turns: Turns) -> None:
    rows: list[dict[str, Any]] = [
        {"id": f"bad{i}", "image": image((i, i, i)), "conversations": conversation}
        for i, (conversation, _) in enumerate(BAD)
        if not isinstance(conversation, str | type(None))  # a list column needs lists
    ]
    rows.insert(3, records()[0])
    pairs, builder = build(rows, turns)
    assert (
        pairs["id"]
        == {"first": ["r3"], "last": ["r3#turn2"], "all": ["r3", "r3#turn1", "r3#turn2"]}[turns]
    )
    errors = {error.id: error for error in builder.errors}
    assert sorted(errors) == sorted(row["id"] for row in rows if row["id"] != "r3")
    for row in rows:
        if row["id"] == "r3":
            continue
        error = errors[row["id"]]
        assert error.stage == "input"
        assert error.error_type == "InvalidExampleError"
        index = int(row["id"].removeprefix("bad"))
        assert BAD[index][1] in error.reason
    assert builder.report.pairs == len(pairs)


# -- the command line -----------------------------------------------------------------------------


def llava_file(folder: Path) -> Path:
    """A LLaVA json with the two records, their images as files, and one bad record."""
    out = []
    for record in [*records(), {"id": "bad", "image": None, "conversations": BAD[1][0]}]:
        name = None
        if record["image"] is not None:
            name = f"{record['id']}.png"
            record["image"].save(folder / name)
        out.append({**record, "image": name})
    path = folder / "llava.json"
    path.write_text(json.dumps(out))
    return path


def test_build_turns_all_from_a_llava_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = llava_file(tmp_path)
    out = tmp_path / "pairs"
    assert main(["build", "--dataset", str(source), "--out", str(out), "--turns", "all"]) == 0
    printed = capsys.readouterr().out
    assert "pairs built:  4" in printed
    pairs = load_pairs(out)
    assert pairs["id"] == ["r3", "r3#turn1", "r3#turn2", "r1"]
    assert pairs[2]["prompt"] == PROMPTS["r3#turn2"]
    assert [p["turn"] for p in pairs["provenance"]] == [0, 1, 2, 0]
    errors = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    assert [(e["id"], e["stage"]) for e in errors] == [("bad", "input")]
    assert "no assistant (gpt) turn" in errors[0]["reason"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["configuration"]["turns"] == "all"
    assert (summary["pairs"], summary["failed"]) == (4, 1)

    # the default is the first exchange; another --turns in the same folder is refused
    code = main(["build", "--dataset", str(source), "--out", str(out)])
    assert code == 2
    assert 'turns: "all" there, "first" now' in capsys.readouterr().err
    first = tmp_path / "first"
    assert main(["build", "--dataset", str(source), "--out", str(first)]) == 0
    assert load_pairs(first)["id"] == ["r3", "r1"]


def test_turns_is_checked_on_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["build", "--demo", "--out", "x", "--turns", "second"]) == 2
    assert "--turns: invalid choice: 'second'" in capsys.readouterr().err


# -- converting and training --------------------------------------------------------------------


def test_llava_export_of_multi_turn_pairs_round_trips(tmp_path: Path) -> None:
    pairs, _ = build(records(), "all")
    json_path = tmp_path / "pairs.json"
    assert to_llava(pairs, json_path, tmp_path / "images") == 4
    exported = {r["id"]: r for r in json.loads(json_path.read_text())}
    # the record's conversation up to the target exchange, the placeholder in front
    record = exported["r3#turn1"]
    assert record["conversations"] == [
        {"from": "human", "value": f"<image>\n{Q0}"},
        THREE[1],
        THREE[2],
        THREE[3],
    ]
    assert record["rejected_conversations"][:3] == record["conversations"][:3]
    assert record["rejected_conversations"][3]["value"] == message_text(pairs[1]["rejected"])
    assert record["provenance"]["turn"] == 1
    back = from_llava(json_path, tmp_path / "images")
    for before, after in zip(pairs, back, strict=True):
        assert after["id"] == before["id"]
        for column in ("prompt", "chosen", "rejected", "provenance"):
            assert after[column] == before[column], column
        assert after["images"][0].tobytes() == before["images"][0].tobytes()


def test_the_trainer_scores_only_the_final_answer_of_a_multi_turn_row() -> None:
    pytest.importorskip("transformers")
    from povidgen.train.collate import PreferenceCollator
    from povidgen.train.families import family_of
    from povidgen.train.tiny import tiny_vlm

    pairs, _ = build(records(), "all")
    row = pairs[2]  # r3#turn2
    model, processor = tiny_vlm("llava")
    batch = PreferenceCollator(processor, family_of(model))([row])
    decode = processor.tokenizer.decode
    # the response is the final answer and the template's end of turn, nothing before it
    assert decode(batch.chosen_ids[0]) == f" {A2}</s>"
    assert decode(batch.rejected_ids[0]) == f" {message_text(row['rejected'])}</s>"
    prompt = decode(batch.prompt_ids[0])
    assert prompt.endswith(
        f"{Q0} ASSISTANT: {A0}</s>USER: {Q1} ASSISTANT: {A1}</s>USER: {Q2} ASSISTANT:"
    )
    assert prompt.count("<image>") > 1  # the image's features go with the first question


def test_the_ray_workers_get_the_context_too(tmp_path: Path) -> None:
    """The driver sends a conversation's exchange to a Ray actor with its context: the row an
    actor makes is the local build's (the path of ``povidgen build --ray``, without a
    cluster: the driver's feeder and an actor called in this process)."""
    ray = pytest.importorskip("ray")
    import pickle

    import pyarrow as pa

    from povidgen.pairs.ray_engine import _Feeder, _RowWorker, _worker_spec
    from povidgen.pairs.shards import iter_shard_rows

    builder = PairBuilder.from_dataset(records(), id_column="id", turns="all")
    builder.run(tmp_path / "pairs")  # also sets what every row's provenance repeats
    expected = list(iter_shard_rows(sorted((tmp_path / "pairs" / "data").glob("*.parquet"))))
    feeder = _Feeder(builder, 0, None, Exception)
    payload = [feeder._pickled(i, row, str(row_id)) for i, row, row_id in builder._rows_from(0)]
    actor = _RowWorker(_worker_spec(builder, ray))
    try:
        table = actor(pa.table({"payload": pa.array(payload, type=pa.large_binary())}))
    finally:  # what the actor's __del__ does in Ray, closing its loop too
        assert actor.builder._loop is not None
        assert actor.builder._pool is not None
        actor.builder._pool.shutdown()
        actor.builder._loop.close()
        actor.builder._loop = actor.builder._pool = None
    made = [pickle.loads(b).outcome.row for b in table.column("outcome").to_pylist()]
    assert [row["id"] for row in made] == ["r3", "r3#turn1", "r3#turn2", "r1"]
    for row, wanted in zip(made, expected, strict=True):
        for column in ("id", "images", "prompt", "chosen", "rejected"):
            assert row[column] == wanted[column], column
        assert row["provenance"]["turn"] == wanted["provenance"]["turn"]


def test_multi_turn_pairs_score_as_trl_scores_them(tmp_path: Path) -> None:
    """Step-0 log-probs of povidgen's trainer equal TRL's ``DPOTrainer`` on the rows a
    ``turns="all"`` build writes (Qwen2-VL: 3-D mRoPE positions over the longer prompt)."""
    pytest.importorskip("transformers")
    pytest.importorskip("peft")
    pytest.importorskip("trl")
    import copy

    import torch

    from povidgen.train import DPOConfig, DPOTrainer
    from povidgen.train.tiny import tiny_vlm
    from tests.train.test_trl_parity import TOL, trl_logps

    pairs, _ = build(records(), "all")
    model, processor = tiny_vlm("qwen2_vl")
    trl_chosen, trl_rejected, _ = trl_logps(
        copy.deepcopy(model), processor, pairs, str(tmp_path), None
    )
    config = DPOConfig(mode="text", batch_size=len(pairs), lora_r=4, lora_alpha=8)
    trainer = DPOTrainer(model, processor, pairs, config)
    batch = trainer.collator([pairs[i] for i in range(len(pairs))])
    with torch.no_grad():
        scores = trainer.scorer.score(trainer.model, batch)
    torch.testing.assert_close(scores.chosen, trl_chosen, **TOL)
    torch.testing.assert_close(scores.rejected, trl_rejected, **TOL)
