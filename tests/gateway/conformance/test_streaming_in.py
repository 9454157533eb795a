"""Client-streaming and bidi methods over HTTP: the body is a stream of JSON values.

As grpc-gateway reads them: values one after another, separated by whitespace
or nothing. Each becomes a message upstream; client streaming answers one
JSON, bidi answers NDJSON (or SSE). Raw chunked requests split values (a
number, a multi-byte character) across chunks.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pytest

if TYPE_CHECKING:
    from tests.gateway.conformance.conftest import Rig

pytestmark = pytest.mark.integration


async def chunked(
    rig: Rig, path: str, chunks: list[bytes], accept: str = "*/*"
) -> tuple[int, bytes]:
    """POST ``chunks`` with Transfer-Encoding: chunked, one write per chunk."""
    url = urlsplit(rig.base_url)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    writer.write(
        f"POST {path} HTTP/1.1\r\nHost: edge\r\nConnection: close\r\nAccept: {accept}\r\n"
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
    )
    for chunk in chunks:
        writer.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        await writer.drain()
        await asyncio.sleep(0)  # let each chunk arrive on its own
    writer.write(b"0\r\n\r\n")
    async with asyncio.timeout(30):
        answer = await reader.read()
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    if b"transfer-encoding: chunked" in head.lower():
        body = dechunk(body)
    return int(head.split()[1]), body


def dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        out, data = out + data[:size], data[size + 2 :]
    return out


async def test_client_streaming_takes_every_value_of_the_body(rig: Rig) -> None:
    body = '{"name":"a","pages":1}\n{"name":"b","pages":"2"}{"name":"c"}  \n'
    r = await rig.client.post("/v1/collect", content=body.encode())
    assert r.status_code == 200, r.text
    assert r.json() == {"names": ["a", "b", "c"], "totalPages": 3}


async def test_an_empty_stream_is_no_messages(rig: Rig) -> None:
    r = await rig.client.post("/v1/collect", content=b"")
    assert r.status_code == 200 and r.json() == {"names": [], "totalPages": 0}


async def test_values_split_across_chunks(rig: Rig) -> None:
    # "12" + "3" is one number; "é" is split between its two UTF-8 bytes.
    e_acute = "é".encode()
    chunks = [
        b'{"name":"x","pages":12',
        b'3}{"name":"caf' + e_acute[:1],
        e_acute[1:] + b'"}',
        b'\n{"name":"z","pages":',
        b"4}",
    ]
    status, body = await chunked(rig, "/v1/collect", chunks)
    assert status == 200, body
    assert json.loads(body) == {"names": ["x", "café", "z"], "totalPages": 127}


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b'{"name":"a"}{"name":', "body: malformed JSON"),
        (b'{"name":"a"} [1]', "expected a JSON object"),
        (b'{"name":"a"}{"pages":"many"}', "pages: expected an integer"),
        (b'{"name":"a"}{"name":"\\ud800"}', "name: not valid UTF-8"),
    ],
    ids=["truncated", "not-an-object", "bad-field", "lone-surrogate"],
)
async def test_a_bad_value_anywhere_is_a_400_naming_it(rig: Rig, body: bytes, says: str) -> None:
    r = await rig.client.post("/v1/collect", content=body)
    assert r.status_code == 400, r.text
    assert says in r.json()["message"]


async def test_the_upstream_ending_the_stream_is_its_answer(rig: Rig) -> None:
    body = b'{"name":"a"}{"name":"refuse"}' + b'{"name":"more"}' * 50
    r = await rig.client.post("/v1/collect", content=body)
    assert r.status_code == 400, r.text  # FAILED_PRECONDITION, as grpc-gateway maps it
    assert r.json()["code"] == 9 and "refused mid-stream" in r.json()["message"]


async def test_bidi_answers_ndjson_one_line_per_message(rig: Rig) -> None:
    status, body = await chunked(
        rig, "/v1/chat", [b'{"name":"one","pages":1}\n', b'{"name":"two"}']
    )
    assert status == 200, body
    lines = [json.loads(line) for line in body.decode().splitlines()]
    assert [line["result"]["name"] for line in lines] == ["re: one", "re: two"]
    assert lines[0]["result"]["pages"] == "2"


async def test_bidi_as_server_sent_events(rig: Rig) -> None:
    status, body = await chunked(rig, "/v1/chat", [b'{"name":"s"}'], accept="text/event-stream")
    assert status == 200, body
    events: list[Any] = [json.loads(e[len("data: ") :]) for e in body.decode().split("\n\n") if e]
    assert events == [{"name": "re: s", "title": "", "author": "", "meta": None, "pages": "0"}]


async def test_openapi_lists_the_streaming_methods(rig: Rig) -> None:
    spec = (await rig.client.get("/openapi.json")).json()
    assert "post" in spec["paths"]["/v1/collect"] and "post" in spec["paths"]["/v1/chat"]


async def test_an_empty_body_is_an_empty_message_for_body_star(rig: Rig) -> None:
    """As grpc-gateway (its decoder's io.EOF): not a 400."""
    r = await rig.client.post("/v1/echo", content=b"")
    assert r.status_code == 200 and r.json()["name"] == ""
