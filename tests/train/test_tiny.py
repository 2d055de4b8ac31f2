"""The tiny offline VLM factories: templates, processors and models fit, for every family."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("transformers")

from transformers.utils.import_utils import is_torchvision_available

from povidgen.train.tiny import TINY_FAMILIES, save_tiny_vlm, tiny_image, tiny_vlm

QWEN = ("qwen2_vl", "qwen2_5_vl")
# <image> / <|image_pad|> tokens for tiny_image() (40x32), as the module docstring says
IMAGE_TOKENS = {"llava": 16, "llava_next": 24, "qwen2_vl": 20, "qwen2_5_vl": 20, "idefics3": 20}
QUESTION = "What is in the picture? Describe it, in 3 words!"
ANSWER = "A red Dog; two cats."


def user(text: str, images: int = 1) -> dict[str, Any]:
    """A TRL-style typed user turn with ``images`` image placeholders before the text."""
    return {
        "role": "user",
        "content": [*({"type": "image"} for _ in range(images)), {"type": "text", "text": text}],
    }


def assistant(text: str) -> dict[str, Any]:
    """A TRL-style typed assistant turn."""
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def image_token_id(model: Any) -> int:
    """The id the model replaces with image features."""
    config = model.config
    index = getattr(config, "image_token_id", None)
    if index is None:
        index = config.image_token_index
    return int(index)


@pytest.fixture(scope="module", params=TINY_FAMILIES)
def built(request: pytest.FixtureRequest) -> tuple[str, Any, Any]:
    """``(family, model, processor)``, built once per family for this module."""
    family: str = request.param
    model, processor = tiny_vlm(family)
    return family, model, processor


def prompts(processor: Any) -> tuple[str, str]:
    """The chat-templated prompt (with generation prompt) and prompt + answer."""
    prompt = [user(QUESTION)]
    answer = [assistant(ANSWER)]
    rendered = processor.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    full = processor.apply_chat_template(prompt + answer, tokenize=False)
    return rendered, full


def test_families() -> None:
    assert TINY_FAMILIES == ("llava", "llava_next", "qwen2_vl", "qwen2_5_vl", "idefics3")
    with pytest.raises(ValueError, match="unknown family"):
        tiny_vlm("gpt2")


def test_model_is_tiny_and_matches_tokenizer(built: tuple[str, Any, Any]) -> None:
    _family, model, processor = built
    assert sum(p.numel() for p in model.parameters()) < 2_000_000
    assert all(p.dtype == torch.float32 for p in model.parameters())
    tokenizer = processor.tokenizer
    assert model.config.get_text_config().vocab_size == len(tokenizer)
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer)
    assert tokenizer.pad_token_id is not None
    assert tokenizer.eos_token_id is not None
    assert tokenizer.pad_token_id != tokenizer.eos_token_id


def test_tokenizer_takes_any_text(built: tuple[str, Any, Any]) -> None:
    tokenizer = built[2].tokenizer
    text = (
        "The QUICK brown fox (née Zoë) jumped 42 times over 3.5m... right?! #tag @you ~ {x}\n\tok"
    )
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids) == text  # byte-level BPE: exact round trip
    # the words of the fixed vocabulary are one token each after a space
    assert len(tokenizer(" the dog is on the table", add_special_tokens=False)["input_ids"]) == 6


def test_bos_as_in_the_real_tokenizers(built: tuple[str, Any, Any]) -> None:
    family, _model, processor = built
    tokenizer = processor.tokenizer
    ids = tokenizer("the dog")["input_ids"]
    if family in ("llava", "llava_next"):  # Llama-style: BOS in front of every text
        assert ids[0] == tokenizer.bos_token_id
        assert tokenizer("the dog", add_special_tokens=False)["input_ids"] == ids[1:]
    else:
        assert ids == tokenizer("the dog", add_special_tokens=False)["input_ids"]


def test_image_token_counts(built: tuple[str, Any, Any]) -> None:
    family, model, processor = built
    prompt, _full = prompts(processor)
    ids = processor(images=[[tiny_image()]], text=[prompt], return_tensors="pt")["input_ids"]
    assert int((ids == image_token_id(model)).sum()) == IMAGE_TOKENS[family]


def test_chat_template_prompt_is_prefix(built: tuple[str, Any, Any]) -> None:
    _family, _model, processor = built
    prompt, full = prompts(processor)
    assert full.startswith(prompt)
    assert "3 words!" in prompt
    assert full[len(prompt) :].strip().startswith(ANSWER)
    # plain string content renders like a single text part
    plain = processor.apply_chat_template(
        [{"role": "user", "content": "hello"}], add_generation_prompt=True, tokenize=False
    )
    typed = processor.apply_chat_template(
        [user("hello", images=0)], add_generation_prompt=True, tokenize=False
    )
    assert plain == typed


def test_forward_backward(built: tuple[str, Any, Any]) -> None:
    family, model, processor = built
    prompt, full = prompts(processor)
    images = [[tiny_image(0)], [tiny_image(1, size=(48, 24))]]
    inputs = processor(images=images, text=[prompt, full], padding=True, return_tensors="pt")
    batch, length = inputs["input_ids"].shape
    assert batch == 2
    n_image_tokens = (inputs["input_ids"] == image_token_id(model)).sum(-1)
    assert (n_image_tokens > 0).all()
    assert (n_image_tokens <= 40).all(), n_image_tokens

    model.zero_grad()
    logits = model(**inputs).logits
    assert logits.shape == (2, length, len(processor.tokenizer))
    assert torch.isfinite(logits).all()
    logits.logsumexp(-1).mean().backward()
    grads = [p.grad for p in model.get_input_embeddings().parameters()]
    assert all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)
    vision_grads = [
        p.grad for name, p in model.named_parameters() if "visual" in name or "vision" in name
    ]
    assert any(g is not None and g.abs().sum() > 0 for g in vision_grads), family
    model.zero_grad()


def test_sdpa_matches_eager(built: tuple[str, Any, Any]) -> None:
    family, model, processor = built
    eager, _ = tiny_vlm(family, attn_implementation="eager")
    prompt, full = prompts(processor)
    images = [[tiny_image(4)], [tiny_image(5, size=(24, 40))]]
    inputs = processor(images=images, text=[prompt, full], padding=True, return_tensors="pt")
    real = inputs["attention_mask"].bool()  # padded positions may differ
    with torch.no_grad():
        expected = model(**inputs).logits[real]
        assert torch.allclose(eager(**inputs).logits[real], expected, atol=1e-5)


def test_assistant_tokens_mask(built: tuple[str, Any, Any]) -> None:
    processor = built[2]
    conversation = [user("hello there", images=0), assistant("the dog")]
    conversation += [user("and?", images=0), assistant("a cat")]
    out = processor.apply_chat_template(
        conversation, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    ids, mask = out["input_ids"][0], out["assistant_masks"][0]
    answers = processor.tokenizer.decode([i for i, keep in zip(ids, mask, strict=True) if keep])
    eos = processor.tokenizer.eos_token
    assert answers.replace(" ", "") == f"thedog{eos}acat{eos}"


def test_generate(built: tuple[str, Any, Any]) -> None:
    _family, model, processor = built
    prompt, _full = prompts(processor)
    images = [[tiny_image(0)], [tiny_image(1, size=(48, 24))]]
    inputs = processor(
        images=images,
        text=[prompt, prompt + " the"],
        padding=True,
        padding_side="left",
        return_tensors="pt",
    )
    assert model.generation_config.eos_token_id == processor.tokenizer.eos_token_id
    assert model.generation_config.pad_token_id == processor.tokenizer.pad_token_id
    out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    length = inputs["input_ids"].shape[1]
    assert out.shape[0] == 2
    assert length < out.shape[1] <= length + 3


def test_deterministic_per_seed() -> None:
    state = torch.random.get_rng_state()
    first, _ = tiny_vlm("llava", seed=3)
    again, _ = tiny_vlm("llava", seed=3)
    other, _ = tiny_vlm("llava", seed=4)
    assert torch.equal(state, torch.random.get_rng_state())  # the caller's RNG is untouched
    a, b, c = (dict(m.named_parameters()) for m in (first, again, other))
    assert all(torch.equal(a[name], b[name]) for name in a)
    assert any(not torch.equal(a[name], c[name]) for name in a)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_deterministic_every_family(family: str) -> None:
    first, _ = tiny_vlm(family, seed=1)
    again, _ = tiny_vlm(family, seed=1)
    for (name, p), q in zip(first.named_parameters(), again.parameters(), strict=True):
        assert torch.equal(p, q), name


def test_tiny_image() -> None:
    image = tiny_image()
    assert image.mode == "RGB"
    assert image.size == (40, 32)
    assert tiny_image(5, (48, 24)).size == (48, 24)
    assert tiny_image(7).tobytes() == tiny_image(7).tobytes()
    assert tiny_image(7).tobytes() != tiny_image(8).tobytes()


def test_save_and_load_offline(
    built: tuple[str, Any, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    family, model, processor = built
    if family in QWEN and not is_torchvision_available():
        pytest.skip("transformers loads a Qwen processor only with torchvision (video processor)")
    from transformers import AutoModelForImageTextToText, AutoProcessor

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = save_tiny_vlm(family, tmp_path / family)
    loaded_model = AutoModelForImageTextToText.from_pretrained(path)
    loaded_processor = AutoProcessor.from_pretrained(path)
    assert type(loaded_model) is type(model)
    assert type(loaded_processor) is type(processor)

    prompt, full = prompts(processor)
    assert prompts(loaded_processor) == (prompt, full)
    images = [[tiny_image(2)], [tiny_image(3, size=(24, 48))]]
    inputs = processor(images=images, text=[prompt, full], padding=True, return_tensors="pt")
    reloaded = loaded_processor(
        images=images, text=[prompt, full], padding=True, return_tensors="pt"
    )
    assert torch.equal(inputs["input_ids"], reloaded["input_ids"])
    with torch.no_grad():
        expected = model(**inputs).logits
        assert torch.allclose(loaded_model(**inputs).logits, expected, atol=1e-5)


@pytest.mark.parametrize("family", QWEN)
def test_qwen_without_torchvision_saves_the_rest(
    family: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if is_torchvision_available():
        pytest.skip("torchvision is installed: the whole Qwen processor round-trips")
    from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, processor = tiny_vlm(family)
    path = save_tiny_vlm(family, tmp_path)
    assert type(AutoModelForImageTextToText.from_pretrained(path)) is type(model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert tokenizer.get_vocab() == processor.tokenizer.get_vocab()
    image_processor = AutoImageProcessor.from_pretrained(path)
    assert image_processor.patch_size == processor.image_processor.patch_size
    assert (path / "chat_template.jinja").read_text() == processor.chat_template


def test_trl_vision_preference_collator(built: tuple[str, Any, Any]) -> None:
    pytest.importorskip("trl")
    from trl.trainer.dpo_trainer import DataCollatorForVisionPreference

    _family, model, processor = built
    rows = [
        {
            "images": [tiny_image(seed)],
            "prompt": [user(question)],
            "chosen": [assistant(good)],
            "rejected": [assistant(bad)],
        }
        for seed, question, good, bad in [
            (0, "What color is the sky?", "The sky is blue.", "It is a green dog."),
            (1, "How many people are there?", "Two.", "There are five men near the table."),
        ]
    ]
    out = DataCollatorForVisionPreference(processor)(rows)
    assert out["input_ids"].shape[0] == 4  # chosen rows, then rejected rows
    assert out["completion_mask"].shape == out["input_ids"].shape
    completions = [
        processor.tokenizer.decode(ids[mask.bool()], skip_special_tokens=True).strip()
        for ids, mask in zip(out["input_ids"], out["completion_mask"], strict=True)
    ]
    assert completions == [
        "The sky is blue.",
        "Two.",
        "It is a green dog.",
        "There are five men near the table.",
    ]
    with torch.no_grad():
        logits = model(**{k: v for k, v in out.items() if k != "completion_mask"}).logits
    assert logits.shape[:2] == out["input_ids"].shape
    assert torch.isfinite(logits).all()
