"""Issue 13, parts 2-4: prices from genai-prices (overrides, unknown prices), keys
(``--api-key-env``, none for a local server) and faults (full jitter, a client-wide pause
after a 429, a log line per retry, ``-v`` raising only the ``povidgen`` logger), through the
real SDKs and the fake server."""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import random
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from povidgen import cli
from povidgen.cli import main
from povidgen.hallucinate import policies
from povidgen.hallucinate.anthropic_api import AnthropicHallucinator
from povidgen.hallucinate.keys import LOCAL_PLACEHOLDER_KEY, is_local_url
from povidgen.hallucinate.openai_api import OpenAIHallucinator
from povidgen.hallucinate.pricing import ModelPrice, Usage, cost_usd, has_price, price_for
from povidgen.schema import Example
from tests.fakes.llm_server import FakeLLMServer, FaultKind, extract_answer

genai_prices = pytest.importorskip("genai_prices")

SECRET = "sk-custom-variable-key-9876"


@pytest.fixture(autouse=True)
def _no_provider_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL"):
        monkeypatch.delenv(name, raising=False)


def _build_command(server: FakeLLMServer, tmp_path: Path, *extra: str) -> list[str]:
    server.seen_api_keys.clear()
    return [
        "build",
        "--demo",
        "--demo-size",
        "3",
        "--distorter",
        "none",
        "--out",
        str(tmp_path / "out"),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--provider",
        "openai",
        "--base-url",
        server.openai_base_url,
        *extra,
    ]


# -- part 2: prices -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "provider"), [("gpt-4o-mini", "openai"), ("claude-haiku-4-5", "anthropic")]
)
@pytest.mark.parametrize("batch", [False, True])
def test_default_models_are_priced_as_genai_prices_says(
    model: str, provider: str, batch: bool
) -> None:
    usage = Usage(input_tokens=12_000, output_tokens=3_000, cached_input_tokens=2_000)
    expected = genai_prices.calc_price(
        genai_prices.Usage(input_tokens=12_000, output_tokens=3_000, cache_read_tokens=2_000),
        model,
        provider_id=provider,
        price_context={"processing": "batch"} if batch else None,
    )
    assert cost_usd(model, usage, batch=batch, provider=provider) == pytest.approx(
        float(expected.total_price)
    )
    assert cost_usd(model, usage, provider=provider) > 0
    if batch:  # the batch price, as genai-prices has it (cache reads need not halve)
        assert cost_usd(model, usage, batch=True, provider=provider) < cost_usd(
            model, usage, provider=provider
        )


def test_long_context_tiers_and_cache_writes_come_from_genai_prices() -> None:
    small = Usage(input_tokens=100_000, output_tokens=0)
    large = Usage(input_tokens=300_000, output_tokens=0)
    # Sonnet 4.5's input price doubles once a request's prompt passes 200K tokens
    assert cost_usd("claude-sonnet-4-5", large, provider="anthropic") == pytest.approx(
        2 * 3 * cost_usd("claude-sonnet-4-5", small, provider="anthropic")
    )
    written = Usage(input_tokens=1_000_000, output_tokens=0, cache_write_input_tokens=1_000_000)
    assert cost_usd("claude-haiku-4-5", written, provider="anthropic") == pytest.approx(1.25)


def test_an_override_wins_and_unknown_models_have_no_price() -> None:
    usage = Usage(input_tokens=1_000_000, output_tokens=1_000_000)
    mine = {"gpt-4o-mini": ModelPrice(input_per_mtok=1.0, output_per_mtok=2.0)}
    assert cost_usd("gpt-4o-mini", usage, prices=mine, provider="openai") == pytest.approx(3.0)
    assert price_for("gpt-4o-mini", mine) == mine["gpt-4o-mini"]
    assert not has_price("my-model", provider="openai")
    assert has_price("my-model", {"my-model": mine["gpt-4o-mini"]}, provider="openai")
    with pytest.raises(ValueError, match="--price-in"):
        cost_usd("my-model", usage, provider="openai")


def test_prices_are_read_offline() -> None:
    """genai-prices' bundled data is all povidgen reads: with every socket refused, a price is
    still found and no updater thread is started."""
    script = """
import socket, threading
def refuse(*args, **kwargs):
    raise OSError("no network in this test")
socket.socket.connect = refuse
socket.create_connection = refuse
from povidgen.hallucinate.pricing import Usage, cost_usd
print(cost_usd("gpt-4o", Usage(input_tokens=1_000_000, output_tokens=0), provider="openai"))
import genai_prices.update_prices as updates
from genai_prices import data_snapshot
assert data_snapshot._custom_snapshot is None
assert updates._shared_updater.ref_count == 0
print(threading.active_count())
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    price, threads = done.stdout.split()
    assert float(price) == pytest.approx(2.5)
    assert threads == "1"


def test_the_documented_local_example_runs_unpriced_and_without_a_key(
    server: FakeLLMServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(_build_command(server, tmp_path, "--model", "my-model"))
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "cost:         unknown (" in printed.out
    assert "output tokens" in printed.out
    assert server.seen_api_keys == {LOCAL_PLACEHOLDER_KEY}
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["cost_usd"] is None


def test_max_cost_with_an_unknown_price_is_an_error_before_any_call(
    server: FakeLLMServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(_build_command(server, tmp_path, "--model", "my-model", "--max-cost", "1"))
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("povidgen: error: ")
    assert err.count("\n") == 1
    assert "--max-cost" in err
    assert "'my-model'" in err
    assert server.requests == []
    with pytest.raises(ValueError, match="max_cost_usd"):
        OpenAIHallucinator("my-model", base_url=server.openai_base_url, max_cost_usd=1.0)


def test_price_flags_override_and_cap(
    server: FakeLLMServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prices = ("--price-in", "1000", "--price-out", "2000")
    code = main(
        _build_command(server, tmp_path, "--model", "my-model", *prices, "--max-cost", "100")
    )
    printed = capsys.readouterr()
    assert code == 0, printed.err
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["cost_usd"] > 0
    assert f"cost:         ${summary['cost_usd']:.4f}" in printed.out
    half = ("--price-in", "1")
    assert main(_build_command(server, tmp_path, "--model", "my-model", *half)) == 2
    assert "--price-in and --price-out go together" in capsys.readouterr().err


# -- part 3: keys ---------------------------------------------------------------------------


def test_api_key_env_reads_the_named_variable(
    server: FakeLLMServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("MY_GATEWAY_KEY", SECRET)
    extra = ("--model", "gpt-4o-mini", "--api-key-env", "MY_GATEWAY_KEY")
    with caplog.at_level(logging.DEBUG, logger="povidgen"):
        code = main(["-v", *_build_command(server, tmp_path, *extra)])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert server.seen_api_keys == {SECRET}
    for text in (printed.out, printed.err, caplog.text):
        assert SECRET not in text
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    code = main(_build_command(server, tmp_path, *extra[:3], "NOT_SET_ANYWHERE"))
    err = capsys.readouterr().err
    assert code == 2
    assert "'NOT_SET_ANYWHERE'" in err
    assert "not set" in err


def test_only_a_local_server_goes_without_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    for url in ("http://localhost:8000/v1", "http://127.0.0.1:9/v1", "http://[::1]:8000/v1"):
        assert is_local_url(url)
        local = OpenAIHallucinator("my-model", base_url=url)
        assert local.backend._api_key.get_secret_value() == LOCAL_PLACEHOLDER_KEY
        AnthropicHallucinator(base_url=url)
    for url in (None, "https://api.example.com/v1", "http://10.0.0.5:8000/v1", "http://[::2]/"):
        assert not is_local_url(url)
    with pytest.raises(ValueError, match=r"OPENAI_API_KEY.*--api-key-env"):
        OpenAIHallucinator(base_url="https://api.example.com/v1")
    with pytest.raises(ValueError, match="ANTHROPIC_API_KEY"):
        AnthropicHallucinator()
    monkeypatch.setenv("MY_GATEWAY_KEY", SECRET)
    hallucinator = AnthropicHallucinator(api_key_env="MY_GATEWAY_KEY")
    assert hallucinator.backend._api_key.get_secret_value() == SECRET
    assert SECRET not in repr(hallucinator.backend._api_key)


# -- part 4: faults -------------------------------------------------------------------------


def _examples(count: int) -> list[Example]:
    from PIL import Image

    image = Image.new("RGB", (16, 12), (200, 40, 40))
    colours = ["red", "blue", "green", "yellow", "white", "black", "brown", "pink"]
    return [
        Example(
            id=f"r{i:04d}",
            image=image,
            prompt="Describe the image.",
            answer=f"There are {i + 2} {colours[i % 8]} apples on the left of a cup number {i}.",
            seed=i,
        )
        for i in range(count)
    ]


def test_each_retry_waits_retry_after_plus_full_jitter_and_is_logged(
    server: FakeLLMServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    server.faults = ["429", "429", "500"]
    monkeypatch.setattr(server, "retry_after", 0.2)
    monkeypatch.setattr(policies, "_rng", random.Random(1))
    hallucinator = OpenAIHallucinator(
        "gpt-4o-mini",
        base_url=server.openai_base_url,
        initial_backoff=0.2,
        cache=False,
        timeout=5.0,
    )
    with caplog.at_level(logging.INFO, logger="povidgen"):
        results = hallucinator.hallucinate_many(_examples(1), concurrency=1)
    assert not isinstance(results[0], Exception), results[0]
    times = [r.timestamp for r in server.generation_requests()]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    draws = random.Random(1)
    # the same draws in the same order: the two 429s' waits (the pause is over by then)
    first = 0.2 + draws.uniform(0, 0.2)
    second = 0.2 + draws.uniform(0, 0.4)
    assert len(gaps) == 3
    assert gaps[0] == pytest.approx(first, abs=0.08)
    assert gaps[1] == pytest.approx(second, abs=0.08)
    assert gaps[0] >= 0.2
    assert gaps[1] >= 0.2
    assert gaps[1] - gaps[0] > 0.15  # jitter: the backoffs differ (seeded draws)
    retries = [r for r in caplog.records if "retrying a request" in r.getMessage()]
    assert [r.levelno for r in retries] == [logging.INFO] * 3
    assert "HTTP 429" in retries[0].getMessage()
    assert "HTTP 500" in retries[2].getMessage()


def test_after_a_429_every_task_pauses_and_resumes_spread_out(
    server: FakeLLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """64 tasks in flight through the real SDK meet a 429 storm (every row's first request is
    turned away with a retry-after): no row's retry reaches the server before its own 429's
    retry-after has passed, and the retries arrive spread out by jitter, not as one burst.
    Timing only ever delays a retry, so a loaded machine cannot fail the first check; the
    client-wide pause is checked to the microsecond in tests/hallucinate/test_backends.py."""
    pause = 0.5
    monkeypatch.setattr(server, "retry_after", pause)
    monkeypatch.setattr(policies, "_rng", random.Random(3))
    turned_away: set[str | None] = set()

    def storm(provider: str, index: int, body: dict[str, Any]) -> FaultKind | None:
        answer = extract_answer(body)
        if answer in turned_away:
            return None
        turned_away.add(answer)
        return "429"

    server.faults = storm
    hallucinator = OpenAIHallucinator(
        "gpt-4o-mini",
        base_url=server.openai_base_url,
        initial_backoff=0.4,
        cache=False,
        timeout=30.0,
        send_image=False,
    )
    results = hallucinator.hallucinate_many(_examples(64), concurrency=64)
    assert all(not isinstance(r, Exception) for r in results)
    by_row: dict[str | None, list[Any]] = {}
    for record in server.generation_requests():
        by_row.setdefault(extract_answer(record.body), []).append(record)
    assert len(by_row) == 64
    retries = []
    for first, retry in by_row.values():
        assert (first.fault, retry.fault) == ("429", None)
        # the server's clock: the 429 left at first.timestamp at the earliest, so a retry
        # sent after retry-after from its arrival cannot arrive sooner than this
        assert retry.timestamp >= first.timestamp + pause - 0.002
        retries.append(retry.timestamp)
    assert max(retries) - min(retries) > 0.15  # spread by jitter over the 0.4 s window
    assert statistics.pstdev(retries) > 0.05


def test_verbose_raises_the_povidgen_logger_only(monkeypatch: pytest.MonkeyPatch) -> None:
    root = logging.getLogger()
    before = root.level, list(root.handlers)
    log = logging.getLogger("povidgen")
    seen: dict[str, Any] = {}

    def fake_build(args: argparse.Namespace) -> int:
        seen["root"] = root.level
        seen["povidgen"] = log.getEffectiveLevel()
        seen["openai"] = logging.getLogger("openai").getEffectiveLevel()
        seen["httpx"] = logging.getLogger("httpx").getEffectiveLevel()
        seen["handlers"] = list(log.handlers)
        return 0

    monkeypatch.setattr(cli, "_build", fake_build)
    level = log.level
    assert main(["-v", "build", "--demo", "--out", "unused"]) == 0
    assert seen["root"] == before[0]
    assert seen["povidgen"] == logging.DEBUG
    assert seen["openai"] > logging.DEBUG
    assert seen["httpx"] > logging.DEBUG
    assert len(seen["handlers"]) == 1
    assert (root.level, list(root.handlers)) == before
    assert log.level == level
    assert not [h for h in log.handlers if h in seen["handlers"]]


def test_without_genai_prices_the_bundled_table_prices(monkeypatch: pytest.MonkeyPatch) -> None:
    from povidgen.hallucinate import pricing

    monkeypatch.setattr(pricing, "_genai_prices", lambda: None)
    usage = Usage(input_tokens=1_000_000, output_tokens=1_000_000)
    assert cost_usd("claude-sonnet-4-5", usage, provider="anthropic") == pytest.approx(18.0)
    assert cost_usd("gpt-4o-mini", usage, batch=True) == pytest.approx(0.375)
    assert price_for("gpt-4") is None
