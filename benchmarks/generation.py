"""Rows per second of LLM hallucination against a fake API with latency and a rate limit, side
by side in one run against the same server:

* the whole ``povidgen build`` command (a subprocess: reading rows, decoding images, the
  calls, the default diffusion distorter, writing the dataset; ``--concurrency 64``);
* a bare asyncio loop over the same SDK sending the same requests (text and image) with 64 in
  flight: the ceiling a build's orchestration can approach;
* ``OpenAIHallucinator.hallucinate_many`` alone;
* a sequential one-call-at-a-time client (what the POVID, BPO and HA-DPO scripts do).

Run:  python benchmarks/generation.py [--rows 2000] [--latency 0.3] [--rate 100]

The fake OpenAI server (tests/fakes/llm_server.py) answers after ``--latency`` seconds and accepts
``--rate`` requests per second (a sliding one-second window; more get a 429 with retry-after). It
runs in a child process, so that its own work does not share this process's interpreter lock
with the client being measured.
povidgen runs OpenAIHallucinator with 64 requests in flight and a client-side limit just under
the server's; the baseline sends one request at a time through the same SDK and prompt.

Local models:  python benchmarks/generation.py --local [--local-rows 16] [--local-batch 8]
measures TransformersHallucinator on a random Llama built from a config (no download) with a
word-level tokenizer trained here: rows/s generating ``--local-batch`` rows per ``generate``
call against one row at a time, free and constrained to the reply's JSON schema, on the CPU and,
when there is one, on the GPU; it checks that each row's greedy reply is the same both ways.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import openai
from PIL import Image

from povidgen import Example, OpenAIHallucinator
from povidgen.hallucinate.llm import _data_url
from povidgen.hallucinate.openai_api import _messages
from povidgen.hallucinate.prompts import PromptConfig, RewriteReply, build_messages

_T = TypeVar("_T")


def examples(count: int) -> list[Example]:
    image = Image.new("RGB", (64, 48), (180, 40, 40))
    return [
        Example(
            id=f"r{i}",
            image=image,
            prompt="Describe the image.",
            answer=f"There are {i % 9 + 2} red apples on the left of a blue cup number {i}.",
        )
        for i in range(count)
    ]


async def sequential(server: ServerProcess, rows: list[Example]) -> float:
    client = openai.AsyncOpenAI(api_key="sk-bench", base_url=server.openai_base_url)
    start = time.perf_counter()
    for example in rows:
        system, user = build_messages(example, PromptConfig())
        await client.chat.completions.parse(
            model="gpt-4o-mini",
            messages=[{"role": "system", "content": system}, {"role": "user", "content": user}],
            response_format=RewriteReply,
        )
    elapsed = time.perf_counter() - start
    await client.close()
    return len(rows) / elapsed


async def bare_loop(server: ServerProcess, rows: list[Example], rate: float) -> float:
    """The same requests as a build sends, 64 in flight, paced just under the limit."""
    client = openai.AsyncOpenAI(api_key="sk-bench", base_url=server.openai_base_url, max_retries=6)
    slots = asyncio.Semaphore(64)
    interval = 1.0 / (rate * 0.95)
    next_slot = time.monotonic()

    async def one(example: Example) -> None:
        nonlocal next_slot
        async with slots:
            now = time.monotonic()
            slot, next_slot = max(now, next_slot), max(now, next_slot) + interval
            await asyncio.sleep(slot - now)
            system, user = build_messages(example, PromptConfig())
            image_url = _data_url(example.image, 1024)
            await client.chat.completions.parse(
                model="gpt-4o-mini",
                messages=_messages(system, user, image_url),  # type: ignore[arg-type]
                response_format=RewriteReply,
            )

    start = time.perf_counter()
    await asyncio.gather(*(one(example) for example in rows))
    elapsed = time.perf_counter() - start
    await client.close()
    return len(rows) / elapsed


def build_rate(
    server: ServerProcess, count: int, rate: float, extra: tuple[str, ...] = ()
) -> tuple[float, float, str]:
    """``povidgen build`` end to end, in a subprocess, on ``count`` rows with one image each:
    rows/s over the whole process (Python start-up and imports included) and over the build
    itself (``summary.json``'s seconds: from the first row read to the last shard written)."""
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        examples(1)[0].image.save(root / "image.png")
        with (root / "rows.jsonl").open("w") as handle:
            for example in examples(count):
                row = {"id": example.id, "image": "image.png"}
                row.update(prompt=example.prompt, answer=example.answer)
                handle.write(json.dumps(row) + "\n")
        command = [sys.executable, "-m", "povidgen.cli", "build"]
        command += ["--dataset", str(root / "rows.jsonl"), "--id-column", "id"]
        command += ["--provider", "openai", "--base-url", server.openai_base_url]
        command += ["--concurrency", "64", "--rpm", str(rate * 60 * 0.95), "--no-cache"]
        command += ["--out", str(root / "out"), *extra]
        start = time.perf_counter()
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            env={**os.environ, "OPENAI_API_KEY": "sk-bench"},
            check=False,
        )
        elapsed = time.perf_counter() - start
        try:
            seconds = json.loads((root / "out" / "summary.json").read_text())["seconds"]
        except (OSError, ValueError, KeyError):
            seconds = float("nan")
    summary = " ".join(line.strip() for line in done.stdout.splitlines()[:3])
    return count / elapsed, count / seconds, f"exit {done.returncode}; {summary}"


def povidgen_rate(server: ServerProcess, rows: list[Example], rate: float) -> tuple[float, int]:
    hallucinator = OpenAIHallucinator(
        base_url=server.openai_base_url,
        api_key="sk-bench",
        send_image=False,
        requests_per_minute=rate * 60 * 0.95,
    )
    start = time.perf_counter()
    results = hallucinator.hallucinate_many(rows, concurrency=64)
    elapsed = time.perf_counter() - start
    failures = sum(isinstance(result, Exception) for result in results)
    return len(rows) / elapsed, failures


_SERVER = """
import sys
from tests.fakes.llm_server import FakeLLMServer
server = FakeLLMServer(latency={latency}, rate_limit_rpm={rate}, rate_limit_window=1.0).start()
print(server.openai_base_url, flush=True)
sys.stdin.read()  # serve until the parent closes our stdin
print(sum(1 for r in server.requests if r.fault == "rpm"), flush=True)
server.stop()
"""


class ServerProcess:
    """The fake server in a child process; ``openai_base_url`` as FakeLLMServer has it."""

    def __init__(self, latency: float, rate: int) -> None:
        root = Path(__file__).resolve().parent.parent
        self.process = subprocess.Popen(
            [sys.executable, "-c", _SERVER.format(latency=latency, rate=rate)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=root,
            env={**os.environ, "PYTHONPATH": str(root)},
        )
        assert self.process.stdout is not None
        self.openai_base_url = self.process.stdout.readline().strip()

    def close(self) -> int:
        """Stop the server; return how many requests its rate limiter turned away."""
        output, _ = self.process.communicate("", timeout=30)
        return int(output.strip() or 0)


def main() -> None:
    if "--local" in sys.argv[1:]:
        local_main(sys.argv[1:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--sequential-rows", type=int, default=20)
    parser.add_argument("--latency", type=float, default=0.3)
    parser.add_argument("--rate", type=float, default=100.0, help="server limit, requests/s")
    args = parser.parse_args()
    # each contender gets its own server, so that its 429s are its own and no limiter window
    # carries over from the one before
    throttled: dict[str, int] = {}

    def against_server(name: str, measure: Callable[[ServerProcess], _T]) -> _T:
        server = ServerProcess(args.latency, int(args.rate))
        try:
            return measure(server)
        finally:
            throttled[name] = server.close()

    rows = args.rows
    base = against_server(
        "sequential", lambda s: asyncio.run(sequential(s, examples(args.sequential_rows)))
    )
    ours, failures = against_server(
        "hallucinate_many", lambda s: povidgen_rate(s, examples(rows), args.rate)
    )
    loop = against_server(
        "bare loop", lambda s: asyncio.run(bare_loop(s, examples(rows), args.rate))
    )
    whole, build, build_summary = against_server("build", lambda s: build_rate(s, rows, args.rate))
    # the same without distortion: the orchestration alone, when the CPU is not the limit
    _, plain, _ = against_server(
        "build --distorter none",
        lambda s: build_rate(s, rows, args.rate, ("--distorter", "none")),
    )
    print(f"fake server: {args.latency * 1000:.0f} ms latency, {args.rate:.0f} requests/s limit")
    print(f"sequential client:       {base:8.2f} rows/s ({args.sequential_rows} rows)")
    print(f"hallucinate_many:        {ours:8.2f} rows/s ({args.rows} rows, {failures} failed)")
    print(f"bare asyncio loop (64):  {loop:8.2f} rows/s ({args.rows} rows)")
    print(f"povidgen build (CLI):    {build:8.2f} rows/s ({args.rows} rows; {build_summary})")
    print(f"  the whole process:     {whole:8.2f} rows/s (start-up and imports included)")
    print(f"  --distorter none:      {plain:8.2f} rows/s (no image work: the calls alone)")
    print(f"build / rate limit: {build / args.rate:.2f}  (target >= 0.90)")
    print(f"build / bare loop:  {build / loop:.2f}x  (target >= 0.95)")
    print(f"build without distortion / bare loop: {plain / loop:.2f}x")
    print(f"hallucinate_many / sequential: {ours / base:.1f}x")
    print("429s from the server's limiter: " + ", ".join(f"{k} {v}" for k, v in throttled.items()))


# -- local models (--local): TransformersHallucinator batched vs one row at a time ----------


def local_tokenizer(texts: list[str]) -> Any:
    """A word-level tokenizer over ``texts`` plus every printable character (so any reply,
    and any JSON, can be written), decoding back to the exact text; about as many tokens per
    prompt as a real BPE tokenizer gives."""
    import string

    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    split = pre_tokenizers.Split(Regex(r"\w+|[\s\S]"), behavior="isolated")
    words = {word for text in texts for word, _ in split.pre_tokenize_str(text)}
    vocabulary = ["<pad>", "<eos>", "<unk>", *string.printable]
    vocabulary += sorted(words - set(vocabulary))
    tokenizer = Tokenizer(
        models.WordLevel({token: i for i, token in enumerate(vocabulary)}, unk_token="<unk>")
    )
    tokenizer.pre_tokenizer = split
    tokenizer.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tokenizer, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
    )


def local_model(vocabulary: int, hidden: int, layers: int, device: str) -> Any:
    """A random Llama from a config: ``hidden`` wide (heads of 64), ``layers`` deep, one
    key/value head (grouped-query attention, as small chat models have), fp32 on ``device``.

    Its weights outweigh one row's key/value cache, as a real model's do, so that a decoding
    step is bound by reading the weights, which a batch reads once for all its rows; with a
    model much smaller than its cache nothing would be shared."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocabulary,
        hidden_size=hidden,
        intermediate_size=hidden * 3,
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 64),
        num_key_value_heads=1,
        max_position_embeddings=8192,
        eos_token_id=1,
        bos_token_id=None,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    # A random model says <eos> (id 1) at random, so its rows would end anywhere between 1 and
    # the limit, and a batch waits for its longest row; real replies are of similar lengths.
    # So <eos> is made unlikely: free rows run to the limit, constrained ones end when their
    # JSON is complete (then <eos> is the only token the schema allows).
    bias = torch.zeros(vocabulary)
    bias[1] = -100.0
    model.lm_head.bias = torch.nn.Parameter(bias)
    return model.eval().to(device)  # type: ignore[no-untyped-call]


def local_rate(
    model: Any,
    tokenizer: Any,
    rows: list[Example],
    *,
    batch_size: int,
    new_tokens: int,
    constrained: bool,
) -> tuple[float, float, dict[str, str], float]:
    """Rows per second of ``hallucinate_many`` with ``batch_size`` rows per generate call (and
    as many in flight), over the wall clock and over this process's CPU time; each row's
    reply text (keyed by row id); and the mean new tokens per row."""
    from povidgen.hallucinate.transformers_local import TransformersHallucinator

    replies: dict[str, str] = {}

    class Recording(TransformersHallucinator):
        async def _complete(self, system: str, user: str, image_url: str | None) -> Any:
            reply = await super()._complete(system, user, image_url)
            replies[user] = reply.text
            return reply

    hallucinator = Recording(
        model,
        tokenizer=tokenizer,
        max_new_tokens=new_tokens,
        batch_size=batch_size,
        constrained=constrained,
        max_attempts=1,
        cache=False,
    )
    users = {build_messages(row, PromptConfig())[1]: row.id for row in rows}
    start, cpu = time.perf_counter(), time.process_time()
    hallucinator.hallucinate_many(rows, concurrency=batch_size)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    texts = {users[user]: text for user, text in replies.items()}
    tokens = hallucinator.usage.output_tokens / len(rows)
    return len(rows) / elapsed, len(rows) / cpu, texts, tokens


def local_main(argv: list[str]) -> None:
    """The ``--local`` section: parse its flags, run :func:`local_report` on one thread (by
    default) with the povidgen logger quiet, and put both back afterwards."""
    import logging

    import torch

    parser = argparse.ArgumentParser(description="TransformersHallucinator: batched vs one by one")
    parser.add_argument("--local", action="store_true", required=True)
    parser.add_argument("--local-rows", type=int, default=16)
    parser.add_argument("--local-batch", type=int, default=8)
    parser.add_argument("--local-new-tokens", type=int, default=128)
    parser.add_argument("--local-hidden", type=int, default=512)
    parser.add_argument("--local-layers", type=int, default=4)
    parser.add_argument("--local-repeats", type=int, default=3, help="the best run counts")
    parser.add_argument(
        "--local-threads", type=int, default=1, help="torch CPU threads (one: per core)"
    )
    args = parser.parse_args(argv)
    logger, threads = logging.getLogger("povidgen"), torch.get_num_threads()
    level = logger.level
    logger.setLevel(logging.ERROR)  # every random reply fails verification: keep quiet
    torch.set_num_threads(args.local_threads)
    try:
        local_report(args)
    finally:
        logger.setLevel(level)
        torch.set_num_threads(threads)


def local_report(args: argparse.Namespace) -> None:
    """Print rows/s one row at a time and ``--local-batch`` rows per call, on each device and
    with and without constrained decoding, and how many replies were the same both ways."""
    import importlib.util

    import torch

    rows = examples(args.local_rows)
    system, _ = build_messages(rows[0], PromptConfig())
    texts = [system, *(build_messages(row, PromptConfig())[1] for row in rows)]
    tokenizer = local_tokenizer(texts)
    prompt_tokens = len(tokenizer(system + texts[1])["input_ids"])
    modes = [False] + ([True] if importlib.util.find_spec("xgrammar") is not None else [])
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(
        f"TransformersHallucinator, random Llama ({args.local_layers} layers, hidden "
        f"{args.local_hidden}, vocabulary {len(tokenizer)}), {args.local_rows} rows, "
        f"~{prompt_tokens} prompt tokens, at most {args.local_new_tokens} new tokens, greedy; "
        f"rows/s: the best of {args.local_repeats} runs"
    )
    for device in devices:
        model = local_model(len(tokenizer), args.local_hidden, args.local_layers, device)
        name = (
            torch.cuda.get_device_name()
            if device == "cuda"
            else f"{device}, {torch.get_num_threads()} threads"
        )
        for constrained in modes:
            label = "constrained" if constrained else "free"
            settings = {"new_tokens": args.local_new_tokens, "constrained": constrained}
            local_rate(model, tokenizer, rows[:2], batch_size=2, **settings)  # warm up
            # the best of a few runs, taken in turns: a shared machine's noise only slows down
            alone = batched = (0.0, 0.0)
            for _ in range(args.local_repeats):
                *rates, alone_texts, tokens = local_rate(
                    model, tokenizer, rows, batch_size=1, **settings
                )
                alone = (max(alone[0], rates[0]), max(alone[1], rates[1]))
                *rates, batched_texts, _ = local_rate(
                    model, tokenizer, rows, batch_size=args.local_batch, **settings
                )
                batched = (max(batched[0], rates[0]), max(batched[1], rates[1]))
            same = sum(alone_texts[row.id] == batched_texts.get(row.id) for row in rows)
            print(f"{name}, {label} ({tokens:.0f} new tokens per row on average):")
            print("                         rows/s (wall)  rows per CPU-second")
            print(f"  one row at a time:      {alone[0]:8.2f}  {alone[1]:8.2f}")
            print(
                f"  {args.local_batch:2d} rows per generate:  {batched[0]:8.2f}  {batched[1]:8.2f}"
            )
            print(
                f"  speed-up: {batched[0] / alone[0]:.2f}x (wall), "
                f"{batched[1] / alone[1]:.2f}x (CPU); same reply both ways: {same}/{len(rows)}"
            )


if __name__ == "__main__":
    main()
