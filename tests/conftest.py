"""Shared test set-up: no network, a private Hugging Face cache, and small image factories."""

from __future__ import annotations

import os
import tempfile

# Before anything imports datasets or huggingface_hub: they read these at import time.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="povidgen-hf-"))

import io

import pytest
from PIL import Image


def encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    """The bytes of ``image`` saved as ``fmt``."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture(autouse=True)
def _private_reply_cache(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each test gets its own reply cache: a reply cached by one test must not answer
    another's request (and nothing is written to the user's cache folder)."""
    monkeypatch.setenv("POVIDGEN_CACHE_DIR", str(tmp_path_factory.mktemp("reply-cache")))


@pytest.fixture
def rgb_image() -> Image.Image:
    """A small non-uniform RGB image."""
    image = Image.new("RGB", (24, 16), (200, 30, 30))
    image.paste((30, 30, 200), (12, 0, 24, 16))
    return image
