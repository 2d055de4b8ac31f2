"""A local chat model through transformers, for users with no API."""

from __future__ import annotations

import asyncio
import os
import threading
from typing import Any, ClassVar

from povidgen.hallucinate.llm import LLMHallucinator, Reply
from povidgen.hallucinate.pricing import ModelPrice, Usage

__all__ = ["TransformersHallucinator"]


class TransformersHallucinator(LLMHallucinator):
    """Rewrites answers with a local causal language model (text only).

    The prompt, the verification of every reply and the retries with the reason fed back are
    those of the API providers; generation is greedy, runs in a worker thread (one at a time,
    so the event loop stays free) and costs nothing.

    Args:
        model: a ``transformers`` causal LM object, or a local path to load one from (no
            download is attempted: ``local_files_only=True``).
        tokenizer: its tokenizer; loaded from ``model`` when that is a path. Without a chat
            template, a plain ``System: / User: / Assistant:`` layout is used.
        max_new_tokens: the generation limit (also the reply's token limit).
        **options: the shared settings of :class:`~povidgen.hallucinate.llm.LLMHallucinator`
            (``send_image`` must stay ``False``: text-only models do not see the image).
    """

    name: ClassVar[str] = "transformers"
    provider = "transformers"

    def __init__(
        self,
        model: Any,
        *,
        tokenizer: Any | None = None,
        max_new_tokens: int = 512,
        **options: Any,
    ) -> None:
        if options.get("send_image"):
            raise ValueError("TransformersHallucinator runs text-only models; send_image=False")
        model_name = model if isinstance(model, str | os.PathLike) else _model_name(model)
        options["send_image"] = False
        options["max_output_tokens"] = max_new_tokens
        options["prices"] = {str(model_name): ModelPrice(input_per_mtok=0.0, output_per_mtok=0.0)}
        super().__init__(str(model_name), **options)
        if isinstance(model, str | os.PathLike):
            from transformers import AutoModelForCausalLM, AutoTokenizer

            tokenizer = tokenizer or AutoTokenizer.from_pretrained(model, local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(model, local_files_only=True)
        if tokenizer is None:
            raise ValueError("pass tokenizer= with a model object")
        self.lm = model
        self.tokenizer = tokenizer
        self._lock = threading.Lock()

    def params(self) -> dict[str, Any]:
        return {**super().params(), "max_new_tokens": self.max_output_tokens}

    async def _complete(self, system: str, user: str, image_url: str | None) -> Reply:
        return await asyncio.to_thread(self._generate, system, user)

    def _generate(self, system: str, user: str) -> Reply:
        import torch

        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        if getattr(self.tokenizer, "chat_template", None):
            prompt = self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=False
            )
        else:
            prompt = f"System: {system}\n\nUser: {user}\n\nAssistant:"
        encoded = self.tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
        input_ids = encoded["input_ids"].to(self.lm.device)
        with self._lock, torch.no_grad():
            output = self.lm.generate(
                input_ids,
                attention_mask=torch.ones_like(input_ids),
                max_new_tokens=self.max_output_tokens,
                do_sample=False,
                pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id or 0,
            )
        new_tokens = output[0, input_ids.shape[1] :]
        text = self.tokenizer.decode(new_tokens, skip_special_tokens=True)
        usage = Usage(input_tokens=int(input_ids.shape[1]), output_tokens=int(new_tokens.numel()))
        return Reply(text, usage)


def _model_name(model: Any) -> str:
    config = getattr(model, "config", None)
    return str(getattr(config, "_name_or_path", "") or type(model).__name__)
