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
from pathlib import Path

import openai
from PIL import Image

from povidgen import Example, OpenAIHallucinator
from povidgen.hallucinate.llm import _data_url
from povidgen.hallucinate.openai_api import _messages
from povidgen.hallucinate.prompts import PromptConfig, RewriteReply, build_messages


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
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--sequential-rows", type=int, default=20)
    parser.add_argument("--latency", type=float, default=0.3)
    parser.add_argument("--rate", type=float, default=100.0, help="server limit, requests/s")
    args = parser.parse_args()
    server = ServerProcess(args.latency, int(args.rate))
    try:
        base = asyncio.run(sequential(server, examples(args.sequential_rows)))
        ours, failures = povidgen_rate(server, examples(args.rows), args.rate)
        loop = asyncio.run(bare_loop(server, examples(args.rows), args.rate))
        whole, build, build_summary = build_rate(server, args.rows, args.rate)
        # the same without distortion: the orchestration alone, when the CPU is not the limit
        _, plain, _ = build_rate(server, args.rows, args.rate, ("--distorter", "none"))
    finally:
        throttled = server.close()
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
    print(f"429s from the server's limiter: {throttled}")


if __name__ == "__main__":
    main()
