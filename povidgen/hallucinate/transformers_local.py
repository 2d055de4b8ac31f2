"""A local chat model through transformers, for users with no API.

Rows are generated in batches: the prompts of the rows in flight (up to ``batch_size``, and at
most ``concurrency`` of a build or of :meth:`~povidgen.Hallucinator.hallucinate_many`) are
left-padded to one width and go through one ``model.generate`` call. With left padding, every
row's last prompt token sits in the last column, so the new tokens of all rows are appended in
step; the attention mask hides the padding and the model derives each row's position ids from
it (``cumsum(mask) - 1``), so a row's greedy continuation is the one it gets alone.

With `xgrammar <https://github.com/mlc-ai/xgrammar>`_ installed (the ``local`` extra), decoding
is constrained to the reply's JSON schema (:class:`~povidgen.hallucinate.prompts.RewriteReply`,
its edit kinds narrowed to the prompt's and its edits to ``1..max_edits``): at each step a
logits processor masks every token that would leave the schema, so even a small model returns
JSON that parses. Whether its content passes verification is checked as for any provider.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import importlib.util
import json
import logging
import os
import threading
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from povidgen.hallucinate.llm import LLMHallucinator, Reply
from povidgen.hallucinate.pricing import ModelPrice, Usage
from povidgen.hallucinate.prompts import PromptConfig, RewriteReply

__all__ = ["TransformersHallucinator", "reply_schema"]

logger = logging.getLogger("povidgen")

_EXTRA_HINT = "pip install 'povidgen[local]' (or pip install xgrammar)"


def reply_schema(prompt: PromptConfig) -> dict[str, Any]:
    """The JSON schema constrained decoding follows: :class:`RewriteReply`'s, with the edit
    kinds narrowed to ``prompt.kinds`` and the edit list to ``1..prompt.max_edits`` items (the
    verifier's bounds), so the grammar cannot produce what verification would reject for its
    shape."""
    schema = copy.deepcopy(RewriteReply.model_json_schema())
    schema["$defs"]["EditKind"]["enum"] = [kind.value for kind in prompt.kinds]
    edits = schema["properties"]["edits"]
    edits["minItems"] = 1
    edits["maxItems"] = prompt.max_edits
    return schema


class TransformersHallucinator(LLMHallucinator):
    """Rewrites answers with a local causal language model (text only), in batches.

    The prompt, the verification of every reply and the retries with the reason fed back are
    those of the API providers; generation is greedy and costs nothing. The rows in flight are
    generated together, up to ``batch_size`` in one ``generate`` call run in a worker thread
    (one call at a time, so the event loop stays free); a row that comes back for a retry joins
    a later batch. Greedy outputs are those of one-at-a-time generation (left padding with the
    attention mask; see the module docstring). A row whose prompt does not fit the model's
    context fails alone, and if a batched call raises, its rows are generated one at a time so
    that only the row at fault gets the error.

    Args:
        model: a ``transformers`` causal LM object, or a local path to load one from (no
            download is attempted: ``local_files_only=True``).
        tokenizer: its tokenizer; loaded from ``model`` when that is a path. Without a chat
            template, a plain ``System: / User: / Assistant:`` layout is used.
        max_new_tokens: the generation limit (also the reply's token limit).
        batch_size: the most rows in one ``generate`` call. A batch holds at most the rows in
            flight, so give ``concurrency`` (``--concurrency``) at least this much.
        constrained: constrain decoding to the reply's JSON schema (:func:`reply_schema`) with
            xgrammar. ``None`` (the default): when xgrammar is installed; ``True`` without it
            raises ``ImportError`` naming the ``local`` extra.
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
        batch_size: int = 8,
        constrained: bool | None = None,
        **options: Any,
    ) -> None:
        if options.get("send_image"):
            raise ValueError("TransformersHallucinator runs text-only models; send_image=False")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        installed = _xgrammar_installed()
        if constrained and not installed:
            raise ImportError(f"constrained=True needs xgrammar: {_EXTRA_HINT}")
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
        self.batch_size = batch_size
        self.constrained = installed if constrained is None else constrained
        """Whether decoding is constrained to :func:`reply_schema`."""
        if constrained is None and not installed:
            logger.info(
                "xgrammar is not installed: local replies are not constrained to the JSON "
                "schema (%s)",
                _EXTRA_HINT,
            )
        self._lock = threading.Lock()
        self._grammar: Any | None = None  # compiled on first use, under the lock
        self._batcher: _Batcher | None = None
        self._batcher_loop: asyncio.AbstractEventLoop | None = None

    def params(self) -> dict[str, Any]:
        return {
            **super().params(),
            "max_new_tokens": self.max_output_tokens,
            "constrained": self.constrained,
        }

    def _request_params(self) -> dict[str, Any]:
        # constrained replies are other replies; unconstrained keys stay as they were
        return {"constrained": True} if self.constrained else {}

    async def _complete(self, system: str, user: str, image_url: str | None) -> Reply:
        loop = asyncio.get_running_loop()
        if self._batcher is None or self._batcher_loop is not loop:
            self._batcher = _Batcher(self._generate_batch, self.batch_size)
            self._batcher_loop = loop
        return await self._batcher.submit(self._prompt(system, user))

    # -- generation (worker thread) ----------------------------------------------------------

    def _prompt(self, system: str, user: str) -> str:
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        if getattr(self.tokenizer, "chat_template", None):
            prompt = self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=False
            )
            return str(prompt)
        return f"System: {system}\n\nUser: {user}\n\nAssistant:"

    def _encode(self, prompt: str) -> list[int]:
        ids = [int(i) for i in self.tokenizer(prompt, add_special_tokens=False)["input_ids"]]
        limit = getattr(getattr(self.lm, "config", None), "max_position_embeddings", None)
        if isinstance(limit, int) and len(ids) >= limit:
            raise ValueError(f"the prompt has {len(ids)} tokens; the model's context holds {limit}")
        return ids

    def _generate_batch(self, prompts: Sequence[str]) -> list[Reply | Exception]:
        """One reply or exception per prompt, in order; a failure stays with its row."""
        results: list[Reply | Exception | None] = [None] * len(prompts)
        rows: list[tuple[int, list[int]]] = []
        for index, prompt in enumerate(prompts):
            try:
                rows.append((index, self._encode(prompt)))
            except Exception as error:  # noqa: BLE001 - recorded for its row only
                results[index] = error
        if rows:
            replies: list[Reply | Exception]
            try:
                replies = list(self._generate([ids for _, ids in rows]))
            except Exception as error:  # noqa: BLE001 - split up below to find the row at fault
                if len(rows) == 1:
                    replies = [error]
                else:
                    logger.warning(
                        "%s: a batch of %d rows failed (%s: %s); generating them one at a time",
                        type(self).__name__,
                        len(rows),
                        type(error).__name__,
                        error,
                    )
                    replies = [self._generate_alone(ids) for _, ids in rows]
            for (index, _), reply in zip(rows, replies, strict=True):
                results[index] = reply
        return [result if result is not None else RuntimeError("no reply") for result in results]

    def _generate_alone(self, ids: list[int]) -> Reply | Exception:
        try:
            return self._generate([ids])[0]
        except Exception as error:  # noqa: BLE001 - this row's error
            return error

    def _generate(self, rows: Sequence[list[int]]) -> list[Reply]:
        """One ``generate`` call over ``rows`` (token ids), left-padded to one width ``W``:
        ``input_ids`` and ``attention_mask`` are ``(B, W)``, the mask 0 on the padding; the
        output is ``(B, W + T)``, each row's new tokens ending at its first stop token
        (padding after it, for rows that stopped before the longest)."""
        import torch

        pad = self._pad_id()
        stops = self._stop_ids()
        width = max(len(ids) for ids in rows)
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for row, ids in enumerate(rows):
            if ids:
                input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
                attention_mask[row, width - len(ids) :] = 1
        device = getattr(self.lm, "device", "cpu")
        with self._lock, torch.no_grad():
            extra: dict[str, Any] = {}
            if self.constrained:
                extra["logits_processor"] = self._logits_processors()
            if stops:
                extra["eos_token_id"] = sorted(stops)
            output = self.lm.generate(
                input_ids.to(device),
                attention_mask=attention_mask.to(device),
                max_new_tokens=self.max_output_tokens,
                do_sample=False,
                pad_token_id=pad,
                **extra,
            )
        if output.shape[0] != len(rows) or output.shape[1] < width:
            raise RuntimeError(
                f"generate returned shape {tuple(output.shape)} for {len(rows)} rows of width "
                f"{width}"
            )
        replies = []
        for row, tokens in enumerate(output[:, width:].tolist()):
            length = next((k + 1 for k, t in enumerate(tokens) if t in stops), len(tokens))
            text = self.tokenizer.decode(tokens[:length], skip_special_tokens=True)
            usage = Usage(input_tokens=len(rows[row]), output_tokens=length)
            replies.append(Reply(text, usage))
        return replies

    def _pad_id(self) -> int:
        for candidate in (self.tokenizer.pad_token_id, self.tokenizer.eos_token_id):
            if isinstance(candidate, int):
                return candidate
        return 0

    def _stop_ids(self) -> set[int]:
        """The tokens that end a reply: the generation config's and the tokenizer's EOS."""
        stops: set[int] = set()
        config = getattr(self.lm, "generation_config", None)
        for value in (getattr(config, "eos_token_id", None), self.tokenizer.eos_token_id):
            if isinstance(value, int):
                stops.add(value)
            elif isinstance(value, list | tuple):
                stops.update(v for v in value if isinstance(v, int))
        return stops

    def _vocab_size(self) -> int:
        """The width of the model's logits (may exceed the tokenizer's vocabulary)."""
        embeddings = getattr(self.lm, "get_output_embeddings", lambda: None)()
        weight = getattr(embeddings, "weight", None)
        if weight is not None:
            return int(weight.shape[0])
        size = getattr(getattr(self.lm, "config", None), "vocab_size", None)
        return size if isinstance(size, int) else len(self.tokenizer)

    def _logits_processors(self) -> Any:
        """A fresh xgrammar logits processor (it keeps per-row state: one per call)."""
        from transformers import LogitsProcessorList

        xgr = _import_xgrammar()
        if self._grammar is None:
            from transformers import PreTrainedTokenizerFast

            size = self._vocab_size()
            stops = sorted(self._stop_ids()) or None
            info = xgr.TokenizerInfo.from_huggingface(
                self.tokenizer, vocab_size=size, stop_token_ids=stops
            )
            if isinstance(self.tokenizer, PreTrainedTokenizerFast):
                # Special tokens read as literal text ("<|im_start|>") to the grammar, which
                # would let a string contain one; blank them (empty tokens are never allowed).
                # The vocabulary is read as from_huggingface reads a fast tokenizer's.
                special = set(self.tokenizer.all_special_ids)
                encoded = [""] * size
                for token, index in self.tokenizer.get_vocab().items():
                    if index < size and index not in special:
                        encoded[index] = token
                info = xgr.TokenizerInfo(
                    encoded,
                    info.vocab_type,
                    vocab_size=size,
                    stop_token_ids=stops,
                    add_prefix_space=info.add_prefix_space,
                )
            self._grammar = xgr.GrammarCompiler(info).compile_json_schema(
                json.dumps(reply_schema(self.prompt)), any_whitespace=False
            )
        return LogitsProcessorList([_schema_processor_class()(xgr, self._grammar)])


@functools.cache
def _schema_processor_class() -> type[Any]:
    """:class:`transformers.LogitsProcessor` for a compiled grammar, defined on first use so
    that importing this module imports neither transformers nor torch."""
    import torch
    from transformers import LogitsProcessor

    class SchemaLogitsProcessor(LogitsProcessor):
        """Masks, at each step of one ``generate`` call, the tokens that would leave the
        grammar: one matcher per row, fed the row's previous token (the last column of
        ``input_ids``, which left padding keeps aligned), and a ``(B, ceil(V / 32))`` int32
        bitmask applied to the ``(B, V)`` scores (disallowed tokens set to ``-inf``).
        Single use: it keeps the rows' state."""

        def __init__(self, xgr: Any, grammar: Any) -> None:
            self.xgr = xgr
            self.grammar = grammar
            self.matchers: list[Any] = []
            self.bitmask: Any = None

        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            rows, vocab = scores.shape
            if not self.matchers:
                self.matchers = [self.xgr.GrammarMatcher(self.grammar) for _ in range(rows)]
                self.bitmask = self.xgr.allocate_token_bitmask(rows, vocab)
            else:
                for row, matcher in enumerate(self.matchers):
                    # a row that reached its stop token only receives padding from now on
                    if not matcher.is_terminated():
                        token = int(input_ids[row, -1])
                        if not matcher.accept_token(token):
                            raise RuntimeError(f"token {token} left the reply's JSON schema")
            for row, matcher in enumerate(self.matchers):
                if not matcher.is_terminated():
                    matcher.fill_next_token_bitmask(self.bitmask, row)
            if scores.device.type == "cuda":
                self.xgr.apply_token_bitmask_inplace(scores, self.bitmask.to(scores.device))
                return scores
            masked = scores.to("cpu")  # the CPU kernel; other devices go through it too
            self.xgr.apply_token_bitmask_inplace(masked, self.bitmask)
            return masked.to(scores.device)

    return SchemaLogitsProcessor


class _Batcher:
    """Collects the prompts of the rows in flight on one event loop and runs them through
    ``run`` (in a worker thread) up to ``size`` at a time.

    A worker task takes the waiting prompts once no more arrive (the rows of a
    ``hallucinate_many`` or a build reach the model within a few turns of the loop) or the
    batch is full; prompts that arrive while a batch is generating wait for the next one.
    """

    def __init__(self, run: Callable[[list[str]], list[Reply | Exception]], size: int) -> None:
        self._run = run
        self._size = size
        self._waiting: list[tuple[str, asyncio.Future[Reply]]] = []
        self._worker: asyncio.Task[None] | None = None

    async def submit(self, prompt: str) -> Reply:
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._waiting.append((prompt, future))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._work())
        return await future

    async def _work(self) -> None:
        try:
            while self._waiting:
                await self._next_batch()
        except asyncio.CancelledError:
            for _, future in self._waiting:  # the loop is closing: nothing more will run
                future.cancel()
            self._waiting.clear()
            raise

    async def _next_batch(self) -> None:
        quiet = 0
        while len(self._waiting) < self._size and quiet < 2:
            before = len(self._waiting)
            await asyncio.sleep(0)
            quiet = quiet + 1 if len(self._waiting) == before else 0
        batch = [item for item in self._waiting[: self._size] if not item[1].done()]
        del self._waiting[: self._size]
        if not batch:
            return  # every row of it was cancelled
        try:
            results = await asyncio.to_thread(self._run, [prompt for prompt, _ in batch])
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        except Exception as error:  # noqa: BLE001 - run keeps errors per row; this is a bug
            results = [error] * len(batch)
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():
                continue  # its row was cancelled while the batch ran
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)


def _xgrammar_installed() -> bool:
    try:
        return importlib.util.find_spec("xgrammar") is not None
    except (ImportError, ValueError):
        return False


def _import_xgrammar() -> Any:
    try:
        import xgrammar
    except ImportError as error:
        raise ImportError(f"constrained decoding needs xgrammar: {_EXTRA_HINT}") from error
    return xgrammar


def _model_name(model: Any) -> str:
    config = getattr(model, "config", None)
    return str(getattr(config, "_name_or_path", "") or type(model).__name__)
