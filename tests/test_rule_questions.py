"""Question-aware corruption: RuleHallucinator keeps the asked object and corrupts what is asked,
the same rules check any hallucinator's rewrite (verify_answer_to_question), and the LLM
providers re-ask a reply that fails them. Every question and answer here is hand-written."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from povidgen import PairBuilder
from povidgen.errors import HallucinationError, VerificationError
from povidgen.hallucinate.anthropic_api import AnthropicHallucinator
from povidgen.hallucinate.lexicon import detect_language, english
from povidgen.hallucinate.openai_api import OpenAIHallucinator
from povidgen.hallucinate.questions import answer_problem, parse_question
from povidgen.hallucinate.rule import RuleHallucinator
from povidgen.hallucinate.verify import verify_answer_to_question
from povidgen.schema import EditKind, Example, Hallucination
from tests.fakes.llm_server import FakeLLMServer, extract_answer, extract_question

_IMAGE = Image.new("RGB", (8, 8))
SEEDS = range(8)
NUMBER_WORDS = [
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
]  # fmt: skip
COLOURS = {
    "red", "green", "blue", "yellow", "orange", "purple", "pink", "white", "black", "brown",
    "gray", "grey", "silver", "gold", "golden", "beige", "turquoise",
}  # fmt: skip
PLACES = {"on the left", "on the right", "at the top", "at the bottom", "in the center"}
FRENCH_LISTS: dict[str, Any] = {
    "language": "fr",
    "objects": {"pomme": "pommes", "table": "tables", "chien": "chiens", "chat": "chats"},
    "colours": [["rouges", "rouge"], ["bleues", "bleue"], ["vertes", "verte"]],
    "numbers": ["zéro", "un", "deux", "trois", "quatre", "cinq", "six"],
    "spatial": {"gauche": ["droite"], "droite": ["gauche"]},
    "version": "test-fr-1",
}


def example(question: str, answer: str, *, seed: int = 0, id: str = "q-1") -> Example:
    return Example(id=id, image=_IMAGE, prompt=question, answer=answer, seed=seed)


def run(question: str, answer: str, *, seed: int = 0, **kwargs: Any) -> Hallucination:
    return RuleHallucinator(**kwargs).hallucinate(example(question, answer, seed=seed))


def runs(question: str, answer: str, **kwargs: Any) -> list[Hallucination]:
    return [run(question, answer, seed=seed, **kwargs) for seed in SEEDS]


def check_spans(result: Hallucination) -> None:
    for edit in result.edits:
        assert result.rejected[edit.start : edit.end] == edit.injected


def number(word: str) -> int:
    return int(word) if word.isdigit() else NUMBER_WORDS.index(word.lower())


# --- reading the question ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("question", "kind", "subjects"),
    [
        ("How many kites are there?", "count", ["kite"]),
        ("How many red apples are in the image?", "count", ["apple"]),
        ("How many people are there?", "count", ["person"]),
        ("How many lanterns can you see?", "count", ["lantern"]),
        ("What color are the apples?", "attribute", ["apple"]),
        ("What colour is the bus?", "attribute", ["bus"]),
        ("Where is the cat?", "position", ["cat"]),
        ("Where are the apples relative to the book?", "relation", ["apple", "book"]),
        ("Is there a cup in the image?", "existence", ["cup"]),
        ("Are there any dogs?", "existence", ["dog"]),
        ("Do you see a clock?", "existence", ["clock"]),
        ("Is the cup red?", "yes_no", ["cup"]),
        ("What is the man holding?", "object", ["person"]),
        ("<image>\nWhat is the dog doing?", "relation", ["dog"]),
    ],
)
def test_questions_are_read(question: str, kind: str, subjects: list[str]) -> None:
    parsed = parse_question(question, english())
    assert parsed is not None
    assert parsed.kind == kind
    assert [s.name for s in parsed.subjects] == subjects


@pytest.mark.parametrize(
    "prompt", ["Describe the image.", "Describe the image in detail.", "What is happening here?"]
)
def test_requests_for_a_description_are_not_questions(prompt: str) -> None:
    assert parse_question(prompt, english()) is None


# --- count: numbers as words and digits, plurals, "is"/"are" -----------------------------------


def test_count_one_becomes_several_and_the_noun_and_verb_follow() -> None:
    for result in runs("How many kites are there?", "There is one brown kite."):
        match = re.fullmatch(r"There are (\w+) brown kites\.", result.rejected)
        assert match is not None, result.rejected
        assert number(match.group(1)) >= 2
        (edit,) = result.edits
        assert edit.kind is EditKind.COUNT
        assert edit.original == "is one brown kite"
        check_spans(result)


def test_count_several_may_become_one_in_the_singular() -> None:
    seen = set()
    for result in runs("How many cups are there?", "There are two red cups.", max_edits=2):
        count = [e for e in result.edits if e.kind is EditKind.COUNT]
        assert len(count) == 1
        text = result.rejected
        one = re.search(r"There is one \w+ cup\.", text)
        several = re.search(r"There are (\w+) \w+ cups\.", text)
        assert one or several, text
        if several:
            assert number(several.group(1)) not in (1, 2)
        seen.add("one" if one else "several")
        check_spans(result)
    assert seen == {"one", "several"}


def test_count_digits_stay_digits() -> None:
    for result in runs("How many cars are in the picture?", "There are 3 cars in the picture."):
        match = re.fullmatch(r"There (is|are) (\d+) (cars?) in the picture\.", result.rejected)
        assert match is not None, result.rejected
        value = int(match.group(2))
        assert value != 3
        assert (match.group(1), match.group(3)) == (
            ("is", "car") if value == 1 else ("are", "cars")
        )


def test_count_words_stay_words_in_a_bare_answer() -> None:
    for result in runs("How many dogs are there?", "Three."):
        word = result.rejected.rstrip(".")
        assert word[0].isupper()
        assert number(word) != 3


def test_count_with_a_verb_after_the_noun() -> None:
    for result in runs("How many kites are flying?", "One kite is flying in the sky."):
        match = re.fullmatch(r"(\w+) kites are flying in the sky\.", result.rejected)
        assert match is not None, result.rejected
        assert number(match.group(1)) >= 2


def test_count_of_an_object_the_word_lists_do_not_know() -> None:
    for result in runs("How many lanterns are there?", "There are four lanterns."):
        assert re.fullmatch(r"There (is one lantern|are \w+ lanterns)\.", result.rejected)
        assert "four" not in result.rejected


def test_theres_becomes_there_are() -> None:
    result = run("How many kites are there?", "There's one kite.")
    assert re.fullmatch(r"There are \w+ kites\.", result.rejected), result.rejected


# --- colour, position, relation ----------------------------------------------------------------


def test_colour_question_changes_the_colour_and_keeps_the_object() -> None:
    for result in runs("What color are the apples?", "The apples are white."):
        match = re.fullmatch(r"The apples are (\w+)\.", result.rejected)
        assert match is not None, result.rejected
        assert match.group(1) in COLOURS - {"white"}


def test_every_colour_of_the_asked_object_changes_alike() -> None:
    answer = "The bus is red. It is a red bus with a driver."
    for result in runs("What colour is the bus?", answer):
        colours = re.findall(r"\b(" + "|".join(COLOURS) + r")\b", result.rejected)
        assert len(colours) == 2
        assert colours[0] == colours[1] != "red"
        assert result.rejected.count("bus") == 2


def test_position_question_moves_the_object() -> None:
    for result in runs("Where are the kites?", "The kites are on the right of the image."):
        match = re.fullmatch(r"The kites are (.+) of the image\.", result.rejected)
        assert match is not None, result.rejected
        assert match.group(1) in PLACES - {"on the right"}


def test_relation_question_flips_the_relation_and_keeps_both_objects() -> None:
    for result in runs(
        "Where are the apples relative to the book?", "The apples are above the book."
    ):
        assert result.rejected in (
            "The apples are below the book.",
            "The apples are beneath the book.",
        )
    result = run(
        "Where is the cup relative to the laptop?", "The cup is to the left of the laptop."
    )
    assert result.rejected == "The cup is to the right of the laptop."


def test_further_edits_never_swap_the_asked_object() -> None:
    answer = "There are two red cups on the table next to a bowl and a spoon."
    for result in runs("How many cups are there?", answer, min_edits=3, max_edits=3):
        assert re.search(r"\bcups?\b", result.rejected)
        assert all(e.original.lower().rstrip("s") != "cup" for e in result.edits)
        assert result.edits[0].kind is EditKind.COUNT


# --- existence: yes -> no and no -> yes --------------------------------------------------------


def test_yes_becomes_no_and_the_rest_describes_another_object() -> None:
    answer = "Yes, there are three white cups at the bottom."
    stand_ins = 0
    for result in runs("Is there a cup in the image?", answer):
        check_spans(result)
        assert result.edits[0].kind is EditKind.REASONING
        if result.rejected == "No, there is no cup in the image.":
            continue  # the stand-in's name made the rewrite too long
        prefix = "No, there is no cup; there are "
        assert result.rejected.startswith(prefix), result.rejected
        assert not re.search(r"\bcups\b", result.rejected)
        assert EditKind.OBJECT in [e.kind for e in result.edits]
        stand_ins += 1
    assert stand_ins >= len(SEEDS) // 2


def test_yes_becomes_no_in_the_plural_of_the_question() -> None:
    result = run("Are there any dogs?", "Yes, there is a brown dog sleeping on the sofa.")
    assert result.rejected.startswith("No, there are no dogs; there is a brown ")
    assert result.rejected.endswith(" sleeping on the sofa.")
    # Too long with a stand-in object: the short form.
    result = run("Are there any dogs?", "Yes, there is a dog on the sofa.")
    assert result.rejected == "No, there are no dogs in the image."


def test_yes_becomes_no_alone_when_the_rest_may_refer_to_the_object() -> None:
    result = run("Is there a cup?", "Yes, it is on the table next to the laptop.")
    assert result.rejected == "No, there is no cup in the image."


def test_yes_becomes_no_alone_without_the_object_kind() -> None:
    result = run(
        "Is there a cup in the image?",
        "Yes, there are three white cups at the bottom. The cups are stacked.",
        kinds=["reasoning"],
    )
    assert result.rejected == "No, there is no cup in the image."


def test_bare_yes_becomes_a_full_no() -> None:
    assert run("Is there a cup?", "Yes.").rejected == "No, there is no cup in the image."


def test_no_becomes_yes_with_a_plausible_place() -> None:
    for result in runs("Is there a book in the image?", "No, there is no book in the image."):
        match = re.fullmatch(r"Yes, there is a book (.+) of the image\.", result.rejected)
        assert match is not None, result.rejected
        assert match.group(1) in PLACES
        assert result.edits[0].kind is EditKind.REASONING


def test_no_becomes_yes_and_the_place_is_one_the_answer_does_not_use() -> None:
    answer = "No, there is no book in the image; there are two yellow cups on the right."
    for result in runs("Is there a book in the image?", answer, max_edits=1, min_edits=1):
        match = re.match(r"Yes, there is a book (.+?) of the image; ", result.rejected)
        assert match is not None, result.rejected
        assert match.group(1) in PLACES - {"on the right"}


@pytest.mark.parametrize(
    ("question", "answer", "expected"),
    [
        ("Are there any cats?", "No, there are no cats in the picture.", r"Yes, there are "
         r"(two|three|four) cats (.+) of the picture\."),
        ("Is there a clock?", "No, I don't see a clock.", r"Yes, I can see a clock (.+)\."),
        ("Is there a clock?", "No.", r"Yes, there is a clock (.+) of the image\."),
        ("Is there an umbrella?", "There isn't an umbrella here.", r"There is an umbrella here\."),
    ],
)  # fmt: skip
def test_other_negative_wordings_become_positive(question: str, answer: str, expected: str) -> None:
    result = run(question, answer)
    assert re.fullmatch(expected, result.rejected), result.rejected


# --- yes/no about a value ----------------------------------------------------------------------


def test_yes_no_about_a_colour_flips_both_ways() -> None:
    for result in runs("Is the cup red?", "Yes, the cup is red."):
        match = re.fullmatch(r"No, the cup is (\w+)\.", result.rejected)
        assert match is not None, result.rejected
        assert match.group(1) in COLOURS - {"red"}
    assert run("Is the cup red?", "No, the cup is blue.").rejected == "Yes, the cup is red."
    assert run("Is the cup red?", "Yes, it is.").rejected == "No, it is not."
    assert run("Is the cup red?", "No, it isn't.").rejected == "Yes, it is."
    assert run("Is the cup red?", "No, it is not red.").rejected == "Yes, it is red."


def test_yes_no_about_a_count() -> None:
    for result in runs("Are there two dogs?", "Yes, there are two dogs."):
        match = re.fullmatch(r"No, there (?:is one dog|are (\w+) dogs)\.", result.rejected)
        assert match is not None, result.rejected
        assert match.group(1) != "two"


# --- nothing to change, other languages --------------------------------------------------------


def test_nothing_to_change_is_a_clear_error() -> None:
    with pytest.raises(HallucinationError, match="nothing in the answer to the question") as info:
        run("What is the man's name?", "His name is John.")
    assert "baseball" not in str(info.value)
    assert "There is also" not in str(info.value)


def test_nothing_to_change_becomes_a_row_error_of_stage_hallucinate() -> None:
    rows = [
        {"id": "a", "image": _IMAGE, "question": "What is his name?", "answer": "His name is Tom."},
        {
            "id": "b",
            "image": _IMAGE,
            "question": "What color is the cat?",
            "answer": "It is black.",
        },
    ]
    builder = PairBuilder.from_dataset(
        rows,
        hallucinator=RuleHallucinator(),
        distorter=None,
        image_column="image",
        prompt_column="question",
        answer_column="answer",
        id_column="id",
    )
    pairs = builder.build()
    assert len(pairs) == 1
    (error,) = builder.errors
    assert (error.id, error.stage) == ("a", "hallucinate")
    assert "nothing in the answer" in error.reason


@pytest.mark.parametrize(
    ("answer", "language"),
    [
        ("Il y a trois pommes rouges sur la table.", "French"),
        ("Es gibt drei rote Äpfel auf dem Tisch.", "German"),
        ("Hay tres manzanas rojas en la mesa.", "Spanish"),
        ("Ci sono tre mele rosse sul tavolo.", "Italian"),
        ("Há três maçãs vermelhas na mesa.", "Portuguese"),
        ("Er zijn drie rode appels op de tafel.", "Dutch"),
        ("На столе три красных яблока.", "Cyrillic script"),  # noqa: RUF001
    ],
)
def test_answers_not_in_english_are_refused(answer: str, language: str) -> None:
    with pytest.raises(HallucinationError, match=language) as info:
        run("How many apples are there?", answer)
    assert "word_lists" in str(info.value)


def test_english_answers_with_foreign_words_are_english() -> None:
    assert detect_language('The sign says "Boulangerie de la Gare" in red letters.') == "en"
    assert detect_language("Yes.") == "en"
    assert detect_language("3") == "en"
    result = run("What does the sign say?", 'The red sign says "Boulangerie de la Gare".')
    assert result.rejected != 'The red sign says "Boulangerie de la Gare".'


def test_supplied_word_lists_accept_their_language_and_keep_the_asked_object() -> None:
    question, answer = "Combien de pommes y a-t-il ?", "Il y a trois pommes rouges sur la table."
    for seed in SEEDS:
        result = run(question, answer, seed=seed, word_lists=FRENCH_LISTS)
        assert "pommes" in result.rejected
        assert result.rejected != answer
        assert 1 <= len(result.edits) <= 3
        check_spans(result)
    with pytest.raises(HallucinationError, match="German"):
        run("Wie viele Äpfel?", "Es gibt drei rote Äpfel auf dem Tisch.", word_lists=FRENCH_LISTS)


def test_word_lists_from_a_file_and_in_params(tmp_path: Path) -> None:
    path = tmp_path / "fr.json"
    path.write_text(json.dumps(FRENCH_LISTS), encoding="utf-8")
    hallucinator = RuleHallucinator(word_lists=[path])
    assert hallucinator.languages == ("en", "fr")
    params = hallucinator.params()
    assert params["word_lists"]["fr"]["version"] == "test-fr-1"
    assert len(params["word_lists"]["fr"]["sha256"]) == 16
    assert "word_lists" not in RuleHallucinator().params()
    result = hallucinator.hallucinate(
        example("Où est le chien ?", "Le chien est à gauche de la table.")
    )
    assert "chien" in result.rejected
    assert "droite" in result.rejected or "tables" in result.rejected or "chats" in result.rejected


@pytest.mark.parametrize(
    ("lists", "message"),
    [
        ({"objects": {}}, "language"),
        ({"language": "fr", "nouns": {}}, "unknown section"),
        ({"language": "sv"}, "function_words"),
        ({"language": "en"}, "built in"),
        ({"language": "fr", "colours": "rouge"}, "colours"),
        ({"language": "fr", "spatial": {"gauche": "droite"}}, "spatial"),
    ],
)
def test_bad_word_lists_are_rejected(lists: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RuleHallucinator(word_lists=lists)


def test_unreadable_word_list_file_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot be read"):
        RuleHallucinator(word_lists=tmp_path / "missing.json")
    with pytest.raises(ValueError, match="twice"):
        RuleHallucinator(word_lists=[FRENCH_LISTS, FRENCH_LISTS])


# --- the check, for any hallucinator -----------------------------------------------------------


@pytest.mark.parametrize(
    ("question", "answer", "rejected", "reason"),
    [
        ("How many kites are there?", "There is one brown kite.", "There is one pink frisbee.",
         "no longer mentions the kites"),
        ("What color are the apples?", "The apples are white.", "The dining tables are turquoise.",
         "no longer mentions the apples"),
        ("Is there a cup in the image?", "Yes, there are three white cups at the bottom.",
         "No, there are three brown cups at the top.", "answers 'No' but still says"),
        ("Is there a book in the image?", "No, there is no book in the image; there are two cups.",
         "Yes, there is no book in the image; there are three cups.", "answers 'Yes' but says"),
        ("Is there a book in the image?", "No, there is no book in the image; there are two cups.",
         "No, there is one book in the image; there are two cups.", "answers 'No' but still says"),
        ("How many kites are there?", "There is one brown kite.", "There is three brown kite.",
         "does not agree"),
        ("How many kites are there?", "There is one brown kite.", "There are one brown kites.",
         "does not agree"),
        ("Describe the image.", "The kites are red.", "The kites is red.", "does not agree"),
        ("How many kites are there?", "There is one brown kite.", "There is one pink kite.",
         "keeps the number of kites"),
        ("What color are the apples?", "The apples are white.", "The apples are white and big.",
         "keeps the colour"),
        ("Where are the kites?", "The kites are on the right.", "The small kites are on the right.",
         "keeps where the kites are"),
        ("Is there a cup?", "Yes, there is a cup.", "Yes, there is a mug.",
         "no longer mentions the cups"),
        ("Is there a cup?", "Yes, there is a red cup.", "Yes, there is a blue cup.",
         "keeps the answer (yes)"),
        ("Where are the apples relative to the book?", "The apples are above the book.",
         "The red apples are above the book.", "keeps how the objects are placed"),
    ],
)  # fmt: skip
def test_the_check_flags(question: str, answer: str, rejected: str, reason: str) -> None:
    with pytest.raises(VerificationError, match=re.escape(reason)) as info:
        verify_answer_to_question(example(question, answer), rejected)
    assert info.value.reason == str(info.value)


@pytest.mark.parametrize(
    ("question", "answer", "rejected"),
    [
        ("How many kites are there?", "There is one brown kite.", "There are three brown kites."),
        ("How many kites are there?", "There are 2 kites.", "There is 1 kite."),
        ("What color are the apples?", "The apples are white.", "The apples are turquoise."),
        ("Where are the kites?", "The kites are on the right.", "The kites are at the top."),
        ("Is there a cup in the image?", "Yes, there are three white cups at the bottom.",
         "No, there is no cup in the image; there are three white bottles at the bottom."),
        ("Is there a book?", "No, there is no book in the image.",
         "Yes, there is a book at the top of the image."),
        ("Describe the image.", "Two red apples on a table.", "Two red bananas on a table."),
        ("Combien de pommes ?", "Il y a trois pommes.", "Il y a deux poires."),
    ],
)  # fmt: skip
def test_the_check_passes(question: str, answer: str, rejected: str) -> None:
    verify_answer_to_question(example(question, answer), rejected)
    verify_answer_to_question(example(question, answer), Hallucination(rejected=rejected, edits=[]))


def test_rule_output_passes_the_check() -> None:
    cases = [
        ("How many kites are there?", "There is one brown kite."),
        ("What color are the apples?", "The apples are white."),
        ("Where are the kites?", "The kites are on the right of the image."),
        ("Is there a cup in the image?", "Yes, there are three white cups at the bottom."),
        ("Is there a book in the image?", "No, there is no book in the image; there are cups."),
        ("Where are the apples relative to the book?", "The apples are above the book."),
        ("Is the cup red?", "No, the cup is blue."),
    ]
    for question, answer in cases:
        for seed in SEEDS:
            result = run(question, answer, seed=seed)
            verify_answer_to_question(example(question, answer), result)


_QUESTIONS = [
    "How many kites are there?", "What color are the apples?", "Where is the cat?",
    "Is there a cup in the image?", "Are there any dogs?", "Is the cup red?",
    "Are there two dogs?", "Where are the apples relative to the book?",
    "What is the man holding?", "What is the dog doing?", "Describe the image.",
    "Why is the man smiling?", "How many lanterns can you see?", "What size is the bed?",
]  # fmt: skip
_SOUP = [
    "a", "an", "A", "the", "The", "two", "Three", "12", "1", "one", "no", "No,", "Yes,", "not",
    "isn't", "there", "There", "is", "are", "There's", "kite", "kites", "cup", "cups", "apple",
    "apples", "orange", "red", "white", "left", "on the left", "at the top", "of the image",
    "in the image", "above", "to the left of", "book", "dog", "dogs", "holding", "sitting on",
    "man", "men", "sheep", "people", "lantern", "lanterns", '"STOP"', "and", ",", ".", ";",
    "\n", "I", "don't", "see", "any", "it", "large", "bed", "é",
]  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(_QUESTIONS),
    st.lists(st.sampled_from(_SOUP), min_size=1, max_size=18)
    .map(" ".join)
    .filter(lambda text: bool(text.strip())),
    st.integers(0, 2**31),
)
def test_any_question_and_answer_give_a_coherent_rewrite_or_an_error(
    question: str, answer: str, seed: int
) -> None:
    try:
        result = run(question, answer, seed=seed)
    except HallucinationError:
        return  # a clear refusal is fine; any other exception fails the test
    check_spans(result)
    assert result.rejected.strip() != answer.strip()
    parsed = parse_question(question, english())
    assert answer_problem(parsed, answer, result.rejected, english(), require_change=False) is None


# --- the re-ask loop of the LLM providers ------------------------------------------------------

QUESTION = "How many kites are there?"
ANSWER = "There is one brown kite."
SWAPPED = {
    "rejected": "There is one pink frisbee.",
    "edits": [
        {"kind": "object", "original": "brown kite", "injected": "pink frisbee"},
    ],
}
GOOD = {
    "rejected": "There are three brown kites.",
    "edits": [
        {"kind": "count", "original": "is one brown kite", "injected": "are three brown kites"}
    ],
}


class Scripted:
    """A responder that answers with ``replies`` in turn and records the user texts."""

    def __init__(self, *replies: dict[str, Any]) -> None:
        self.replies = list(replies)
        self.users: list[str] = []
        self.questions: list[str | None] = []

    def __call__(self, provider: str, body: dict[str, Any]) -> dict[str, Any]:
        assert extract_answer(body) == ANSWER
        self.questions.append(extract_question(body))
        self.users.append(json.dumps(body["messages"]))
        return self.replies[min(len(self.users) - 1, len(self.replies) - 1)]


@pytest.fixture(scope="module")
def running() -> Iterator[FakeLLMServer]:
    with FakeLLMServer() as server:
        yield server


def _make(provider: str, server: FakeLLMServer, **options: Any) -> Any:
    options.setdefault("cache", False)
    if provider == "openai":
        return OpenAIHallucinator(base_url=server.openai_base_url, api_key="sk-q", **options)
    return AnthropicHallucinator(base_url=server.anthropic_base_url, api_key="sk-q", **options)


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_a_reply_that_swaps_the_asked_object_is_re_asked_with_the_reason(
    running: FakeLLMServer, provider: str
) -> None:
    script = Scripted(SWAPPED, GOOD)
    running.responder = script
    result = _make(provider, running).hallucinate(example(QUESTION, ANSWER))
    assert result.rejected == "There are three brown kites."
    assert len(script.users) == 2
    assert script.questions == [QUESTION, QUESTION]
    assert "no longer mentions the kites" in script.users[1]
    assert "There is one pink frisbee." in script.users[1]  # the previous reply is shown


def test_a_self_contradicting_reply_fails_after_the_attempts(running: FakeLLMServer) -> None:
    contradicting = {
        "rejected": "There is three brown kite.",
        "edits": [{"kind": "count", "original": "one", "injected": "three"}],
    }
    script = Scripted(contradicting)
    running.responder = script
    with pytest.raises(VerificationError, match="does not agree"):
        _make("openai", running, max_attempts=2).hallucinate(example(QUESTION, ANSWER))
    assert len(script.users) == 2


def test_the_default_fake_reply_answers_the_question(running: FakeLLMServer) -> None:
    from tests.fakes.llm_server import default_responder

    running.responder = default_responder
    result = _make("anthropic", running).hallucinate(example(QUESTION, ANSWER, seed=3))
    assert re.fullmatch(r"There are \w+ brown kites\.", result.rejected), result.rejected


def test_word_lists_on_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from povidgen.cli import main

    lists = tmp_path / "fr.json"
    lists.write_text(json.dumps(FRENCH_LISTS), encoding="utf-8")
    image = tmp_path / "pommes.png"
    _IMAGE.save(image)
    rows = tmp_path / "rows.jsonl"
    row = {"id": "fr-1", "image": "pommes.png", "prompt": "Combien de pommes y a-t-il ?"}
    row["answer"] = "Il y a trois pommes rouges sur la table."
    rows.write_text(json.dumps(row) + "\n", encoding="utf-8")
    build = ["build", "--dataset", str(rows), "--id-column", "id", "--distorter", "none"]
    assert main([*build, "--out", str(tmp_path / "refused")]) == 1  # French: refused
    assert main([*build, "--word-lists", str(lists), "--out", str(tmp_path / "out")]) == 0
    assert main([*build, "--word-lists", str(tmp_path / "nope.json"), "--out", "x"]) == 2
    assert "--word-lists" in capsys.readouterr().err
    command = [*build, "--provider", "openai", "--word-lists", str(lists), "--out", "y"]
    assert main(command) == 2
    assert "only for the 'rule' provider" in capsys.readouterr().err
