"""One contract, run over every hallucinator: rule, OpenAI and Anthropic (real SDKs, fake
server), a local transformers model, and a user subclass."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator

import pytest
import torch

from povidgen import (
    Edit,
    EditKind,
    Example,
    Hallucination,
    HallucinationError,
    Hallucinator,
    RuleHallucinator,
)
from povidgen.hallucinate.anthropic_api import AnthropicHallucinator
from povidgen.hallucinate.openai_api import OpenAIHallucinator
from povidgen.hallucinate.transformers_local import TransformersHallucinator
from povidgen.sources.demo import demo_dataset
from tests.fakes.llm_server import FakeLLMServer
from tests.hallucinate.test_transformers_local import ScriptedModel, char_tokenizer, tiny_llama


class Shouting(Hallucinator):
    """A user's hallucinator: upper-cases the first word and calls it a text error."""

    name = "shouting"

    async def ahallucinate(self, example: Example) -> Hallucination:
        word = example.answer.split()[0]
        if word.upper() == word:
            raise HallucinationError("the first word is already upper case")
        rejected = word.upper() + example.answer[len(word) :]
        edit = Edit(
            kind=EditKind.TEXT, original=word, injected=word.upper(), start=0, end=len(word)
        )
        return Hallucination(rejected=rejected, edits=[edit])


@pytest.fixture(scope="module")
def server() -> Iterator[FakeLLMServer]:
    with FakeLLMServer() as running:
        yield running


def _scripted_transformers() -> Hallucinator:
    tokenizer = char_tokenizer()

    class Echo(ScriptedModel):
        """Answers every row of a batch by replacing the correct answer's first word with
        "Four", in JSON (rows padded on the right to one length, as ``generate`` pads)."""

        def generate(self, input_ids, **kwargs):  # type: ignore[no-untyped-def]
            pad = self.tokenizer.pad_token_id
            replies = []
            for row in input_ids:
                prompt = self.tokenizer.decode(row, skip_special_tokens=True)
                self.prompts.append(prompt)
                answer = prompt.split("<answer>\n", 1)[1].split("\n</answer>", 1)[0]
                word = answer.split()[0]
                reply = {
                    "rejected": "Four" + answer[len(word) :] if word != "Four" else answer,
                    "edits": [{"kind": "count", "original": word, "injected": "Four"}],
                }
                replies.append(
                    self.tokenizer(json.dumps(reply), add_special_tokens=False)["input_ids"]
                )
            width = max(len(reply) for reply in replies)
            new = torch.tensor([reply + [pad] * (width - len(reply)) for reply in replies])
            return torch.cat([input_ids, new], dim=1)

    return TransformersHallucinator(Echo(tokenizer, []), tokenizer=tokenizer, max_attempts=1)


def _tiny_random_transformers() -> Hallucinator:
    """A random Llama from a config: its replies are noise, so every row must fail cleanly."""
    return TransformersHallucinator(
        tiny_llama(), tokenizer=char_tokenizer(), max_new_tokens=4, max_attempts=1
    )


FACTORIES: dict[str, Callable[[FakeLLMServer], Hallucinator]] = {
    "rule": lambda server: RuleHallucinator(),
    "openai": lambda server: OpenAIHallucinator(
        base_url=server.openai_base_url, api_key="sk-contract"
    ),
    "anthropic": lambda server: AnthropicHallucinator(
        base_url=server.anthropic_base_url, api_key="sk-contract"
    ),
    "transformers": lambda server: _scripted_transformers(),
    "transformers (tiny random)": lambda server: _tiny_random_transformers(),
    "user subclass": lambda server: Shouting(),
}


@pytest.fixture(scope="module")
def examples() -> list[Example]:
    rows = demo_dataset(n=12, seed=3)
    return [
        Example(id=row["id"], image=row["image"], prompt=row["question"], answer=row["answer"])
        for row in rows
    ]


@pytest.mark.parametrize("name", list(FACTORIES))
def test_every_result_is_a_verified_hallucination_or_a_hallucination_error(
    name: str, server: FakeLLMServer, examples: list[Example], caplog: pytest.LogCaptureFixture
) -> None:
    hallucinator = FACTORIES[name](server)
    with caplog.at_level(logging.WARNING, logger="povidgen"):
        results = hallucinator.hallucinate_many(examples, concurrency=4)
    # local models generate a batch at once: no batch fell back to one row at a time
    assert "one at a time" not in caplog.text
    assert len(results) == len(examples)
    verified = 0
    for example, result in zip(examples, results, strict=True):
        if isinstance(result, HallucinationError):
            assert str(result)
            continue
        assert isinstance(result, Hallucination), result
        verified += 1
        assert result.rejected.strip() != example.answer.strip()
        for edit in result.edits:
            assert result.rejected[edit.start : edit.end] == edit.injected
    if name == "transformers (tiny random)":
        assert verified == 0  # noise never passes verification, and never crashes the run
    else:
        assert verified >= len(examples) // 2


@pytest.mark.parametrize("name", list(FACTORIES))
def test_names_and_params_are_recordable(name: str, server: FakeLLMServer) -> None:
    hallucinator = FACTORIES[name](server)
    assert hallucinator.name
    assert hallucinator.name != "custom"
    params = json.loads(json.dumps(hallucinator.params()))
    assert "sk-contract" not in json.dumps(params)
    assert type(hallucinator).__name__ in repr(hallucinator)


@pytest.mark.parametrize("name", list(FACTORIES))
def test_one_example_synchronously(
    name: str, server: FakeLLMServer, examples: list[Example]
) -> None:
    hallucinator = FACTORIES[name](server)
    if name == "transformers (tiny random)":
        with pytest.raises(HallucinationError):
            hallucinator.hallucinate(examples[0])
        return
    result = hallucinator.hallucinate(examples[0])
    assert result.rejected != examples[0].answer
