"""Greedy generation with a local Hugging Face vision-language model, as a plain callable.

The metrics of :mod:`povidgen.eval` run any model given as a :data:`Generate` callable,
``generate(images, prompts) -> texts``: ``texts[i]`` is the model's answer to ``prompts[i]``
about ``images[i]``. :func:`hf_generate` makes one from a model folder as ``povidgen train``
reads and writes them: a whole model (``config.json``, weights, processor) or a LoRA adapter
folder (``adapter_config.json``, e.g. ``povidgen train``'s ``final/``) whose base model is a
local folder.

Each prompt becomes one user turn ``[image, text]`` under the model's chat template with the
generation prompt added; the answers are decoded greedily (``do_sample=False``) up to
``max_new_tokens`` tokens, ``batch_size`` prompts at a time with left padding, and only the
new tokens are returned, stripped.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from povidgen.errors import InputError

__all__ = ["Generate", "check_model_folder", "hf_generate"]

logger = logging.getLogger("povidgen")

Generate = Callable[[Sequence[Image.Image], Sequence[str]], list[str]]
"""``generate(images, prompts) -> texts``, one text per (image, prompt)."""

_LOAD_ERRORS = (OSError, ValueError, KeyError, TypeError, RuntimeError, ImportError)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def check_model_folder(path: Path) -> bool:
    """Whether ``path`` is an adapter folder (else a model folder); raises if it is neither."""
    if not path.exists():
        raise InputError(f"{path}: no such folder (give a local model folder)")
    if not path.is_dir():
        raise InputError(f"{path} is a file; give the model's folder")
    if (path / "config.json").is_file():
        return False
    if (path / "adapter_config.json").is_file():
        return True
    raise InputError(
        f"{path} is not a Hugging Face model folder: it has neither config.json nor "
        "adapter_config.json"
    )


def _load(path: Path, dtype: Any) -> tuple[Any, Any]:
    """The model and processor of a model or adapter folder (the adapter merged in)."""
    import transformers

    auto_model: Any = transformers.AutoModelForImageTextToText
    auto_processor: Any = transformers.AutoProcessor
    adapter = check_model_folder(path)
    base = path
    if adapter:
        try:
            config = json.loads((path / "adapter_config.json").read_text(encoding="utf-8"))
            base = Path(str(config["base_model_name_or_path"]))
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise InputError(
                f"{path}: cannot read adapter_config.json: {_one_line(error)}"
            ) from error
        if not base.is_dir():
            raise InputError(f"{path}: the adapter's base model {base} is not a local folder")
    try:
        model = auto_model.from_pretrained(str(base), dtype=dtype, local_files_only=True)
        if adapter:
            if importlib.util.find_spec("peft") is None:
                raise InputError(f"{path} is a LoRA adapter: loading it needs peft")
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(path)).merge_and_unload()
        try:
            processor = auto_processor.from_pretrained(str(path), local_files_only=True)
        except _LOAD_ERRORS:
            if not adapter:
                raise
            processor = auto_processor.from_pretrained(str(base), local_files_only=True)
    except InputError:
        raise
    except _LOAD_ERRORS as error:
        raise InputError(f"{path}: cannot load it: {_one_line(error)}") from error
    return model, processor


def hf_generate(
    model: str | os.PathLike[str],
    *,
    device: str | None = None,
    dtype: str = "auto",
    max_new_tokens: int = 128,
    batch_size: int = 8,
) -> Generate:
    """A :data:`Generate` callable that runs the VLM in the local folder ``model`` greedily.

    Nothing is downloaded (``local_files_only``). Needs transformers (and peft for an adapter
    folder): ``pip install 'povidgen[eval]'``.

    Args:
        model: a model folder, or a LoRA adapter folder whose base model is a local folder.
        device: ``"cuda"``, ``"cpu"``... (default: CUDA when available).
        dtype: ``"auto"`` (bfloat16 on CUDA, else float32), ``"float32"``, ``"bfloat16"`` or
            ``"float16"``.
        max_new_tokens: the longest answer, in tokens (at least 1).
        batch_size: prompts per ``generate`` call (at least 1).

    Raises:
        InputError: the folder is missing, is not a model or adapter folder, or cannot be
            loaded; or a setting is out of range.
        ImportError: transformers is not installed.
    """
    if max_new_tokens < 1:
        raise InputError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}")
    if dtype not in ("auto", "float32", "bfloat16", "float16"):
        raise InputError(f"unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16")
    if importlib.util.find_spec("transformers") is None:
        raise ImportError("hf_generate needs transformers: pip install 'povidgen[eval]'")
    import torch

    where = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dtype == "auto":
        dtype = "bfloat16" if where.type == "cuda" else "float32"
    torch_dtype = getattr(torch, dtype)
    net, processor = _load(Path(model), torch_dtype)
    net = net.to(where).eval()
    tokenizer = getattr(processor, "tokenizer", None)
    if tokenizer is not None:
        tokenizer.padding_side = "left"  # generation continues each row's last prompt token

    def turn(prompt: str) -> list[dict[str, Any]]:
        return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]

    def generate(images: Sequence[Image.Image], prompts: Sequence[str]) -> list[str]:
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        texts: list[str] = []
        for start in range(0, len(prompts), batch_size):
            chunk = range(start, min(start + batch_size, len(prompts)))
            chats = [
                processor.apply_chat_template(
                    turn(prompts[i]), tokenize=False, add_generation_prompt=True
                )
                for i in chunk
            ]
            inputs = processor(
                images=[[images[i].convert("RGB")] for i in chunk],
                text=chats,
                padding=True,
                add_special_tokens=False,  # the template already holds BOS
                return_tensors="pt",
            ).to(where, dtype=torch_dtype)  # casts only floating tensors (pixel values)
            with torch.inference_mode():
                out = net.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens)
            new = out[:, inputs["input_ids"].shape[1] :]
            texts.extend(t.strip() for t in processor.batch_decode(new, skip_special_tokens=True))
            logger.debug("generated %d of %d answers", len(texts), len(prompts))
        return texts

    return generate
