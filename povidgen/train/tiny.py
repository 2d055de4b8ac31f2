"""Tiny random vision-language models with matching processors, built offline from configs.

Tests, examples and benchmarks need a real ``transformers`` VLM with its real processor (chat
template, image-token expansion, pixel layout) but cannot download checkpoints. The factories
here build both from scratch, deterministically and without touching the network:

* :func:`tiny_vlm` returns ``(model, processor)`` for one of :data:`TINY_FAMILIES`: the
  family's own ``*ForConditionalGeneration`` class with a 2-layer, 64-wide text model and a
  2-layer, 32-wide vision tower (about 0.3M parameters in all, fp32), and the family's own
  processor class around its own image processor (the PIL backend, which needs no
  torchvision) configured for tiny inputs;
* :func:`tiny_image` draws a deterministic RGB picture of any size;
* :func:`save_tiny_vlm` writes model and processor to a folder that
  ``AutoModelForImageTextToText.from_pretrained`` and ``AutoProcessor.from_pretrained`` load
  offline.

==============  ========================================  =====================================
family          model / processor                         image tokens for a 40x32 image
==============  ========================================  =====================================
``llava``       LLaVA-1.5: CLIP 32x32 crop, 8x8 patches   16 (4x4 patches, CLS dropped)
``llava_next``  LLaVA-NeXT: 16x16 tiles, anyres <= 32x32  24 (4 base + 16 + 4 row ends)
``qwen2_vl``    Qwen2-VL: 4x4 patches merged 2x2          20 (32x40 pixels), at most 36
``qwen2_5_vl``  Qwen2.5-VL: same, window attention        20, at most 36
``idefics3``    Idefics3 (SmolVLM-like): 32x32 tiles      20 ``<image>`` (2x2 tiles + global,
                pixel-shuffled 2x, 64-pixel longest edge  4 each) plus 14 tile markers
==============  ========================================  =====================================

The tokenizer is a byte-level BPE (GPT-2 style) over the 256 byte symbols plus whole-word merges
for a few hundred common English words, wrapped in ``PreTrainedTokenizerFast``: any string
tokenizes (unknown words fall back to smaller pieces, down to single bytes; there is no unknown
token) and decoding gives the text back exactly. Each family adds the special tokens its
processor and chat template use, and its bos / eos / pad (LLaVA's tokenizers put ``<s>`` in front
of every text, as Llama's do); the model's ``vocab_size`` equals ``len(processor.tokenizer)``
and its generation config carries the same eos / pad.

The chat templates follow each family's real format (LLaVA-1.5's ``USER: <image>\n...
ASSISTANT: ...</s>``, LLaVA-NeXT-Mistral's ``[INST] <image>\n... [/INST] ...</s>``, Qwen's
``<|im_start|>`` turns with ``<|vision_start|><|image_pad|><|vision_end|>``, SmolVLM's
``<|im_start|>User:<image>...<end_of_utterance>\nAssistant: ...``), accept string or
typed-content messages (``{"type": "image"}`` / ``{"type": "text", "text": ...}``), honour
``add_generation_prompt`` and mark assistant turns with ``{% generation %}`` (so
``return_assistant_tokens_mask`` works). The prompt rendered with ``add_generation_prompt=True``
is always a string prefix of the prompt rendered together with the assistant answer, which
TRL's preference collators rely on.

Transformers builds a Qwen processor only with a video processor, and video processors need
torchvision. Without torchvision the Qwen processors here have no video processor (images and
text work as usual) and :func:`save_tiny_vlm` cannot make them loadable by ``AutoProcessor``.

This module needs ``transformers`` (and ``tokenizers``); ``povidgen.train`` does not import it.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from PIL import Image
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    Idefics3ImageProcessorPil,
    Idefics3Processor,
    Idefics3VisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextImageProcessorPil,
    LlavaNextProcessor,
    LlavaProcessor,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    ProcessorMixin,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessorPil,
    Qwen2VLProcessor,
)
from transformers.utils.import_utils import is_torchvision_available

__all__ = ["TINY_FAMILIES", "save_tiny_vlm", "tiny_image", "tiny_vlm"]

TINY_FAMILIES: tuple[str, ...] = ("llava", "llava_next", "qwen2_vl", "qwen2_5_vl", "idefics3")
"""The model families :func:`tiny_vlm` can build."""

# -- sizes ------------------------------------------------------------------------------------

_TEXT_HIDDEN = 64
_TEXT_HEADS = 4
_TEXT_CONFIG: dict[str, Any] = {
    "hidden_size": _TEXT_HIDDEN,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": _TEXT_HEADS,
    "num_key_value_heads": 2,
    "max_position_embeddings": 4096,
    "tie_word_embeddings": False,
}
_VISION_HIDDEN = 32
_VISION_LAYERS = 2
_VISION_HEADS = 4
_VISION_MLP = 64

# -- tokenizer --------------------------------------------------------------------------------

# Whole-word merges: these words, with and without a leading space, are single tokens (the few
# words of the chat templates always; the others after a space, and mostly elsewhere). Anything
# else splits into known word prefixes and single bytes.
_TEMPLATE_WORDS = (
    "system",
    "user",
    "assistant",
    "User",
    "Assistant",
    "USER",
    "ASSISTANT",
    "INST",
    "You",
)
_WORDS_TEXT = """
a about above across after again against all also an and animal animals another any are around
as at away back background ball be before behind below beside between big bird black blue boat
body book bottom box boy brown building but by can car cat chair child children city clear close
cloud clouds color colors computer could cup day describe description detail details different
do does dog door down each eating empty field five floor flower flowers food for four from front
game girl glass grass gray green ground group hair hand has have he her here his holding horse
house how i image in indoor inside is it its kitchen large left light like little long looking
man many men more most near next night no not of off on one only open or orange other out
outdoor outside over people person photo picture pink plate player playing purple red right road
room scene see shirt shown side sign single sitting sky small snow some standing street sun
table tall than that the their there these they this three through to top tree trees truck two
under up very wall water wearing what where which white who window with woman women wooden
yellow yes you your helpful
A An Are Describe How Is It No The There This What Where Which Who Yes
"""
_WORDS: tuple[str, ...] = (*_TEMPLATE_WORDS, *_WORDS_TEXT.split())

_SPECIAL_TOKENS: dict[str, tuple[str, ...]] = {
    "llava": ("<s>", "</s>", "<pad>", "<image>"),
    "llava_next": ("<s>", "</s>", "<pad>", "<image>"),
    "qwen2_vl": (
        "<|endoftext|>",
        "<|im_start|>",
        "<|im_end|>",
        "<|vision_start|>",
        "<|vision_end|>",
        "<|image_pad|>",
        "<|video_pad|>",
    ),
    "idefics3": (
        "<|endoftext|>",
        "<|im_start|>",
        "<|im_end|>",
        "<end_of_utterance>",
        "<fake_token_around_image>",
        "<image>",
        "<global-img>",
        *(f"<row_{row}_col_{col}>" for row in range(1, 7) for col in range(1, 7)),
    ),
}
_SPECIAL_TOKENS["qwen2_5_vl"] = _SPECIAL_TOKENS["qwen2_vl"]

# bos / eos / pad, as in each family's real checkpoints (pad made distinct from eos).
_ROLE_TOKENS: dict[str, tuple[str | None, str, str]] = {
    "llava": ("<s>", "</s>", "<pad>"),
    "llava_next": ("<s>", "</s>", "<pad>"),
    "qwen2_vl": (None, "<|im_end|>", "<|endoftext|>"),
    "qwen2_5_vl": (None, "<|im_end|>", "<|endoftext|>"),
    "idefics3": ("<|im_start|>", "<end_of_utterance>", "<|endoftext|>"),
}

# Llama-style tokenizers put BOS in front of every encoded text; Qwen and SmolVLM do not.
_ADDS_BOS = {"llava", "llava_next"}


@functools.cache
def _byte_symbols() -> tuple[str, ...]:
    """GPT-2's byte-to-unicode table: the printable symbol standing for each byte value."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    symbols: dict[int, str] = {byte: chr(byte) for byte in printable}
    extra = 0
    for byte in range(256):
        if byte not in symbols:
            symbols[byte] = chr(256 + extra)
            extra += 1
    return tuple(symbols[byte] for byte in range(256))


@functools.cache
def _bpe_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Byte symbols, then left-to-right merge chains spelling each word of ``_WORDS``.

    BPE applies the lowest-ranked applicable merge first. The space-prefixed chains come first,
    so inside a pre-tokenized ``" word"`` every merge extends the piece that starts at the space
    and a listed word always ends up whole. Bare words (at the start of a text, after a newline
    or a special token) can lose to another chain's merge inside them; the template words come
    first among those, so they always end up whole.
    """
    table = _byte_symbols()
    vocab = {symbol: index for index, symbol in enumerate(table)}
    merges: list[tuple[str, str]] = []
    for prefix in (" ", ""):
        for word in _WORDS:
            spelled = "".join(table[byte] for byte in (prefix + word).encode())
            for end in range(1, len(spelled)):
                merged = spelled[: end + 1]
                if merged not in vocab:
                    vocab[merged] = len(vocab)
                    merges.append((spelled[:end], spelled[end]))
    return vocab, merges


def _tokenizer(family: str) -> PreTrainedTokenizerFast:
    """The byte-level BPE tokenizer of ``family``, with its special tokens."""
    vocab, merges = _bpe_vocab_and_merges()
    backend = Tokenizer(models.BPE(vocab=dict(vocab), merges=list(merges)))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    specials = _SPECIAL_TOKENS[family]
    backend.add_special_tokens(list(specials))
    bos, eos, pad = _ROLE_TOKENS[family]
    if family in _ADDS_BOS:
        assert bos is not None
        bos_id = backend.token_to_id(bos)
        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)]
        )
    named = {"bos_token": bos, "eos_token": eos, "pad_token": pad}
    extra: dict[str, str] = {}
    if family in ("llava", "llava_next"):
        extra = {"image_token": "<image>"}
    elif family in ("qwen2_vl", "qwen2_5_vl"):
        extra = {
            "image_token": "<|image_pad|>",
            "video_token": "<|video_pad|>",
            "vision_bos_token": "<|vision_start|>",
            "vision_eos_token": "<|vision_end|>",
        }
    tokenizer_class: Any = PreTrainedTokenizerFast  # untyped __init__
    tokenizer: PreTrainedTokenizerFast = tokenizer_class(
        tokenizer_object=backend,
        model_max_length=4096,
        padding_side="right",
        extra_special_tokens=extra,
        **{key: value for key, value in named.items() if value is not None},
    )
    return tokenizer


# -- chat templates ---------------------------------------------------------------------------

# Each template is written with ``{%- ... -%}`` everywhere, so that the layout below (newlines,
# indentation) never reaches the output: all text comes from ``{{ ... }}``. ``@PARTS@`` makes
# ``parts``, the message's content as typed parts, whether it came as a string, as None (a
# tool-call turn) or typed already (``[{"type": "image"}, {"type": "text", "text": ...}]``);
# ``@TEXT@`` writes the text parts of ``parts``.
_PARTS = """
    {%- if message['content'] is string -%}
        {%- set parts = [{'type': 'text', 'text': message['content']}] -%}
    {%- elif message['content'] is none -%}
        {%- set parts = [] -%}
    {%- else -%}
        {%- set parts = message['content'] -%}
    {%- endif -%}
"""
_TEXT_PARTS = "{%- for part in parts if part['type'] == 'text' -%}{{ part['text'] }}{%- endfor -%}"

# LLaVA-1.5 (Vicuna v1): "USER: <image>\n{text} ASSISTANT: {answer}</s>USER: ...".
_LLAVA_TEMPLATE = """
{%- for message in messages -%}
    @PARTS@
    {%- if message['role'] == 'system' -%}
        @TEXT@{{ ' ' }}
    {%- elif message['role'] == 'user' -%}
        {{ 'USER: ' }}
        {%- for part in parts if part['type'] == 'image' -%}{{ '<image>\n' }}{%- endfor -%}
        @TEXT@{{ ' ' }}
    {%- else -%}
        {{ 'ASSISTANT:' }}
        {%- generation -%}{{ ' ' }}@TEXT@{{ '</s>' }}{%- endgeneration -%}
    {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{ 'ASSISTANT:' }}{%- endif -%}
"""

# LLaVA-NeXT (Mistral): "[INST] <image>\n{text} [/INST] {answer}</s>[INST] ...". As in the
# real template, the prompt needs no generation prompt: it ends with " [/INST]" either way.
_LLAVA_NEXT_TEMPLATE = """
{%- for message in messages -%}
    @PARTS@
    {%- if message['role'] == 'system' -%}
        @TEXT@{{ '\n\n' }}
    {%- elif message['role'] == 'user' -%}
        {{ '[INST] ' }}
        {%- for part in parts if part['type'] == 'image' -%}{{ '<image>\n' }}{%- endfor -%}
        @TEXT@{{ ' [/INST]' }}
    {%- else -%}
        {%- generation -%}{{ ' ' }}@TEXT@{{ '</s>' }}{%- endgeneration -%}
    {%- endif -%}
{%- endfor -%}
"""

# Qwen2-VL / Qwen2.5-VL: ChatML with a default system turn; each image is
# "<|vision_start|><|image_pad|><|vision_end|>" in place.
_QWEN_TEMPLATE = """
{%- for message in messages -%}
    @PARTS@
    {%- if loop.first and message['role'] != 'system' -%}
        {{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}
    {%- endif -%}
    {{ '<|im_start|>' + message['role'] + '\n' }}
    {%- if message['role'] == 'assistant' -%}
        {%- generation -%}@TEXT@{{ '<|im_end|>' }}{%- endgeneration -%}{{ '\n' }}
    {%- else -%}
        {%- for part in parts -%}
            {%- if part['type'] == 'image' -%}
                {{ '<|vision_start|><|image_pad|><|vision_end|>' }}
            {%- elif part['type'] == 'text' -%}
                {{ part['text'] }}
            {%- endif -%}
        {%- endfor -%}
        {{ '<|im_end|>\n' }}
    {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}
"""

# SmolVLM / Idefics3: "<|im_start|>User:<image>{text}<end_of_utterance>\nAssistant: {answer}
# <end_of_utterance>\n" (no space after the colon when the turn starts with an image).
_IDEFICS3_TEMPLATE = """
{{- '<|im_start|>' -}}
{%- for message in messages -%}
    @PARTS@
    {%- if message['role'] == 'assistant' -%}
        {{ 'Assistant:' }}
        {%- generation -%}{{ ' ' }}@TEXT@{{ '<end_of_utterance>' }}{%- endgeneration -%}
        {{ '\n' }}
    {%- else -%}
        {{ message['role'] | capitalize }}
        {%- if parts and parts[0]['type'] == 'image' -%}{{ ':' }}{%- else -%}{{ ': ' }}{%- endif -%}
        {%- for part in parts -%}
            {%- if part['type'] == 'image' -%}
                {{ '<image>' }}
            {%- elif part['type'] == 'text' -%}
                {{ part['text'] }}
            {%- endif -%}
        {%- endfor -%}
        {{ '<end_of_utterance>\n' }}
    {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{ 'Assistant:' }}{%- endif -%}
"""


def _template(source: str) -> str:
    """``source`` with the shared pieces filled in."""
    return source.replace("@PARTS@", _PARTS.strip()).replace("@TEXT@", _TEXT_PARTS).strip()


_TEMPLATES = {
    "llava": _template(_LLAVA_TEMPLATE),
    "llava_next": _template(_LLAVA_NEXT_TEMPLATE),
    "qwen2_vl": _template(_QWEN_TEMPLATE),
    "qwen2_5_vl": _template(_QWEN_TEMPLATE),
    "idefics3": _template(_IDEFICS3_TEMPLATE),
}

# -- processors and configs -------------------------------------------------------------------

_CLIP_SIZE = 32  # LLaVA: 32x32 crop, 8x8 patches -> 16 image tokens (CLS dropped)
_NEXT_TILE = 16  # LLaVA-NeXT: 16x16 tiles, 8x8 patches -> 4 tokens per tile, anyres up to 32x32
_NEXT_PINPOINTS = [[16, 16], [16, 32], [32, 16], [32, 32]]
_PATCH = 8
_QWEN_PATCH = 4  # Qwen: 4x4 patches merged 2x2, images resized to at most 48x48 pixels
_QWEN_MERGE = 2
_QWEN_PIXELS = (8 * 8, 48 * 48)
_IDEFICS_TILE = 32  # Idefics3: 32x32 tiles of 8x8 patches, pixel-shuffled 2x -> 4 tokens a tile
_IDEFICS_LONGEST = 64  # ... images resized to a 64-pixel longest edge, so at most 2x2 tiles
_IDEFICS_SCALE = 2


def _qwen_processor(
    cls: type[ProcessorMixin], image_processor: Any, tokenizer: Any, template: str
) -> ProcessorMixin:
    """A Qwen processor; with a tiny video processor where torchvision is installed.

    Transformers' video processors need torchvision, and ``ProcessorMixin.__init__`` insists on
    one for Qwen (checking its class crashes without torchvision). Without torchvision the
    processor is built with ``video_processor=None`` by skipping that one check on this one
    instance: images and text work as usual, videos do not, and ``AutoProcessor`` cannot load
    it back (it would need torchvision for any real Qwen checkpoint too).
    """
    kwargs: dict[str, Any] = {
        "image_processor": image_processor,
        "tokenizer": tokenizer,
        "chat_template": template,
    }
    if is_torchvision_available():
        from transformers import Qwen2VLVideoProcessor

        kwargs["video_processor"] = Qwen2VLVideoProcessor(
            size={"shortest_edge": _QWEN_PIXELS[0], "longest_edge": _QWEN_PIXELS[1]},
            patch_size=_QWEN_PATCH,
            merge_size=_QWEN_MERGE,
            temporal_patch_size=2,
        )
        return cls(**kwargs)
    processor: Any = cls.__new__(cls)
    check = processor.check_argument_for_proper_class

    def check_unless_absent_video(name: str, argument: Any) -> Any:
        return None if name == "video_processor" and argument is None else check(name, argument)

    processor.check_argument_for_proper_class = check_unless_absent_video
    try:
        processor.__init__(video_processor=None, **kwargs)
    finally:
        del processor.check_argument_for_proper_class
    result: ProcessorMixin = processor
    return result


def _processor(family: str) -> ProcessorMixin:
    """The real processor class of ``family`` around the tiny tokenizer and image processor."""
    tokenizer = _tokenizer(family)
    template = _TEMPLATES[family]
    processor: ProcessorMixin
    if family == "llava":
        image_processor: Any = CLIPImageProcessorPil(
            size={"shortest_edge": _CLIP_SIZE},
            crop_size={"height": _CLIP_SIZE, "width": _CLIP_SIZE},
        )
        processor = cast(Any, LlavaProcessor)(
            image_processor=image_processor,
            tokenizer=tokenizer,
            patch_size=_PATCH,
            vision_feature_select_strategy="default",
            num_additional_image_tokens=1,
            chat_template=template,
        )
    elif family == "llava_next":
        image_processor = LlavaNextImageProcessorPil(
            size={"shortest_edge": _NEXT_TILE},
            crop_size={"height": _NEXT_TILE, "width": _NEXT_TILE},
            image_grid_pinpoints=_NEXT_PINPOINTS,
        )
        processor = cast(Any, LlavaNextProcessor)(
            image_processor=image_processor,
            tokenizer=tokenizer,
            patch_size=_PATCH,
            vision_feature_select_strategy="default",
            num_additional_image_tokens=1,
            chat_template=template,
        )
    elif family in ("qwen2_vl", "qwen2_5_vl"):
        image_processor = Qwen2VLImageProcessorPil(
            size={"shortest_edge": _QWEN_PIXELS[0], "longest_edge": _QWEN_PIXELS[1]},
            patch_size=_QWEN_PATCH,
            merge_size=_QWEN_MERGE,
            temporal_patch_size=2,
        )
        cls = Qwen2VLProcessor if family == "qwen2_vl" else Qwen2_5_VLProcessor
        processor = _qwen_processor(cls, image_processor, tokenizer, template)
    elif family == "idefics3":
        image_processor = Idefics3ImageProcessorPil(
            size={"longest_edge": _IDEFICS_LONGEST},
            max_image_size={"longest_edge": _IDEFICS_TILE},
            do_image_splitting=True,
        )
        processor = Idefics3Processor(
            image_processor=image_processor,
            tokenizer=tokenizer,
            image_seq_len=(_IDEFICS_TILE // _PATCH) ** 2 // _IDEFICS_SCALE**2,
            chat_template=template,
        )
    else:
        raise ValueError(f"unknown family {family!r}; expected one of {TINY_FAMILIES}")
    return processor


def _token_id(tokenizer: Any, token: str) -> int:
    """The id of a token the tokenizer must know."""
    index = tokenizer.convert_tokens_to_ids(token)
    if not isinstance(index, int) or index == tokenizer.unk_token_id:
        raise RuntimeError(f"tokenizer lacks {token!r}")
    return index


def _config(family: str, tokenizer: Any) -> Any:
    """The model config of ``family`` sized for the tiny vocabulary and tiny images."""
    ids = {
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    if family in ("llava", "llava_next"):
        tile = _CLIP_SIZE if family == "llava" else _NEXT_TILE
        vision = CLIPVisionConfig(
            hidden_size=_VISION_HIDDEN,
            intermediate_size=_VISION_MLP,
            num_hidden_layers=_VISION_LAYERS,
            num_attention_heads=_VISION_HEADS,
            image_size=tile,
            patch_size=_PATCH,
            projection_dim=_VISION_HIDDEN,
        )
        text = LlamaConfig(**_TEXT_CONFIG, **ids)
        common: dict[str, Any] = {
            "vision_config": vision,
            "text_config": text,
            "image_token_index": _token_id(tokenizer, "<image>"),
            "vision_feature_select_strategy": "default",
            "vision_feature_layer": -2,
            "image_seq_length": (tile // _PATCH) ** 2,
            "tie_word_embeddings": False,
        }
        if family == "llava":
            return LlavaConfig(**common)
        return LlavaNextConfig(image_grid_pinpoints=_NEXT_PINPOINTS, **common)
    if family in ("qwen2_vl", "qwen2_5_vl"):
        head_dim = _TEXT_HIDDEN // _TEXT_HEADS
        half = head_dim // 2
        section = [half - 2 * (half // 3), half // 3, half // 3]  # [t, h, w], sums to half
        text_config: dict[str, Any] = {
            **_TEXT_CONFIG,
            **ids,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 1_000_000.0,
                "mrope_section": section,
            },
        }
        vision_common = {
            "depth": _VISION_LAYERS,
            "num_heads": _VISION_HEADS,
            "patch_size": _QWEN_PATCH,
            "spatial_merge_size": _QWEN_MERGE,
            "temporal_patch_size": 2,
        }
        token_ids: dict[str, Any] = {
            "image_token_id": _token_id(tokenizer, "<|image_pad|>"),
            "video_token_id": _token_id(tokenizer, "<|video_pad|>"),
            "vision_start_token_id": _token_id(tokenizer, "<|vision_start|>"),
            "vision_end_token_id": _token_id(tokenizer, "<|vision_end|>"),
        }
        if family == "qwen2_vl":
            vision_config: dict[str, Any] = {
                **vision_common,
                "embed_dim": _VISION_HIDDEN,
                "hidden_size": _TEXT_HIDDEN,
                "mlp_ratio": _VISION_MLP // _VISION_HIDDEN,
            }
            return Qwen2VLConfig(
                text_config=text_config,
                vision_config=vision_config,
                tie_word_embeddings=False,
                **token_ids,
            )
        vision_config = {
            **vision_common,
            "hidden_size": _VISION_HIDDEN,
            "intermediate_size": _VISION_MLP,
            "out_hidden_size": _TEXT_HIDDEN,
            # windows of 2x2 merged patches; the last block attends over the whole image
            "window_size": 2 * _QWEN_MERGE * _QWEN_PATCH,
            "fullatt_block_indexes": [_VISION_LAYERS - 1],
        }
        return Qwen2_5_VLConfig(
            text_config=text_config,
            vision_config=vision_config,
            tie_word_embeddings=False,
            **token_ids,
        )
    if family == "idefics3":
        return Idefics3Config(
            vision_config=Idefics3VisionConfig(
                hidden_size=_VISION_HIDDEN,
                intermediate_size=_VISION_MLP,
                num_hidden_layers=_VISION_LAYERS,
                num_attention_heads=_VISION_HEADS,
                image_size=_IDEFICS_TILE,
                patch_size=_PATCH,
            ),
            text_config=LlamaConfig(**_TEXT_CONFIG, **ids),
            image_token_id=_token_id(tokenizer, "<image>"),
            scale_factor=_IDEFICS_SCALE,
            tie_word_embeddings=False,
            **{key: value for key, value in ids.items() if key != "vocab_size"},
        )
    raise ValueError(f"unknown family {family!r}; expected one of {TINY_FAMILIES}")


_MODEL_CLASSES: dict[str, Any] = {
    "llava": LlavaForConditionalGeneration,
    "llava_next": LlavaNextForConditionalGeneration,
    "qwen2_vl": Qwen2VLForConditionalGeneration,
    "qwen2_5_vl": Qwen2_5_VLForConditionalGeneration,
    "idefics3": Idefics3ForConditionalGeneration,
}


# -- public API -------------------------------------------------------------------------------


def tiny_vlm(
    family: str, *, seed: int = 0, attn_implementation: str = "sdpa"
) -> tuple[PreTrainedModel, ProcessorMixin]:
    """A tiny randomly initialised VLM of ``family`` and its matching processor, built offline.

    ``family`` is one of :data:`TINY_FAMILIES`. The weights are fp32 and depend on ``seed``
    alone (the global torch RNG is left as it was). ``attn_implementation`` goes to the model
    as is: ``"sdpa"`` and ``"eager"`` work for every family (Qwen has no flex attention, and
    flex attention has no backward on CPU). The processor is the family's own class with its
    own chat template; feed it ``images=[[image], ...]`` and ``text=[...]`` as usual and pass
    its output to the model.
    """
    if family not in TINY_FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {TINY_FAMILIES}")
    processor = _processor(family)
    config = _config(family, processor.tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model: PreTrainedModel = _MODEL_CLASSES[family]._from_config(
            config, attn_implementation=attn_implementation, dtype=torch.float32
        )
    # As a checkpoint's generation_config.json would: generate() stops at EOS and pads with PAD.
    tokenizer = processor.tokenizer
    generation: Any = model.generation_config
    generation.bos_token_id = tokenizer.bos_token_id
    generation.eos_token_id = tokenizer.eos_token_id
    generation.pad_token_id = tokenizer.pad_token_id
    return model, processor


def tiny_image(seed: int = 0, size: tuple[int, int] = (40, 32)) -> Image.Image:
    """A deterministic RGB picture of ``size`` (width, height): smooth colour bands plus noise.

    Different seeds give clearly different images; the same seed always gives the same pixels.
    """
    width, height = size
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    channels = []
    for _ in range(3):
        fx, fy, phase = rng.uniform(0.05, 0.5), rng.uniform(0.05, 0.5), rng.uniform(0, 2 * np.pi)
        channels.append(127.5 + 100.0 * np.sin(fx * xs + fy * ys + phase))
    pixels = np.stack(channels, axis=-1) + rng.normal(0.0, 12.0, (height, width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))  # (H, W, 3) uint8: RGB


def save_tiny_vlm(family: str, path: str | Path, *, seed: int = 0) -> Path:
    """Build :func:`tiny_vlm` ``(family, seed=seed)`` and save model and processor to ``path``.

    The folder loads offline with ``AutoModelForImageTextToText.from_pretrained(path)`` and
    ``AutoProcessor.from_pretrained(path)``. Returns ``path`` as a :class:`~pathlib.Path`.

    Qwen processors need torchvision to load (transformers builds their video processor
    whatever the input): without it, the folder holds the model, tokenizer, image processor
    and chat template, which ``AutoModelForImageTextToText``, ``AutoTokenizer`` and
    ``AutoImageProcessor`` load, but ``AutoProcessor`` cannot; use :func:`tiny_vlm` for the
    processor there.
    """
    target = Path(path)
    model, processor = tiny_vlm(family, seed=seed)
    model.save_pretrained(target)
    present: Any = processor
    if getattr(present, "video_processor", ...) is None:
        # A Qwen processor built without torchvision (see _qwen_processor): save what it has.
        attributes = [name for name in present.get_attributes() if name != "video_processor"]
        present.get_attributes = lambda: attributes
        try:
            present.save_pretrained(target)
        finally:
            del present.get_attributes
    else:
        processor.save_pretrained(target)
    return target
