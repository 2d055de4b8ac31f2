"""API keys never reach a file, a log line or the terminal, even when a server echoes them."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from povidgen.redact import register_secret, scrub
from povidgen.schema import RowError
from tests.fakes.llm_server import FakeLLMServer

KEY = "sk-echoed-by-a-bad-proxy-31337"


@pytest.fixture(autouse=True)
def _own_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    """The registry is process-wide: these tests start from none and leave none behind."""
    import povidgen.redact

    monkeypatch.setattr(povidgen.redact, "_secrets", ())


@pytest.fixture(scope="module")
def server() -> Iterator[FakeLLMServer]:
    with FakeLLMServer() as running:
        running.faults = lambda provider, index, body: "echo_key"
        yield running


def test_scrub_masks_registered_secrets_only() -> None:
    register_secret("sk-short")  # 8 characters: long enough to register
    register_secret("tiny")  # too short to be a credential: ignored
    assert scrub("key sk-short and tiny") == "key *** and tiny"
    register_secret("sk-short-and-longer")
    assert scrub("sk-short-and-longer") == "***"  # the longer secret is masked whole
    register_secret(None)


def test_row_error_reasons_are_scrubbed() -> None:
    register_secret(KEY)
    error = RowError(id="a", index=0, stage="hallucinate", reason=f"bad key {KEY}", error_type="X")
    assert error.reason == "bad key ***"


def test_log_records_are_scrubbed(caplog: pytest.LogCaptureFixture) -> None:
    register_secret(KEY)
    logger = logging.getLogger("povidgen")
    with caplog.at_level(logging.INFO, logger="povidgen"):
        logger.info("server said %s", KEY)
        try:
            raise ValueError(f"boom {KEY}")
        except ValueError:
            logger.exception("failed")
    assert KEY not in caplog.text
    assert "server said ***" in caplog.text


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_an_echoed_key_is_in_no_file_and_no_stream(
    server: FakeLLMServer,
    provider: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    from povidgen.cli import main

    env = "OPENAI_API_KEY" if provider == "openai" else "ANTHROPIC_API_KEY"
    monkeypatch.setenv(env, KEY)
    url = server.openai_base_url if provider == "openai" else server.anthropic_base_url
    out = tmp_path / "out"
    command = ["-v", "build", "--demo", "--demo-size", "2", "--provider", provider]
    command += ["--base-url", url, "--out", str(out), "--cache-dir", str(tmp_path / "cache")]
    with caplog.at_level(logging.DEBUG, logger="povidgen"):
        code = main(command)
    assert code == 1  # no pair could be built: every request failed
    captured = capsys.readouterr()
    assert server.requests, "the server was reached"
    assert KEY not in captured.out
    assert KEY not in captured.err
    assert KEY not in caplog.text
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert written
    for path in written:
        assert KEY.encode() not in path.read_bytes(), path
    errors = (out / "errors.jsonl").read_text()
    assert "API key ***" in errors
