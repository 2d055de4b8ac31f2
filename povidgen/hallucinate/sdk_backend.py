"""What the OpenAI and Anthropic backends share: a provider SDK's async client, made per event
loop from a key and base URL (or passed in by the user), and closed with the loop."""

from __future__ import annotations

import asyncio
import os
from abc import abstractmethod
from typing import Any

from pydantic import SecretStr

from povidgen.hallucinate.backend import Backend
from povidgen.hallucinate.keys import resolve_api_key
from povidgen.redact import register_secret

__all__: list[str] = []


class SDKBackend(Backend):
    """A backend over a provider SDK's async client.

    Subclasses set :attr:`sdk_name`, :attr:`base_url_env`, :attr:`key_env` and
    :attr:`default_endpoint`, and implement :meth:`_new_client` and ``send``.

    Args:
        model: the provider's model name.
        client: an SDK client to use (its retries are switched off: povidgen retries); it is
            never closed here.
        base_url: the server, default ``$<base_url_env>`` or the provider's.
        api_key: default: the variable ``api_key_env`` names, else ``$<key_env>``; none is
            needed for a server on localhost. Kept as a ``SecretStr`` and never logged.
        api_key_env: the environment variable to read the key from.
        timeout: seconds per request.
    """

    sdk_name: str = "the provider"
    base_url_env: str = ""
    key_env: str = ""
    default_endpoint: str = ""

    def __init__(
        self,
        model: str,
        *,
        client: Any | None = None,
        base_url: str | None = None,
        api_key: SecretStr | str | None = None,
        api_key_env: str | None = None,
        timeout: float = 60.0,
    ) -> None:
        self.model = model
        self.timeout = timeout
        self._user_client: Any | None = None
        self._client: Any | None = None
        self._client_loop: asyncio.AbstractEventLoop | None = None
        self._base_url: str | None = None
        self._api_key = SecretStr("")
        if client is not None:
            self._user_client = client.with_options(max_retries=0, timeout=timeout)
            register_secret(getattr(client, "api_key", None))
        else:
            self._base_url = base_url or os.environ.get(self.base_url_env) or None
            self._api_key = resolve_api_key(
                provider=self.sdk_name,
                api_key=api_key,
                api_key_env=api_key_env,
                default_env=self.key_env,
                base_url=self._base_url,
            )

    @abstractmethod
    def _new_client(self, api_key: str, base_url: str | None, timeout: float) -> Any:
        """A new SDK client with its own retries switched off."""

    def client(self) -> Any:
        """The SDK client for the running event loop.

        An HTTP connection pool belongs to the loop that opened it, so a client made here is
        (re)made per loop and closed by :meth:`aclose`; a client passed in is used as it is.
        """
        if self._user_client is not None:
            return self._user_client
        loop = asyncio.get_running_loop()
        if self._client is None or self._client_loop is not loop:
            self._client = self._new_client(
                self._api_key.get_secret_value(), self._base_url, self.timeout
            )
            self._client_loop = loop
        return self._client

    async def aclose(self) -> None:
        client, self._client, self._client_loop = self._client, None, None
        if client is not None:
            await client.close()

    @property
    def endpoint(self) -> str:
        base_url = getattr(self._user_client, "base_url", None) or self._base_url
        return str(base_url) if base_url is not None else self.default_endpoint
