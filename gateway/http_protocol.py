"""uvicorn's httptools protocol with each turn's writes sent as one.

uvicorn writes a response's head and its body with two ``transport.write``
calls: two syscalls and two TCP segments for every answer, which the client
also reads twice. Holding the writes of one turn of the loop and sending them
joined halves that (``tips bench gateway``: docs/decisions.md, decision 27).
Streamed answers are unaffected beyond a turn's delay: each turn's writes go
out at its end.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class _TurnTransport:
    """A transport that sends what was written in one turn of the loop in one write."""

    __slots__ = ("_loop", "_pending", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(data)

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        if pending and not self._transport.is_closing():
            self._transport.write(b"".join(pending))

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._pending))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class TurnWriteHttpToolsProtocol(HttpToolsProtocol):
    """``uvicorn.Config(http=...)``: httptools parsing, one write per turn."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(_TurnTransport(transport, self.loop))  # type: ignore[arg-type]
