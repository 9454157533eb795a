"""HttpRule forms from grpc-gateway's own example protos (a_bit_of_everything).

A verb holding a colon and a body that fills a nested field, the two forms
that kept the gateway from starting on grpc-gateway's example protos (all 21
that compile offline now load; docs/gateway.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from gateway import pathtemplate

if TYPE_CHECKING:
    from tests.gateway.conformance.conftest import Rig

pytestmark = pytest.mark.integration


async def test_a_verb_with_a_colon_after_a_variable(rig: Rig) -> None:
    r = await rig.client.post("/v1/books/b1:custom:custom", json={"title": "t"})
    assert r.status_code == 200, r.text
    assert r.json()["name"] == "double:b1" and r.json()["title"] == "t"
    # Only the whole verb matches.
    assert (await rig.client.post("/v1/books/b1:custom", json={})).status_code == 404


async def test_a_body_that_fills_a_nested_field(rig: Rig) -> None:
    r = await rig.client.post("/v1/nestedBody/n1", json={"label": "deep", "depth": 2})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["name"] == "n1"
    assert body["inner"]["next"] == {"label": "deep", "depth": 2, "next": None}
    bad = await rig.client.post("/v1/nestedBody/n1", json={"depth": "x"})
    assert bad.status_code == 400 and "inner.next.depth" in bad.json()["message"]


@pytest.mark.unit
@pytest.mark.parametrize(
    ("template", "path", "verb"),
    [
        ("/v1/{uuid}:custom:custom", "/v1/abc:custom:custom", "custom:custom"),
        ("/v1/things:batchGet", "/v1/things:batchGet", "batchGet"),
        ("/v1/{name=books/*}:archive", "/v1/books/1:archive", "archive"),
    ],
)
def test_verbs_are_read_as_grpc_gateway_reads_them(template: str, path: str, verb: str) -> None:
    parsed = pathtemplate.parse(template)
    assert parsed.verb == verb
    assert parsed.match(path) is not None


async def test_an_http_body_answer_is_its_bytes_and_content_type(rig: Rig) -> None:
    r = await rig.client.get("/v1/download/dune")
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/csv"
    assert r.content == b"name,pages\ndune,412\n"


async def test_an_http_body_request_is_the_bytes_as_sent(rig: Rig) -> None:
    data = bytes(range(256)) * 4  # not JSON, not UTF-8
    r = await rig.client.post("/v1/upload", content=data, headers={"content-type": "image/png"})
    assert r.status_code == 200, r.text
    assert r.json()["name"] == "image/png" and r.json()["pages"] == str(len(data))


async def test_a_stream_of_http_bodies_is_streamed_raw(rig: Rig) -> None:
    async with rig.client.stream("GET", "/v1/downloadStream/3") as r:
        assert r.status_code == 200 and r.headers["content-type"] == "text/plain"
        body = b"".join([chunk async for chunk in r.aiter_raw()])
    assert body == b"line 0\nline 1\nline 2\n"
