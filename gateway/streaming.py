"""Streaming over HTTP/1.1: answers as NDJSON (SSE on ``Accept: text/event-stream``),
and request bodies of many JSON values for client-streaming and bidi methods.

NDJSON follows grpc-gateway: one ``{"result": ...}`` line per message and a
final ``{"error": <Status>}`` line when the stream fails. The first message
is awaited before the response starts, so a call that fails at once gets
its real HTTP status (grpc-gateway answers 200 and an error line). SSE sends
each message as a ``data:`` event and a failure as ``event: error``.

A streamed request body is a sequence of JSON values, separated by
whitespace or nothing (``{..}\n{..}`` or ``{..}{..}``), as grpc-gateway's
JSON decoder reads it; each value is decoded as soon as it is complete, so
messages go upstream while the body is still arriving.
"""

from __future__ import annotations

import base64
import codecs
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import grpc

from gateway.errors import status_dict, status_of_rpc_error
from gateway.transcode import Bad, reject_constant

Send = Callable[[dict[str, Any]], Awaitable[None]]
_NDJSON = b"application/x-ndjson"
_SSE = b"text/event-stream"


def metadata_headers(metadata: Sequence[tuple[str, str | bytes]]) -> list[tuple[bytes, bytes]]:
    """Upstream header metadata as ``Grpc-Metadata-*`` headers (binary values base64)."""
    out: list[tuple[bytes, bytes]] = []
    for key, value in metadata:
        if isinstance(value, bytes):
            value = base64.b64encode(value).decode("ascii")
        out.append((f"grpc-metadata-{key}".encode("latin-1"), value.encode("latin-1", "replace")))
    return out


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


async def stream_response(
    send: Send,
    call: Any,
    render: Callable[[Any], Any],
    *,
    sse: bool,
    http_body: Callable[[Any], Any] | None = None,
) -> None:
    """Relay ``call`` (server streaming or bidi: ``await call.read()`` until
    ``grpc.aio.EOF``) to the client.

    A stream of google.api.HttpBody (``http_body`` gives each message's) is
    relayed as its bytes, under the first message's content type, as
    grpc-gateway streams file downloads.
    """
    first = await call.read()  # an error here propagates: a normal error response
    header_md = (await call.initial_metadata()) or ()
    if http_body is not None and first is not grpc.aio.EOF:
        await _relay_raw(send, call, first, header_md, http_body)
        return
    headers = [(b"content-type", _SSE if sse else _NDJSON), (b"cache-control", b"no-cache")]
    headers += metadata_headers(header_md)
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    message = first
    try:
        while message is not grpc.aio.EOF:
            data = render(message)
            chunk = b"data: " + _dumps(data) + b"\n\n" if sse else _dumps({"result": data}) + b"\n"
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            message = await call.read()
    except grpc.RpcError as exc:
        status = status_dict(status_of_rpc_error(exc))
        chunk = (
            b"event: error\ndata: " + _dumps(status) + b"\n\n"
            if sse
            else _dumps({"error": status}) + b"\n"
        )
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


async def _relay_raw(
    send: Send, call: Any, first: Any, header_md: Any, http_body: Callable[[Any], Any]
) -> None:
    kind = http_body(first).content_type or "application/octet-stream"
    headers = [(b"content-type", kind.encode("latin-1", "replace")), *metadata_headers(header_md)]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    message = first
    try:
        while message is not grpc.aio.EOF:
            data = http_body(message).data
            await send({"type": "http.response.body", "body": data, "more_body": True})
            message = await call.read()
    except grpc.RpcError:
        pass  # raw bytes have no error line: the answer ends short (no final chunk)
    else:
        await send({"type": "http.response.body", "body": b""})


_DECODER = json.JSONDecoder(parse_constant=reject_constant)


async def json_values(chunks: AsyncIterator[tuple[bytes, bool]]) -> AsyncIterator[Any]:
    """Each JSON value of a body arriving as ``(chunk, more_to_come)``; ``Bad`` if malformed."""
    text = codecs.getincrementaldecoder("utf-8")()
    buffer = ""
    async for chunk, more in chunks:
        try:
            buffer += text.decode(chunk, final=not more)
        except UnicodeDecodeError as exc:
            raise Bad("body", f"not UTF-8: {exc.reason}") from None
        while True:
            buffer = buffer.lstrip()
            if not buffer:
                break
            try:
                value, end = _DECODER.raw_decode(buffer)
            except RecursionError:
                raise Bad("body", "JSON nested too deeply") from None
            except ValueError as exc:
                if more:
                    break  # perhaps only incomplete: wait for the rest
                raise Bad("body", f"malformed JSON: {exc}") from None
            if more and end == len(buffer) and not isinstance(value, (dict, list, str)):
                break  # a number or word at the end may go on in the next chunk
            buffer = buffer[end:]
            yield value
