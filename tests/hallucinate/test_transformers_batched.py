"""TransformersHallucinator in batches, and constrained to the reply schema: tiny models built
here from configs (no download, no weights)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from transformers import PreTrainedTokenizerFast

from povidgen import Example, Hallucination, PromptConfig, ProviderError, VerificationError
from povidgen.hallucinate.prompts import RewriteReply, build_messages
from povidgen.hallucinate.transformers_local import TransformersHallucinator, reply_schema
from tests.hallucinate.test_transformers_local import CHARS, char_tokenizer, tiny_llama

needs_xgrammar = pytest.mark.skipif(
    importlib.util.find_spec("xgrammar") is None,
    reason="xgrammar (the local extra) is not installed",
)

QUESTION = "What is on the table?"
FRUITS = ["apples", "pears", "plums", "oranges", "lemons", "peaches", "figs"]


def example(index: int, answer: str | None = None) -> Example:
    return Example(
        id=f"r{index}",
        image=Image.new("RGB", (4, 4)),
        prompt=QUESTION,
        answer=answer or f"There are two red {FRUITS[index % len(FRUITS)]} on the table.",
    )


def rewrite(answer: str) -> str:
    """The reply a good model gives: two -> three (count), red -> green (attribute)."""
    return json.dumps(
        {
            "rejected": answer.replace("two", "three").replace("red", "green"),
            "edits": [
                {"kind": "count", "original": "two", "injected": "three"},
                {"kind": "attribute", "original": "red", "injected": "green"},
            ],
        }
    )


class BatchModel:
    """A causal LM stand-in that answers every row of a batch from its own prompt and records
    each ``generate`` call's ``input_ids`` and ``attention_mask``."""

    def __init__(self, tokenizer: PreTrainedTokenizerFast, fail_on: str | None = None) -> None:
        self.tokenizer = tokenizer
        self.fail_on = fail_on
        self.device = torch.device("cpu")
        self.config = type("Config", (), {"_name_or_path": "batch-lm"})()
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def generate(
        self, input_ids: torch.Tensor, *, attention_mask: torch.Tensor, **_: Any
    ) -> torch.Tensor:
        self.calls.append((input_ids.clone(), attention_mask.clone()))
        prompts = [
            self.tokenizer.decode(ids[mask.bool()])
            for ids, mask in zip(input_ids, attention_mask, strict=True)
        ]
        if self.fail_on is not None and any(self.fail_on in prompt for prompt in prompts):
            raise RuntimeError("the kernel failed")
        replies = []
        for prompt in prompts:
            answer = prompt.split("<answer>\n", 1)[1].split("\n</answer>", 1)[0]
            text = rewrite(answer)
            replies.append(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        eos = self.tokenizer.eos_token_id
        width = max(len(reply) for reply in replies) + 1
        new = torch.tensor([reply + [eos] * (width - len(reply)) for reply in replies])
        return torch.cat([input_ids, new], dim=1)


def test_reply_schema_narrows_kinds_and_edit_counts_by_hand() -> None:
    schema = reply_schema(PromptConfig(kinds=("count", "spatial"), min_edits=1, max_edits=2))
    assert schema["$defs"]["EditKind"]["enum"] == ["count", "spatial"]
    assert (
        schema["properties"]["edits"]["minItems"],
        schema["properties"]["edits"]["maxItems"],
    ) == (
        1,
        2,
    )
    assert schema["required"] == ["rejected", "edits"]
    assert "maxItems" not in RewriteReply.model_json_schema()["properties"]["edits"]  # a copy


def test_rows_in_flight_share_generate_calls_left_padded() -> None:
    tokenizer = char_tokenizer()
    model = BatchModel(tokenizer)
    hallucinator = TransformersHallucinator(model, tokenizer=tokenizer, batch_size=2, cache=False)
    # answers of different lengths, so prompts in one batch have different lengths
    examples = [example(i) for i in range(5)]
    results = hallucinator.hallucinate_many(examples, concurrency=8)
    assert [len(ids) for ids, _ in model.calls] == [2, 2, 1]
    for result, row in zip(results, examples, strict=True):
        assert isinstance(result, Hallucination), result
        assert result.rejected == row.answer.replace("two", "three").replace("red", "green")
    pad = tokenizer.pad_token_id
    for input_ids, mask in model.calls:
        for ids, row_mask in zip(input_ids.tolist(), mask.tolist(), strict=True):
            ones = row_mask.index(1)
            assert row_mask == [0] * ones + [1] * (len(row_mask) - ones)  # padding on the left
            assert ids[:ones] == [pad] * ones
    first, second = model.calls[0][1].sum(dim=1).tolist()
    assert first != second  # "apples" and "pears": two lengths in one batch
    assert hallucinator.usage.input_tokens == sum(int(m.sum()) for _, m in model.calls)


def test_batch_size_one_is_one_row_per_call() -> None:
    tokenizer = char_tokenizer()
    model = BatchModel(tokenizer)
    hallucinator = TransformersHallucinator(model, tokenizer=tokenizer, batch_size=1, cache=False)
    results = hallucinator.hallucinate_many([example(i) for i in range(3)], concurrency=8)
    assert [len(ids) for ids, _ in model.calls] == [1, 1, 1]
    assert all(isinstance(result, Hallucination) for result in results)


def test_a_row_that_breaks_the_batch_fails_alone() -> None:
    tokenizer = char_tokenizer()
    model = BatchModel(tokenizer, fail_on="BOOM")
    hallucinator = TransformersHallucinator(
        model, tokenizer=tokenizer, batch_size=4, max_attempts=1, cache=False
    )
    examples = [example(0), example(1, "There are two red BOOM on the table."), example(2)]
    results = hallucinator.hallucinate_many(examples, concurrency=8)
    # the batch of three failed, then each row was generated alone
    assert [len(ids) for ids, _ in model.calls] == [3, 1, 1, 1]
    assert isinstance(results[0], Hallucination)
    assert isinstance(results[1], ProviderError)
    assert "the kernel failed" in str(results[1])
    assert isinstance(results[2], Hallucination)


def test_a_prompt_longer_than_the_context_fails_alone() -> None:
    tokenizer = char_tokenizer()
    model = BatchModel(tokenizer)
    prompt_length = len(
        TransformersHallucinator(model, tokenizer=tokenizer)._prompt(
            *build_messages(example(0), PromptConfig())
        )
    )
    model.config.max_position_embeddings = prompt_length + 50  # type: ignore[attr-defined]
    hallucinator = TransformersHallucinator(model, tokenizer=tokenizer, max_attempts=1, cache=False)
    long = example(1, "There are two red apples on the table. " + "It is sunny. " * 10)
    results = hallucinator.hallucinate_many([example(0), long, example(2)], concurrency=8)
    assert isinstance(results[0], Hallucination)
    assert isinstance(results[1], ProviderError)
    assert f"the model's context holds {prompt_length + 50}" in str(results[1])
    assert isinstance(results[2], Hallucination)
    assert [len(ids) for ids, _ in model.calls] == [2]  # the long row never entered the batch


@pytest.mark.parametrize(
    "constrained", [False, pytest.param(True, marks=needs_xgrammar)], ids=["free", "constrained"]
)
def test_batched_greedy_equals_one_at_a_time(constrained: bool) -> None:
    """A random Llama, prompts of four lengths: each row's greedy tokens and usage are the
    same in one batch (left-padded) as alone. The prompts are short, so that padding is most
    of a short row: without the attention mask three of the four rows come out different."""
    tokenizer = char_tokenizer()
    hallucinator = TransformersHallucinator(
        # constrained, the first 14 tokens are forced ('{"rejected": "'): go past them
        tiny_llama(),
        tokenizer=tokenizer,
        max_new_tokens=30 if constrained else 12,
        constrained=constrained,
    )
    prompts = [
        "No.",
        "There are two red apples.",
        "A cat sits on a mat by the door, next to a red ball.",
        "A dog.",
    ]
    batched = hallucinator._generate_batch(prompts)
    alone = [hallucinator._generate_batch([prompt])[0] for prompt in prompts]
    for one, other in zip(batched, alone, strict=True):
        assert not isinstance(one, Exception)
        assert not isinstance(other, Exception)
        assert (one.text, one.usage) == (other.text, other.usage)
        assert one.usage.output_tokens > 0


def quote_loving_llama() -> Any:
    """A random Llama whose output bias makes '"' win whenever it is allowed: free, it
    repeats '"' forever; under the schema, every string closes at once."""
    model = tiny_llama()
    bias = torch.zeros(len(CHARS))
    bias[CHARS.index('"')] = 100.0
    model.lm_head.bias = torch.nn.Parameter(bias)
    return model


@needs_xgrammar
def test_constrained_decoding_gives_schema_json_from_a_random_model() -> None:
    tokenizer = char_tokenizer()
    prompt = PromptConfig(kinds=("count", "spatial"), min_edits=1, max_edits=1)
    model = quote_loving_llama()
    free = TransformersHallucinator(
        model, tokenizer=tokenizer, prompt=prompt, max_new_tokens=80, constrained=False
    )
    tied = TransformersHallucinator(
        model, tokenizer=tokenizer, prompt=prompt, max_new_tokens=80, constrained=True
    )
    text = free._prompt(*build_messages(example(0), prompt))
    (loose,) = free._generate_batch([text])
    (strict,) = tied._generate_batch([text])
    assert not isinstance(loose, Exception)
    assert not isinstance(strict, Exception)
    assert loose.text == '"' * 80  # garbage: the quote, again and again
    reply = RewriteReply.model_validate_json(strict.text)
    assert reply.rejected == ""
    assert len(reply.edits) == 1
    assert reply.edits[0].kind in ("count", "spatial")
    assert strict.usage.output_tokens == len(strict.text) + 1  # one token per char, then EOS
    # valid JSON, empty content: verification still says no, as a typed row error
    with pytest.raises(VerificationError):
        tied.hallucinate(example(0))
    assert tied.params()["constrained"] is True
    assert free.params()["constrained"] is False


@needs_xgrammar
def test_special_tokens_never_enter_a_constrained_string() -> None:
    """The model prefers <pad> above all, then '"'. To the grammar "<pad>" would be six
    characters of text, fine inside a string, and the string would never close; special
    tokens are blanked, so '"' closes it and the reply parses."""
    tokenizer = char_tokenizer()
    model = quote_loving_llama()
    assert model.lm_head.bias is not None
    with torch.no_grad():
        model.lm_head.bias[tokenizer.pad_token_id] = 200.0
    prompt = PromptConfig(min_edits=1, max_edits=1)
    hallucinator = TransformersHallucinator(
        model, tokenizer=tokenizer, prompt=prompt, max_new_tokens=80, constrained=True
    )
    (reply,) = hallucinator._generate_batch(["Rewrite."])
    assert not isinstance(reply, Exception)
    assert RewriteReply.model_validate_json(reply.text).rejected == ""


def test_constrained_decoding_needs_the_local_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "xgrammar", None)  # as if it were not installed
    tokenizer = char_tokenizer()
    model = BatchModel(tokenizer)
    with pytest.raises(ImportError, match=r"povidgen\[local\]"):
        TransformersHallucinator(model, tokenizer=tokenizer, constrained=True)
    default = TransformersHallucinator(model, tokenizer=tokenizer, cache=False)
    assert default.constrained is False  # off when it is missing; the run still works
    assert isinstance(default.hallucinate(example(0)), Hallucination)


def test_bad_batch_size() -> None:
    tokenizer = char_tokenizer()
    for bad in (0, -1, True, 2.5):
        with pytest.raises(ValueError, match="batch_size"):
            TransformersHallucinator(BatchModel(tokenizer), tokenizer=tokenizer, batch_size=bad)


def test_the_local_benchmark_prints_the_speed_up_and_equal_replies(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """benchmarks/generation.py --local on a one-layer model: it runs, prints the speed-up,
    and finds every row's reply the same batched and alone."""
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "generation.py"
    spec = importlib.util.spec_from_file_location("benchmarks_generation", script)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    threads = torch.get_num_threads()
    small = ["--local-rows", "3", "--local-batch", "3", "--local-new-tokens", "4"]
    small += ["--local-hidden", "64", "--local-layers", "1", "--local-repeats", "1"]
    module.local_main(["--local", *small, "--local-threads", str(threads)])
    output = capsys.readouterr().out
    modes = 2 if importlib.util.find_spec("xgrammar") is not None else 1
    assert output.count("same reply both ways: 3/3") == modes
    assert output.count("speed-up: ") == modes
    assert torch.get_num_threads() == threads
