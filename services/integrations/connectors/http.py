"""HTTP to a provider's API: bearer auth, refresh on 401, 429, 5xx and 410.

Connectors call ``ProviderApi.get_json``; the failure modes every provider
shares are handled here once:

- 401: the access token is refreshed (once) through ``refresh`` and the
  request retried; a second 401 means the grant is gone (``GrantRevoked``);
- 429: ``Retry-After`` is honoured: waited out inline when short, otherwise
  raised as ``RateLimited`` so the scheduler runs the connection later;
- 5xx and network errors: retried a few times with backoff, then
  ``ProviderUnavailable``;
- 410: ``Gone`` (a stale sync token), for the connector to handle.

Nothing here logs a token or a response body.
"""

from __future__ import annotations

import asyncio
import email.utils
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx


class ProviderError(Exception):
    """A provider call failed; the message is safe to show (no tokens, no bodies)."""


class GrantRevoked(ProviderError):
    """The provider refused the stored grant; the user must connect again."""


class RateLimited(ProviderError):
    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ProviderUnavailable(ProviderError):
    """5xx, timeouts, connection errors, unreadable responses."""


class Gone(ProviderError):
    """HTTP 410: the cursor the request carried is no longer valid."""


def parse_retry_after(value: str | None, default: float, now: datetime | None = None) -> float:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date)."""
    if not value:
        return default
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return default
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


class ProviderApi:
    """Authenticated JSON GETs against one provider's API base URL."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        base_url: str,
        access_token: str,
        refresh: Callable[[], Awaitable[str]],
        *,
        max_inline_wait: float = 5.0,
        server_retries: int = 2,
        retry_delay: float = 0.2,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._http = http
        self.base_url = base_url.rstrip("/") + "/"
        self._token = access_token
        self._refresh = refresh
        self._max_inline_wait = max_inline_wait
        self._server_retries = server_retries
        self._retry_delay = retry_delay
        self._sleep = sleep
        self.requests = 0
        self.refreshes = 0

    def url(self, path_or_url: str) -> str:
        """An absolute URL on the API's host; refuses links to other hosts."""
        url = urljoin(
            self.base_url, path_or_url.lstrip("/") if "://" not in path_or_url else path_or_url
        )
        if urlsplit(url).netloc != urlsplit(self.base_url).netloc:
            raise ProviderError("the provider linked to another host; not followed")
        return url

    async def get_json(self, path_or_url: str, params: Mapping[str, Any] | None = None) -> Any:
        url = self.url(path_or_url)
        refreshed = False
        server_failures = 0
        while True:
            try:
                self.requests += 1
                response = await self._http.get(
                    url,
                    # None, not {}: httpx replaces a link's own query with any params given.
                    params=dict(params) if params else None,
                    headers={"Authorization": f"Bearer {self._token}"},
                )
            except httpx.HTTPError as exc:
                server_failures += 1
                if server_failures > self._server_retries:
                    raise ProviderUnavailable(
                        f"provider unreachable: {type(exc).__name__}"
                    ) from None
                await self._sleep(self._retry_delay * 2 ** (server_failures - 1))
                continue
            status = response.status_code
            if status == 401 and not refreshed:
                refreshed = True
                self.refreshes += 1
                self._token = await self._refresh()
                continue
            if status == 401:
                raise GrantRevoked("the provider refused the access token after a refresh")
            if status == 429:
                wait = parse_retry_after(response.headers.get("Retry-After"), 60.0)
                if wait <= self._max_inline_wait:
                    await self._sleep(wait)
                    continue
                raise RateLimited(f"rate limited by the provider for {wait:g}s", wait)
            if status == 410:
                raise Gone("the provider no longer accepts this cursor (410)")
            if status >= 500:
                server_failures += 1
                if server_failures > self._server_retries:
                    raise ProviderUnavailable(f"the provider answered HTTP {status}")
                await self._sleep(self._retry_delay * 2 ** (server_failures - 1))
                continue
            if status >= 400:
                raise ProviderError(f"the provider answered HTTP {status}")
            try:
                return response.json()
            except ValueError:
                raise ProviderUnavailable("the provider answered with invalid JSON") from None
