"""TransformersHallucinator with tiny models built here: no download, no weights."""

from __future__ import annotations

import json
import string
from typing import Any

import pytest
import torch
from PIL import Image
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from povidgen import Example, Hallucination, HallucinationError
from povidgen.hallucinate.transformers_local import TransformersHallucinator

CHARS = ["<pad>", "<eos>", "<unk>", *string.printable]


def char_tokenizer() -> PreTrainedTokenizerFast:
    """One token per character, so decode(encode(text)) == text."""
    tokenizer = Tokenizer(models.WordLevel({c: i for i, c in enumerate(CHARS)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex("[\\s\\S]"), behavior="isolated")
    tokenizer.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
    )


EXAMPLE = Example(
    id="a",
    image=Image.new("RGB", (4, 4)),
    prompt="What is on the table?",
    answer="There are two red apples on the table.",
)


class ScriptedModel:
    """Stands in for a causal LM whose generation we choose: it appends ``reply``."""

    def __init__(self, tokenizer: PreTrainedTokenizerFast, replies: list[str]) -> None:
        self.tokenizer = tokenizer
        self.replies = replies
        self.device = torch.device("cpu")
        self.config = type("Config", (), {"_name_or_path": "scripted-lm"})()
        self.prompts: list[str] = []

    def generate(self, input_ids: torch.Tensor, **_: Any) -> torch.Tensor:
        self.prompts.append(self.tokenizer.decode(input_ids[0]))
        reply = self.replies.pop(0)
        new = self.tokenizer(reply, return_tensors="pt", add_special_tokens=False)["input_ids"]
        return torch.cat([input_ids, new], dim=1)


def good_reply() -> str:
    return json.dumps(
        {
            "rejected": "There are three green apples on the table.",
            "edits": [
                {"kind": "count", "original": "two", "injected": "three"},
                {"kind": "attribute", "original": "red", "injected": "green"},
            ],
        }
    )


def test_a_valid_generation_becomes_a_verified_hallucination() -> None:
    tokenizer = char_tokenizer()
    model = ScriptedModel(tokenizer, [good_reply()])
    hallucinator = TransformersHallucinator(model, tokenizer=tokenizer)
    result = hallucinator.hallucinate(EXAMPLE)
    assert isinstance(result, Hallucination)
    assert result.rejected == "There are three green apples on the table."
    assert [(e.kind, result.rejected[e.start : e.end]) for e in result.edits] == [
        ("count", "three"),
        ("attribute", "green"),
    ]
    assert "<answer>" in model.prompts[0]
    assert hallucinator.cost.spent == 0.0
    assert hallucinator.params()["provider"] == "transformers"


def test_a_bad_generation_is_retried_with_the_reason() -> None:
    tokenizer = char_tokenizer()
    model = ScriptedModel(tokenizer, ["I'm sorry, I can't do that.", good_reply()])
    hallucinator = TransformersHallucinator(model, tokenizer=tokenizer, max_attempts=2)
    assert hallucinator.hallucinate(EXAMPLE).rejected.startswith("There are three")
    assert "I'm sorry" in model.prompts[1]  # the previous reply and why it failed go back


def tiny_llama() -> LlamaForCausalLM:
    """A random one-layer Llama over the character vocabulary, built from a config."""
    config = LlamaConfig(
        vocab_size=len(CHARS),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=4096,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


def test_a_tiny_random_model_gives_an_error_not_a_pair() -> None:
    tokenizer = char_tokenizer()
    model = tiny_llama()
    hallucinator = TransformersHallucinator(
        model, tokenizer=tokenizer, max_new_tokens=8, max_attempts=2
    )
    with pytest.raises(HallucinationError, match="no reply passed verification in 2 attempts"):
        hallucinator.hallucinate(EXAMPLE)
    assert hallucinator.usage.output_tokens > 0


def test_bad_arguments() -> None:
    tokenizer = char_tokenizer()
    model = ScriptedModel(tokenizer, [])
    with pytest.raises(ValueError, match="text-only"):
        TransformersHallucinator(model, tokenizer=tokenizer, send_image=True)
    with pytest.raises(ValueError, match="tokenizer"):
        TransformersHallucinator(model)
