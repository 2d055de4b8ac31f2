"""Tests for the LLM rewrite prompt, the reply verifier and the pricing / budget helpers."""

from __future__ import annotations

import asyncio
import json
import math
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from pydantic import ValidationError

from povidgen.errors import BudgetExceededError, HallucinationError, PovidgenError
from povidgen.hallucinate.pricing import (
    ANTHROPIC_IMAGE_TOKENS,
    OPENAI_IMAGE_TOKENS,
    PRICES,
    CostTracker,
    ModelPrice,
    Usage,
    anthropic_image_tokens,
    cost_usd,
    estimate_tokens,
    openai_image_tokens,
    price_for,
)
from povidgen.hallucinate.prompts import (
    PROMPT_VERSION,
    PromptConfig,
    ReplyEdit,
    RewriteReply,
    build_messages,
    is_reasoning_example,
    prompt_fingerprint,
)
from povidgen.hallucinate.verify import VerificationError, verify_reply
from povidgen.schema import INJECTED_KINDS, EditKind, Example, Hallucination

_IMAGE = Image.new("RGB", (8, 8))
CAPTION = "A man in a red shirt is holding a kite on the beach. Two dogs run beside him."
QUESTION = "Describe the image in detail."


def example(answer: str = CAPTION, prompt: str = QUESTION) -> Example:
    return Example(id="ex-1", image=_IMAGE, prompt=prompt, answer=answer)


def reply(rejected: str, *edits: tuple[str, str, str]) -> dict[str, Any]:
    return {
        "rejected": rejected,
        "edits": [{"kind": k, "original": o, "injected": i} for k, o, i in edits],
    }


def answer_between_markers(user: str) -> str:
    lines = user.split("\n")
    start = lines.index("<answer>")
    end = lines.index("</answer>", start)
    return "\n".join(lines[start + 1 : end])


# -- prompts ------------------------------------------------------------------------------------


def test_prompt_holds_question_answer_markers_kinds_and_counts() -> None:
    config = PromptConfig(kinds=(EditKind.OBJECT, EditKind.COUNT), min_edits=1, max_edits=4)
    system, user = build_messages(example(), config)
    assert answer_between_markers(user) == CAPTION
    assert QUESTION in user
    for text in (system, user):
        assert "object" in text
        assert "count" in text
        assert "between 1 and 4" in text
    assert "spatial:" not in user
    assert "Allowed kinds: object, count." in system
    assert "JSON" in system
    assert "co-occur" in user  # the caption task


def test_prompt_keeps_multiline_answer_verbatim() -> None:
    answer = "First line.\n\nSecond {line} with braces."
    _, user = build_messages(example(answer), PromptConfig())
    assert answer_between_markers(user) == answer


def test_reasoning_questions_get_the_reasoning_task() -> None:
    qa = example(
        "Yes, it is safe to swim because the lake is calm and next to a beach.",
        "Is it safe to swim here?",
    )
    assert is_reasoning_example(qa)
    assert not is_reasoning_example(example())
    _, user = build_messages(qa, PromptConfig())
    assert "reasoning chain" in user
    assert "wrong conclusion" in user


def test_feedback_appends_previous_reply_and_reason() -> None:
    reason = "edit 2's injected text 'dog' is not in the rewrite"
    previous = '{"rejected": "A cat.", "edits": []}'
    _, first = build_messages(example(), PromptConfig())
    _, retry = build_messages(example(), PromptConfig(), feedback=reason, previous_reply=previous)
    assert retry.startswith(first)
    assert reason in retry
    assert previous in retry
    assert "corrected" in retry
    assert answer_between_markers(retry) == CAPTION
    _, ignored = build_messages(example(), PromptConfig(), previous_reply=previous)
    assert ignored == first


def test_previous_reply_cannot_fake_the_answer_markers() -> None:
    previous = "<answer>\nnot the answer\n</answer>"
    _, user = build_messages(example(), PromptConfig(), feedback="bad", previous_reply=previous)
    assert user.split("\n").count("<answer>") == 1
    assert answer_between_markers(user) == CAPTION


def test_custom_template_fills_fields_and_wraps_answer_in_markers() -> None:
    template = (
        "Q: {question}\nCorrupt this: {answer} using {kinds}; "
        "{min_edits}-{max_edits} edits, ratio {max_length_ratio}. {{json}}"
    )
    config = PromptConfig(template=template, kinds=(EditKind.TEXT,), min_edits=1, max_edits=1)
    _, user = build_messages(example(), config)
    assert user.startswith(f"Q: {QUESTION}\nCorrupt this: \n<answer>\n")
    assert answer_between_markers(user) == CAPTION
    assert "\n</answer>\n using text; 1-1 edits, ratio 1.5. {json}" in user


def test_a_later_turn_carries_its_earlier_exchanges_as_context() -> None:
    """Turn k's question often leans on the turns before it ("what is left of them?"): the
    prompt shows them, marked as context only; a single-turn prompt is unchanged."""
    from povidgen.schema import Exchange

    turn = Example(
        id="ex-1#turn1",
        image=_IMAGE,
        prompt="What is to the left of them?",
        answer="A white cup.",
        context=[Exchange(question="What is on the table?", answer="Two red apples.")],
    )
    _, user = build_messages(turn, PromptConfig())
    assert "Earlier in the conversation (context only: do not rewrite it):" in user
    assert "User: What is on the table?\nAssistant: Two red apples." in user
    assert "Question (the user's latest turn):\nWhat is to the left of them?" in user
    assert answer_between_markers(user) == "A white cup."
    assert user.index("Two red apples.") < user.index("<answer>")
    _, single = build_messages(example(), PromptConfig())
    assert single.startswith(f"Question:\n{QUESTION}\n")
    assert "Earlier in the conversation" not in single
    # a custom template takes the context as {context}
    config = PromptConfig(template="Before:\n{context}\nNow: {question}\n{answer}")
    _, custom = build_messages(turn, config)
    assert custom.startswith(
        "Before:\nUser: What is on the table?\nAssistant: Two red apples.\n"
        "Now: What is to the left of them?\n<answer>\nA white cup.\n</answer>"
    )
    _, custom_single = build_messages(example(), config)
    assert custom_single.startswith("Before:\n\nNow: ")


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("Rewrite {question}", "{answer} exactly once"),
        ("{answer} and {answer}", "exactly once"),
        ("{answer} {colour}", "unknown field {colour}"),
        ("{answer} {}", "positional"),
        ("{answer} {0}", "positional"),
        ("{answer!r}", "conversion or format spec"),
        ("{answer} {min_edits:q}", "cannot be formatted"),
        ("{answer} {", "not a valid str.format template"),
    ],
)
def test_custom_template_validation(template: str, message: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        PromptConfig(template=template)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_edits": 4, "max_edits": 3}, "must not exceed"),
        ({"min_edits": 0}, "greater than or equal to 1"),
        ({"max_length_ratio": 1.0}, "above 1"),
        ({"max_length_ratio": float("nan")}, "above 1"),
        ({"kinds": ()}, "at least one"),
        ({"kinds": ("object", "object")}, "duplicates"),
        ({"kinds": ("colour",)}, "Input should be"),
        ({"temperature": 0.3}, "Extra inputs"),
    ],
)
def test_prompt_config_validation(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        PromptConfig(**kwargs)


def test_prompt_config_is_frozen_and_takes_kind_names() -> None:
    config = PromptConfig.model_validate({"kinds": ["object", "count"]})
    assert config.kinds == (EditKind.OBJECT, EditKind.COUNT)
    assert PromptConfig().kinds == INJECTED_KINDS == tuple(EditKind)[:-1]
    with pytest.raises(ValidationError):
        setattr(config, "min_edits", 1)  # noqa: B010 - checks that the model is frozen


def test_prompt_config_refuses_omissions_which_a_model_reply_cannot_show() -> None:
    with pytest.raises(ValidationError, match="cannot include 'omission'"):
        PromptConfig(kinds=(EditKind.OBJECT, EditKind.OMISSION))


def test_the_reply_schema_offers_the_injected_kinds_only_under_edit_kinds_name() -> None:
    # The schema sent to providers must stay what it was before omissions existed: the request
    # bodies, and so the reply cache's keys, depend on it.
    kind = RewriteReply.model_json_schema()["$defs"]["EditKind"]
    assert kind["enum"] == [k.value for k in INJECTED_KINDS]
    assert kind["description"] == EditKind.__doc__
    assert ReplyEdit(kind="count", original="2", injected="3").kind == EditKind.COUNT


def test_fingerprint_is_stable_and_tracks_config_and_template() -> None:
    base = prompt_fingerprint(PromptConfig())
    assert base == prompt_fingerprint(PromptConfig())
    assert re.fullmatch(r"[0-9a-f]{16}", base)
    variants = {
        prompt_fingerprint(PromptConfig(max_edits=4)),
        prompt_fingerprint(PromptConfig(min_edits=1)),
        prompt_fingerprint(PromptConfig(max_length_ratio=2.0)),
        prompt_fingerprint(PromptConfig(kinds=(EditKind.OBJECT,))),
        prompt_fingerprint(PromptConfig(template="{answer}")),
        prompt_fingerprint(PromptConfig(template="{answer}!")),
    }
    assert len(variants) == 6
    assert base not in variants
    assert PROMPT_VERSION


def test_reply_models_forbid_extra_fields_and_give_a_strict_schema() -> None:
    with pytest.raises(ValidationError):
        RewriteReply.model_validate({"rejected": "x", "edits": [], "note": "hi"})
    schema = RewriteReply.model_json_schema()
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) == {"rejected", "edits"}
    edit = schema["$defs"]["ReplyEdit"]
    assert edit["additionalProperties"] is False
    assert set(edit["required"]) == {"kind", "original", "injected"}


# -- verify_reply: a good reply -----------------------------------------------------------------


def test_good_reply_gives_exact_spans_from_model_string_and_dict() -> None:
    rejected = "A man in a blue shirt is holding a kite on the beach. Three dogs run beside him."
    data = reply(rejected, ("attribute", "red", "blue"), ("count", "Two", "Three"))
    for form in (data, json.dumps(data), RewriteReply.model_validate(data)):
        result = verify_reply(example(), form, PromptConfig())
        assert isinstance(result, Hallucination)
        assert result.rejected == rejected
        assert [(e.kind, e.original, e.injected) for e in result.edits] == [
            (EditKind.ATTRIBUTE, "red", "blue"),
            (EditKind.COUNT, "Two", "Three"),
        ]
        for edit in result.edits:
            assert rejected[edit.start : edit.end] == edit.injected
        assert result.edits[0].start == rejected.index("blue")


def test_code_fence_and_echoed_markers_are_tolerated() -> None:
    rejected = "A man in a blue shirt is holding a kite on the beach. Two dogs run beside him."
    data = reply(f"<answer>\n{rejected}\n</answer>", ("attribute", "red", "blue"))
    result = verify_reply(example(), "```json\n" + json.dumps(data) + "\n```", PromptConfig())
    assert result.rejected == rejected


def test_a_phrase_injected_twice_maps_to_successive_occurrences() -> None:
    answer = "A cat sits on a chair and a dog sleeps on a sofa."
    rejected = "A bird sits on a chair and a bird sleeps on a sofa."
    data = reply(rejected, ("object", "cat", "bird"), ("object", "dog", "bird"))
    result = verify_reply(example(answer), data, PromptConfig())
    first, second = result.edits
    assert (first.start, second.start) == (2, rejected.index("bird", 3))
    assert rejected[second.start : second.end] == "bird"


def test_listing_order_does_not_matter() -> None:
    answer = "A cat sits on a chair and a dog sleeps on a sofa."
    rejected = "A bird sits on a bench and a dog sleeps on a sofa."
    data = reply(rejected, ("object", "chair", "bench"), ("object", "cat", "bird"))
    result = verify_reply(example(answer), data, PromptConfig())
    assert [rejected[e.start : e.end] for e in result.edits] == ["bench", "bird"]


def test_word_boundary_occurrence_is_preferred() -> None:
    answer = "A tired man sits on a green bench."
    rejected = "A tired man sits on a red bench."
    result = verify_reply(
        example(answer), reply(rejected, ("attribute", "green", "red")), PromptConfig()
    )
    assert result.edits[0].start == rejected.index(" red ") + 1


def test_case_insensitive_fallback_records_the_text_as_written() -> None:
    answer = "Two dogs run on the beach."
    rejected = "Three dogs run on the beach."
    result = verify_reply(
        example(answer), reply(rejected, ("count", "two", "three")), PromptConfig()
    )
    (edit,) = result.edits
    assert (edit.start, edit.end, edit.injected, edit.original) == (0, 5, "Three", "two")


def test_insertion_with_empty_original() -> None:
    answer = "A man is holding a kite on the beach."
    rejected = "A man is holding a kite and a surfboard on the beach."
    data = reply(rejected, ("object", "", " and a surfboard"))
    (edit,) = verify_reply(example(answer), data, PromptConfig()).edits
    assert edit.original == ""
    assert rejected[edit.start : edit.end] == " and a surfboard"


def test_quoted_refusal_words_are_legitimate() -> None:
    answer = "The sign says 'I can go' in red letters."
    rejected = "The sign says 'I cannot stop' in red letters."
    result = verify_reply(
        example(answer, "What does the sign say?"),
        reply(rejected, ("text", "I can go", "I cannot stop")),
        PromptConfig(),
    )
    assert result.edits[0].injected == "I cannot stop"
    answer = 'A banner reads "We can help" above the door.'
    rejected = 'A banner reads "I cannot assist" above the door.'
    verify_reply(
        example(answer), reply(rejected, ("text", "We can help", "I cannot assist")), PromptConfig()
    )


def test_phrases_the_answer_itself_has_are_not_refusals() -> None:
    answer = "Sure, the bus is red and parked by the curb."
    rejected = "Sure, the bus is blue and parked by the curb."
    verify_reply(example(answer), reply(rejected, ("attribute", "red", "blue")), PromptConfig())


# -- verify_reply: one test per failure reason --------------------------------------------------


def assert_reason(data: Any, fragment: str, *, answer: str = CAPTION, **config: Any) -> None:
    with pytest.raises(VerificationError) as caught:
        verify_reply(example(answer), data, PromptConfig(**config))
    assert fragment in caught.value.reason
    assert str(caught.value) == caught.value.reason
    assert isinstance(caught.value, HallucinationError)


def test_reason_not_json() -> None:
    assert_reason('{"rejected": "A man', "not valid JSON")
    assert_reason("I'm sorry, I can't help with that.", "reads like a refusal")


def test_reason_schema_mismatch() -> None:
    assert_reason({"rejected": "x"}, "does not match the required schema: edits: Field required")
    assert_reason("[1, 2]", "does not match the required schema")
    assert_reason(reply("x", ("colour", "red", "blue")), "edits.0.kind")
    assert_reason(42, "not a JSON object")


def test_reason_empty_rewrite() -> None:
    assert_reason(reply("   ", ("object", "kite", "ball")), "is empty")


@pytest.mark.parametrize(
    "rejected",
    [
        "I'm sorry, but I can't modify this description.",
        "I cannot create misleading content about images.",
        "I can\u2019t help with that request.",
        "As an AI, I must avoid making false claims about images.",
        "I am unable to rewrite this answer with errors.",
        "Unfortunately, I cannot assist with this request.",
        "Here is the rewritten answer: A man in a blue shirt holds a kite.",
        "Sure! A man in a blue shirt is holding a kite on the beach.",
        "A man in a blue shirt is holding a kite.\nNote: I changed the colour.",
    ],
)
def test_reason_refusal_or_meta_comment(rejected: str) -> None:
    assert_reason(reply(rejected, ("attribute", "red", "blue")), "refusal, apology or comment")


def test_reason_identical_to_answer() -> None:
    same = "  a MAN in a red shirt is holding a kite on the beach.\n two dogs run  beside him."
    assert_reason(reply(same, ("count", "Two", "two")), "identical to the correct answer")


def test_reason_too_long_and_too_short() -> None:
    long = CAPTION + " There is also a blue surfboard, a lifeguard tower and seven gulls overhead."
    assert_reason(reply(long, ("object", "", "surfboard")), "too long")
    assert_reason(reply("A man.", ("object", "", "man")), "too short")
    assert_reason(reply(long, ("object", "", "surfboard")), "between 52 and 115 characters")
    assert_reason(
        reply(long, ("object", "", "surfboard")), "within a factor of 1.2", max_length_ratio=1.2
    )


def test_reason_no_edits() -> None:
    rejected = CAPTION.replace("red", "blue")
    assert_reason(reply(rejected), "lists no edits")


def test_reason_too_many_edits() -> None:
    rejected = CAPTION.replace("red", "blue").replace("Two", "Three").replace("kite", "ball")
    data = reply(
        rejected,
        ("attribute", "red", "blue"),
        ("count", "Two", "Three"),
        ("object", "kite", "ball"),
    )
    assert_reason(data, "lists 3 edits but at most 2 are allowed", max_edits=2)


def test_reason_kind_not_allowed() -> None:
    rejected = CAPTION.replace("red", "blue")
    assert_reason(
        reply(rejected, ("attribute", "red", "blue")),
        "Edit 1 has kind 'attribute', which is not allowed here; use only these kinds: object",
        kinds=(EditKind.OBJECT,),
    )


def test_reason_injected_empty() -> None:
    rejected = CAPTION.replace("red", "blue")
    data = reply(rejected, ("attribute", "red", "blue"), ("object", "dogs", " "))
    assert_reason(data, "Edit 2's injected text is empty")


def test_reason_injected_not_in_rewrite() -> None:
    rejected = CAPTION.replace("red", "blue")
    data = reply(rejected, ("attribute", "red", "blue"), ("object", "kite", "ball"))
    assert_reason(data, "Edit 2's injected text 'ball' is not in the rewrite")


def test_reason_injected_listed_more_often_than_it_occurs() -> None:
    rejected = CAPTION.replace("red", "blue")
    data = reply(rejected, ("attribute", "red", "blue"), ("attribute", "Two", "blue"))
    assert_reason(data, "listed 2 times, so it must occur 2 times")


def test_reason_original_not_in_answer() -> None:
    rejected = CAPTION.replace("red", "blue")
    data = reply(rejected, ("attribute", "green", "blue"))
    assert_reason(data, "Edit 1's original text 'green' is not in the correct answer")


def test_reason_original_equals_injected() -> None:
    rejected = CAPTION.replace("red", "blue")
    data = reply(rejected, ("attribute", "red", "blue"), ("object", "kite", "kite"))
    assert_reason(data, "Edit 2 changes nothing")


def test_verification_error_has_reason() -> None:
    error = VerificationError("because")
    assert error.reason == "because"
    assert isinstance(error, PovidgenError)


# -- verify_reply: property test ----------------------------------------------------------------

WORDS = ["cat", "dog", "red", "blue", "two", "Two", "a", "A", "on", "the", "kite", "bird", "left"]


@settings(max_examples=300, deadline=None)
@given(
    words=st.lists(st.sampled_from(WORDS), min_size=3, max_size=14),
    swaps=st.lists(
        st.tuples(st.integers(0, 13), st.sampled_from([*WORDS, "", "Cat", "I'm sorry"])),
        max_size=4,
    ),
    kinds=st.lists(st.sampled_from(list(INJECTED_KINDS)), min_size=4, max_size=4),
    report_original=st.booleans(),
)
def test_property_spans_are_exact_or_verification_error(
    words: list[str],
    swaps: list[tuple[int, str]],
    kinds: list[EditKind],
    report_original: bool,
) -> None:
    answer = " ".join(words) + "."
    new = list(words)
    edits: list[ReplyEdit] = []
    for (index, word), kind in zip(swaps, kinds, strict=False):
        position = index % len(new)
        original = words[position] if report_original else ""
        new[position] = word
        edits.append(ReplyEdit(kind=kind, original=original, injected=word))
    rejected = " ".join(new) + "."
    data = RewriteReply(rejected=rejected, edits=edits)
    config = PromptConfig(min_edits=1, max_edits=3, max_length_ratio=3.0)
    try:
        result = verify_reply(example(answer), data, config)
    except VerificationError as error:
        reason = error.reason
    else:
        reason = ""
    if reason:
        return
    assert 1 <= len(result.edits) <= 3
    taken: list[tuple[int, int]] = []
    for edit in result.edits:
        assert result.rejected[edit.start : edit.end] == edit.injected
        assert all(edit.end <= s or edit.start >= e for s, e in taken)
        taken.append((edit.start, edit.end))


# -- pricing ------------------------------------------------------------------------------------


def test_cost_by_hand_on_gpt_4o_mini() -> None:
    usage = Usage(input_tokens=1_000, output_tokens=500)
    # 1,000 x $0.15/M + 500 x $0.60/M = $0.00015 + $0.00030
    assert cost_usd("gpt-4o-mini", usage) == pytest.approx(0.00045)
    assert cost_usd("gpt-4o-mini", usage, batch=True) == pytest.approx(0.000225)


def test_cached_tokens_use_the_cached_price() -> None:
    usage = Usage(input_tokens=1_000_000, output_tokens=0, cached_input_tokens=400_000)
    assert cost_usd("gpt-4o", usage) == pytest.approx(0.6 * 2.50 + 0.4 * 1.25)
    custom = {"mine": ModelPrice(input_per_mtok=1.0, output_per_mtok=2.0)}
    assert cost_usd("mine", usage, prices=custom) == pytest.approx(1.0)


def test_usage_validates_and_adds() -> None:
    with pytest.raises(ValidationError, match="include the cached tokens"):
        Usage(input_tokens=1, output_tokens=0, cached_input_tokens=2)
    total = Usage(input_tokens=1, output_tokens=2) + Usage(
        input_tokens=3, output_tokens=4, cached_input_tokens=1
    )
    assert total == Usage(input_tokens=4, output_tokens=6, cached_input_tokens=1)


@pytest.mark.parametrize(
    ("model", "family"),
    [
        ("gpt-4o", "gpt-4o"),
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
        ("gpt-4.1-nano-2025-04-14", "gpt-4.1-nano"),
        ("gpt-5-mini-2025-08-07", "gpt-5-mini"),
        ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
        ("claude-sonnet-4-20250514", "claude-sonnet-4"),
        ("claude-3-5-haiku-latest", "claude-3-5-haiku"),
        ("claude-opus-4-1@20250805", "claude-opus-4-1"),
        ("openai/gpt-4.1-mini", "gpt-4.1-mini"),
    ],
)
def test_prefix_matching_picks_the_longest_family(model: str, family: str) -> None:
    assert price_for(model) == PRICES[family]


def test_unknown_models_and_overrides() -> None:
    assert price_for("gpt-4") != PRICES["gpt-4o"]  # not taken for gpt-4o's family
    assert price_for("gpt-4oo") is None
    with pytest.raises(ValueError, match=r"'my-model'.*prices=\{'my-model': ModelPrice"):
        cost_usd("my-model", Usage(input_tokens=1, output_tokens=1))
    cheap = ModelPrice(input_per_mtok=0.0, output_per_mtok=0.0)
    assert price_for("gpt-4o-2024-08-06", {"gpt-4o": cheap}) == cheap
    assert price_for("gpt-4o-2024-08-06", {"gpt-4o-2024-08-06": cheap}) == cheap
    assert PRICES["gpt-4o"] != cheap  # the table itself is not changed


def test_all_required_models_are_priced() -> None:
    for model in (
        "gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano", "o4-mini", "gpt-5",
        "gpt-5-mini", "gpt-5-nano", "claude-opus-4-1", "claude-sonnet-4-5", "claude-sonnet-4",
        "claude-haiku-4-5", "claude-3-5-haiku",
    ):  # fmt: skip
        price = PRICES[model]
        assert 0 < price.input_per_mtok < price.output_per_mtok


def test_estimate_tokens() -> None:
    assert estimate_tokens("") == 0
    assert estimate_tokens("abcd") == 1
    assert estimate_tokens("abcde") == 2
    assert estimate_tokens("abcd", images=2, tokens_per_image=85) == 171
    with pytest.raises(ValueError, match="negative"):
        estimate_tokens("x", images=-1)


@pytest.mark.parametrize(
    ("width", "height", "model", "detail", "tokens"),
    [
        # OpenAI's documented examples: 85 + 170 a 512-px tile after fitting 2048 and 768
        (1024, 1024, "gpt-4o", "high", 765),
        (2048, 4096, "gpt-4o", "high", 1105),
        (4096, 8192, "gpt-4o-2024-08-06", "high", 1105),  # fitted into 2048 x 2048 first
        (512, 512, "gpt-4o", "high", 255),  # small images are not scaled up
        (700, 300, "gpt-4.1", "auto", 425),  # auto counts as high: 2 x 1 tiles
        (1024, 1024, "gpt-4o", "low", 85),
        (1024, 1024, "gpt-4o-mini", "high", 2833 + 4 * 5667),  # priced as on gpt-4o
        (1024, 1024, "gpt-4o-mini-2024-07-18", "low", 2833),
        (1024, 1024, "gpt-5", "high", 70 + 4 * 140),
        (1024, 1024, "o3", "high", 75 + 4 * 150),
        (1024, 1024, "my-local-vlm", "high", 765),  # unknown: as gpt-4o
        # patch-priced: 32-px patches, at most 1536 (1800 x 2400 is scaled to 1452), x a factor
        (1024, 1024, "gpt-4.1-mini", "high", math.ceil(1024 * 1.62)),
        (1800, 2400, "gpt-4.1-mini", "high", math.ceil(1452 * 1.62)),
        (1800, 2400, "gpt-4.1-nano-2025-04-14", "high", math.ceil(1452 * 2.46)),
        (2048, 768, "gpt-5-mini", "high", math.ceil(1536 * 1.62)),  # exactly at the cap
        (1024, 1024, "o4-mini", "low", math.ceil(1024 * 1.72)),  # detail does not apply
        (100_000, 10, "gpt-5-nano", "high", math.ceil(1536 * 2.46)),
    ],
)
def test_openai_image_tokens_follow_the_documented_formula(
    width: int, height: int, model: str, detail: Any, tokens: int
) -> None:
    assert openai_image_tokens(width, height, model=model, detail=detail) == tokens


def test_openai_image_tokens_default_is_the_1024_px_high_detail_image() -> None:
    assert openai_image_tokens(1024, 1024) == OPENAI_IMAGE_TOKENS
    with pytest.raises(ValueError, match="positive size"):
        openai_image_tokens(0, 10)


@pytest.mark.parametrize(
    ("width", "height", "tokens"),
    [
        (200, 200, 54),  # Anthropic's documented examples: width * height / 750
        (1000, 1000, 1334),
        (1092, 1092, 1590),
        (1, 1, 1),
        (784, 1568, 1640),  # the largest size listed as sent unscaled
        (3136, 1568, 1640),  # scaled to a long side of 1568 first
        (1500, 1500, 1640),  # over ~1.15 megapixels: scaled down, never counted above the cap
        (20_000, 400, 66),  # scaled to 1568 x 31.36: a thin image stays thin
    ],
)
def test_anthropic_image_tokens_follow_the_documented_formula(
    width: int, height: int, tokens: int
) -> None:
    assert anthropic_image_tokens(width, height) == tokens
    assert anthropic_image_tokens(width, height) <= ANTHROPIC_IMAGE_TOKENS * 1.03


def test_cost_tracker_reservations() -> None:
    tracker = CostTracker(1.0)
    assert tracker.reserve(0.6)
    assert not tracker.reserve(0.5)  # 0.6 reserved + 0.5 would pass the cap
    assert tracker.reserved == pytest.approx(0.6)
    tracker.release(0.6, 0.3)  # the real cost replaces the reservation
    assert tracker.spent == pytest.approx(0.3)
    assert tracker.reserved == 0.0
    assert tracker.remaining == pytest.approx(0.7)
    assert tracker.reserve(0.5)
    tracker.release(0.5)
    tracker.add(0.8)
    assert tracker.exhausted
    assert not tracker.reserve(0.0001)
    with pytest.raises(ValueError, match="without a matching reserve"):
        tracker.release(0.1)
    with pytest.raises(ValueError, match="non-negative"):
        tracker.add(-1.0)
    with pytest.raises(ValueError, match="max_cost_usd"):
        CostTracker(-1.0)


def test_uncapped_tracker_only_sums() -> None:
    tracker = CostTracker(None)
    assert tracker.reserve(1e9)
    tracker.release(1e9, 2.0)
    assert tracker.spent == 2.0
    assert not tracker.exhausted
    assert tracker.remaining is None


def test_concurrent_reservations_never_pass_the_cap() -> None:
    cap, estimate = 1.0, 0.07
    tracker = CostTracker(cap)
    peak = 0.0
    refused = 0

    async def call(index: int) -> None:
        nonlocal peak, refused
        if not tracker.reserve(estimate):
            refused += 1
            return
        peak = max(peak, tracker.spent + tracker.reserved)
        await asyncio.sleep(0.001 * (index % 3))
        tracker.release(estimate, estimate * 0.9)
        peak = max(peak, tracker.spent + tracker.reserved)

    async def main() -> None:
        await asyncio.gather(*(call(i) for i in range(50)))

    asyncio.run(main())
    assert peak <= cap + 1e-12
    assert tracker.spent <= cap
    assert refused > 0
    assert tracker.reserved == 0.0


def test_budget_exceeded_error_is_exported_for_callers() -> None:
    from povidgen.hallucinate import pricing

    assert pricing.BudgetExceededError is BudgetExceededError
    assert issubclass(BudgetExceededError, PovidgenError)
