"""The reply cache: a reply paid for is never paid for again, and the cache holds no secret.

Counted at the fake server: a rerun of the same rows sends no request, a run killed part-way
keeps what it received, and anything that changes the request misses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from povidgen.hallucinate.cache import CACHE_ENV, ReplyCache, default_cache_dir
from povidgen.hallucinate.pricing import Usage
from povidgen.hallucinate.prompts import PromptConfig
from tests.fakes.llm_server import FakeLLMServer
from tests.hallucinate.test_providers import SECRET, build, make


def test_put_and_get_survive_a_new_process_handle(tmp_path: Path) -> None:
    usage = Usage(input_tokens=12, output_tokens=5, cached_input_tokens=2)
    first = ReplyCache(tmp_path)
    key = ReplyCache.key(model="m", user="hello", seed=3)
    assert first.get(key) is None
    first.put(key, '{"rejected": "x"}', usage)
    first.close()
    again = ReplyCache(tmp_path)
    assert again.get(key) == ('{"rejected": "x"}', usage)
    assert len(again) == 1
    assert again.hits == 1


def test_every_part_of_the_request_is_in_the_key() -> None:
    base: dict[str, Any] = {"model": "m", "user": "u", "image": "abc", "seed": 1, "params": {}}
    keys = {ReplyCache.key(**base)}
    for name, other in (("model", "n"), ("user", "v"), ("image", "abd"), ("seed", 2)):
        keys.add(ReplyCache.key(**{**base, name: other}))
    keys.add(ReplyCache.key(**{**base, "params": {"max_output_tokens": 9}}))
    assert len(keys) == 6
    assert ReplyCache.key(**base) == ReplyCache.key(**dict(reversed(list(base.items()))))


def test_default_folder_follows_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "here"))
    assert default_cache_dir() == tmp_path / "here"
    monkeypatch.delenv(CACHE_ENV)
    assert default_cache_dir().name == "povidgen"


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_a_rerun_sends_nothing_and_costs_nothing(
    server: FakeLLMServer, provider: str, tmp_path: Path
) -> None:
    first = build(make(provider, server, cache_dir=tmp_path), 6)
    sent = len(server.requests)
    assert sent >= 6
    assert first.report.cost_usd is not None
    assert first.report.cost_usd > 0

    server.requests.clear()
    again = build(make(provider, server, cache_dir=tmp_path), 6)  # a new run, same rows
    assert server.requests == []
    assert again.report.cost_usd == 0
    assert again.pairs["rejected"] == first.pairs["rejected"]  # type: ignore[attr-defined]


def test_a_run_killed_part_way_keeps_the_replies_it_received(
    server: FakeLLMServer, tmp_path: Path
) -> None:
    build(make("openai", server, cache_dir=tmp_path), 3)  # the rows done before the kill
    server.requests.clear()
    build(make("openai", server, cache_dir=tmp_path), 6)
    assert len(server.requests) == 3  # only the rows never answered


def test_a_changed_request_misses(server: FakeLLMServer, tmp_path: Path) -> None:
    build(make("openai", server, cache_dir=tmp_path), 2)
    for options in (
        {"model": "gpt-4o"},
        {"prompt": PromptConfig(min_edits=1, max_edits=3)},
        {"max_output_tokens": 777},
        {"send_image": False},
    ):
        server.requests.clear()
        build(make("openai", server, cache_dir=tmp_path, **options), 2)
        assert len(server.requests) == 2, options
    server.requests.clear()
    build(make("openai", server, cache_dir=tmp_path), 2, seed=5)  # another seed per row
    assert len(server.requests) == 2


def test_cache_off_sends_every_request(server: FakeLLMServer, tmp_path: Path) -> None:
    for _ in range(2):
        build(make("openai", server, cache=False, cache_dir=tmp_path), 2)
    assert len(server.requests) == 4
    assert not (tmp_path / "replies.sqlite").exists()


def test_the_cache_holds_no_api_key(server: FakeLLMServer, tmp_path: Path) -> None:
    build(make("openai", server, cache_dir=tmp_path), 3)
    build(make("anthropic", server, cache_dir=tmp_path), 3)
    for path in tmp_path.iterdir():
        assert SECRET.encode() not in path.read_bytes(), path.name


def test_cli_rerun_into_a_new_folder_is_answered_from_the_cache(
    server: FakeLLMServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from povidgen.cli import main

    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    command = ["build", "--demo", "--demo-size", "3", "--provider", "openai"]
    command += ["--base-url", server.openai_base_url, "--model", "gpt-4o-mini"]
    command += ["--cache-dir", str(tmp_path / "cache")]
    assert main([*command, "--out", str(tmp_path / "first")]) == 0
    assert len(server.requests) >= 3
    server.requests.clear()
    assert main([*command, "--out", str(tmp_path / "second")]) == 0
    assert server.requests == []
    server.requests.clear()
    no_cache = [c for c in command if c not in ("--cache-dir", str(tmp_path / "cache"))]
    assert main([*no_cache, "--no-cache", "--out", str(tmp_path / "third")]) == 0
    assert len(server.requests) >= 3
