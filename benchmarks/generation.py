"""Rows per second of LLM hallucination against a fake API with latency and a rate limit:
povidgen against a sequential one-call-at-a-time client (what the POVID, BPO and HA-DPO scripts
do), side by side in one run.

Run:  python benchmarks/generation.py [--rows 600] [--latency 0.3] [--rate 80]

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
import os
import subprocess
import sys
import time
from pathlib import Path

import openai
from PIL import Image

from povidgen import Example, OpenAIHallucinator
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
    parser.add_argument("--rows", type=int, default=600)
    parser.add_argument("--sequential-rows", type=int, default=20)
    parser.add_argument("--latency", type=float, default=0.3)
    parser.add_argument("--rate", type=float, default=80.0, help="server limit, requests/s")
    args = parser.parse_args()
    server = ServerProcess(args.latency, int(args.rate))
    try:
        base = asyncio.run(sequential(server, examples(args.sequential_rows)))
        ours, failures = povidgen_rate(server, examples(args.rows), args.rate)
    finally:
        throttled = server.close()
    print(f"fake server: {args.latency * 1000:.0f} ms latency, {args.rate:.0f} requests/s limit")
    print(f"sequential client: {base:8.2f} rows/s ({args.sequential_rows} rows)")
    print(f"povidgen:          {ours:8.2f} rows/s ({args.rows} rows, {failures} failed)")
    print(f"povidgen / rate limit: {ours / args.rate:.2f}  (target >= 0.90)")
    print(f"povidgen / sequential: {ours / base:.1f}x  (target > 20x)")
    print(f"429s from the server's limiter: {throttled}")


if __name__ == "__main__":
    main()
