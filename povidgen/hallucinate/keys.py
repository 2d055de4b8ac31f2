"""Where an API-backed hallucinator's key comes from, and when none is needed.

:func:`resolve_api_key` picks, in order: the ``api_key`` argument, the environment variable
named by ``api_key_env`` (the CLI's ``--api-key-env NAME``), then the provider's usual variable
(``OPENAI_API_KEY``, ``ANTHROPIC_API_KEY``). A server on this machine (``localhost``,
``127.0.0.1``, ``::1``) needs none: a placeholder is sent, which local OpenAI-compatible servers
(vLLM, llama.cpp, Ollama) ignore. Every key found is registered with
:func:`povidgen.redact.register_secret`, so it never reaches a log, an error or an output.
"""

from __future__ import annotations

import ipaddress
import os
from urllib.parse import urlsplit

from pydantic import SecretStr

from povidgen.redact import register_secret

__all__ = ["LOCAL_PLACEHOLDER_KEY", "is_local_url", "resolve_api_key"]

LOCAL_PLACEHOLDER_KEY = "no-key-needed"
"""What is sent as the key to a server on this machine when no key is set."""


def is_local_url(url: str | None) -> bool:
    """Whether ``url`` names a server on this machine (``localhost`` or a loopback address)."""
    if not url:
        return False
    try:
        host = urlsplit(url if "//" in url else f"//{url}").hostname
    except ValueError:
        return False
    if host is None:
        return False
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolve_api_key(
    *,
    provider: str,
    api_key: SecretStr | str | None,
    api_key_env: str | None,
    default_env: str,
    base_url: str | None,
) -> SecretStr:
    """The key to send (see the module's docstring); ``ValueError`` when none is found and
    the server is not local. The message names variables, never a value."""
    if api_key is not None and api_key_env is not None:
        raise ValueError("give api_key or api_key_env, not both")
    key: SecretStr | str | None = api_key
    if key is None and api_key_env is not None:
        if not api_key_env or "=" in api_key_env:
            raise ValueError(f"api_key_env must name an environment variable, got {api_key_env!r}")
        key = os.environ.get(api_key_env) or None
        if key is None:
            raise ValueError(
                f"api_key_env={api_key_env!r}: that environment variable is not set or empty"
            )
    if key is None:
        key = os.environ.get(default_env) or None
    if key is None:
        if is_local_url(base_url):
            return SecretStr(LOCAL_PLACEHOLDER_KEY)
        raise ValueError(
            f"no {provider} API key: set {default_env}, name another variable with "
            "api_key_env= (--api-key-env NAME), or pass api_key= or client= (a server on "
            "localhost needs none)"
        )
    secret = key if isinstance(key, SecretStr) else SecretStr(key)
    register_secret(secret)  # scrubbed from errors, logs and the terminal
    return secret
