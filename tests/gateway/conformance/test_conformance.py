"""Conformance: every transcoding feature over real HTTP against a real grpc.aio backend."""

from __future__ import annotations

import base64
import json
from typing import TYPE_CHECKING, Any

import grpc
import pytest

if TYPE_CHECKING:
    from tests.gateway.conformance.conftest import Rig

from tests.gateway.conformance.conftest import violations

pytestmark = pytest.mark.integration


async def test_unpopulated_fields_are_emitted_as_grpc_gateway_does(rig: Rig) -> None:
    r = await rig.client.get("/v1/echo/plain")
    assert r.status_code == 200
    body = r.json()
    assert body["name"] == "plain"
    # Zero values for fields without presence; null for unset messages.
    assert body["tags"] == [] and body["labels"] == {} and body["numbers"] == []
    assert body["color"] == "COLOR_UNSPECIFIED"
    assert body["big"] == "0" and body["ubig"] == "0"
    assert body["flag"] is False and body["blob"] == "" and body["ratio"] == 0
    for message_field in ("inner", "when", "span", "mask", "maybeCount", "maybeText"):
        assert body[message_field] is None, message_field
    # Oneof members and proto3 optional: absent when unset.
    assert "nickname" not in body and "choiceA" not in body and "choiceB" not in body


async def test_query_parameters_of_every_kind(rig: Rig) -> None:
    query = [
        ("inner.label", "deep"),
        ("inner.depth", "3"),
        ("tags", "a"),
        ("tags", "b"),
        ("labels[k1]", "v1"),
        ("labels[k2]", "v2"),
        ("counts[x]", "-5"),
        ("color", "COLOR_BLUE"),
        ("colors", "1"),
        ("colors", "COLOR_BLUE"),
        ("when", "2024-05-01T12:00:00Z"),
        ("span", "1.5s"),
        ("mask", "inner.label,maybeCount"),
        ("maybeCount", "7"),
        ("maybe_text", "hi"),
        ("big", "9007199254740993"),
        ("ubig", "18446744073709551615"),
        ("flag", "true"),
        ("blob", base64.b64encode(b"\x00\xffbytes").decode()),
        ("ratio", "0.25"),
        ("numbers", "1"),
        ("numbers", "2"),
        ("nickname", "nick"),
        ("choiceB", "9"),
        ("unknownParam", "ignored"),
    ]
    r = await rig.client.get("/v1/echo/q", params=query)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["inner"] == {"label": "deep", "depth": 3, "next": None}
    assert body["tags"] == ["a", "b"]
    assert body["labels"] == {"k1": "v1", "k2": "v2"}
    assert body["counts"] == {"x": "-5"}
    assert body["color"] == "COLOR_BLUE"
    assert body["colors"] == ["COLOR_RED", "COLOR_BLUE"]
    assert body["when"] == "2024-05-01T12:00:00Z"
    assert body["span"] == "1.500s"
    assert body["mask"] == "inner.label,maybeCount"
    assert body["maybeCount"] == 7 and body["maybeText"] == "hi"
    assert body["big"] == "9007199254740993"
    assert body["ubig"] == "18446744073709551615"
    assert body["flag"] is True
    assert base64.b64decode(body["blob"]) == b"\x00\xffbytes"
    assert body["ratio"] == 0.25 and body["numbers"] == [1, 2]
    assert body["nickname"] == "nick" and body["choiceB"] == 9


async def test_body_star_accepts_both_names_and_ignores_unknown_fields(rig: Rig) -> None:
    sent = {
        "name": "b",
        "maybe_count": 3,
        "maybeText": "t",
        "big": "12",
        "ubig": 13,
        "inner": {"label": "x"},
        "when": "2024-01-02T03:04:05.500Z",
        "span": "2s",
        "mask": "a,bC",
        "labels": {"k": "v"},
        "colors": ["COLOR_RED", 2],
        "futureField": {"whatever": 1},
    }
    r = await rig.client.post("/v1/echo", json=sent, params={"tags": "ignored-with-star"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["maybeCount"] == 3 and body["maybeText"] == "t"
    assert body["big"] == "12" and body["ubig"] == "13"
    assert body["inner"] == {"label": "x", "depth": 0, "next": None}
    assert body["when"] == "2024-01-02T03:04:05.500Z" and body["span"] == "2s"
    assert body["mask"] == "a,bC"
    assert body["colors"] == ["COLOR_RED", "COLOR_BLUE"]
    assert body["tags"] == []  # body "*": query parameters are not read


async def test_body_field_and_path_and_query_together(rig: Rig) -> None:
    r = await rig.client.put(
        "/v1/echo/n1/inner", json={"label": "from-body", "depth": 2}, params={"tags": "t"}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["name"] == "n1" and body["inner"] == {
        "label": "from-body",
        "depth": 2,
        "next": None,
    }
    assert body["tags"] == ["t"]


async def test_nested_path_variables_wildcards_and_percent_decoding(rig: Rig) -> None:
    nested = (await rig.client.get("/v1/nested/lab%20el/nm")).json()
    assert nested["inner"]["label"] == "lab el" and nested["name"] == "nm"
    deep = (await rig.client.get("/v1/files/a/b%2Fc/d.txt")).json()
    assert deep["name"] == "a/b%2Fc/d.txt"  # multi-segment: %2F stays encoded
    wild = (await rig.client.get("/v1/wild/anything/x%2Fy")).json()
    assert wild["name"] == "x/y"  # single segment: fully decoded


async def test_response_body_and_most_specific_template(rig: Rig) -> None:
    book = await rig.client.get("/v1/shelves/s1/books/b1")
    assert book.status_code == 200
    assert book.json() == {
        "name": "shelves/s1/books/b1",
        "title": "Dune",
        "author": "",
        "meta": None,
        "pages": "412",
    }
    special = await rig.client.get("/v1/shelves/special/books/b9")
    assert special.json()["name"] == "special:b9"


async def test_patch_fills_the_field_mask_from_the_body(rig: Rig) -> None:
    r = await rig.client.patch(
        "/v1/shelves/s1/books/b1", json={"title": "New", "meta": {"label": "l"}}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert sorted(body["maskPaths"]) == ["meta.label", "title"]
    # The mask would name a field the book does not have: refused, as grpc-gateway does.
    unknown = await rig.client.patch(
        "/v1/shelves/s1/books/b1", json={"title": "New", "meta": {"labl": "l"}}
    )
    assert unknown.status_code == 400
    assert violations(unknown.json()) == {"book.meta.labl": "Inner has no field 'labl' to update"}
    assert body["book"]["name"] == "shelves/s1/books/b1"
    sent_mask = await rig.client.patch(
        "/v1/shelves/s1/books/b1", json={"title": "New"}, params={"updateMask": "author"}
    )
    assert sent_mask.json()["maskPaths"] == ["author"]


async def test_two_members_of_a_oneof_are_refused(rig: Rig) -> None:
    both = await rig.client.post("/v1/echo", json={"choiceA": "a", "choiceB": 2})
    assert both.status_code == 400
    assert violations(both.json()) == {
        "choiceB": "choiceA is set too: only one field of choice may be"
    }
    one = await rig.client.post("/v1/echo", json={"choiceA": "a", "choiceB": None})
    assert one.status_code == 200 and one.json()["choiceA"] == "a"


async def test_delete_custom_suffix_and_custom_verb(rig: Rig) -> None:
    deleted = await rig.client.delete("/v1/shelves/s1/books/b1")
    assert deleted.status_code == 200 and deleted.json() == {}
    archived = await rig.client.post("/v1/shelves/s1/books/b1:archive", json={"reason": "old"})
    assert archived.json()["title"] == "archived: old"
    assert archived.json()["name"] == "shelves/s1/books/b1"
    found = await rig.client.request("SEARCH", "/v1/books", params={"query": "dune"})
    assert found.status_code == 200 and found.json()["title"] == "found dune"


GRPC_TO_HTTP = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
}


async def test_every_grpc_code_maps_to_its_http_status(rig: Rig) -> None:
    for code, http_status in GRPC_TO_HTTP.items():
        r = await rig.client.get(f"/v1/fail/{code.value[0]}")
        assert r.status_code == http_status, code
        if code == grpc.StatusCode.OK:
            continue
        body = r.json()
        assert body["code"] == code.value[0]
        assert "details" in body
    bad = (await rig.client.get("/v1/fail/3")).json()
    assert violations(bad) == {"code": "the backend says no"}
    missing = (await rig.client.get("/v1/fail/5")).json()
    types = [d["@type"] for d in missing["details"]]
    assert "type.googleapis.com/google.rpc.ResourceInfo" in types
    assert (
        missing["details"][types.index("type.googleapis.com/google.rpc.ResourceInfo")][
            "resourceName"
        ]
        == "shelves/1/books/2"
    )
    unauthenticated = await rig.client.get("/v1/fail/16")
    assert unauthenticated.headers["www-authenticate"].startswith("Bearer")
    assert "TOKEN_EXPIRED" in unauthenticated.headers["www-authenticate"]
    # The upstream's header metadata goes out on errors too, as grpc-gateway does.
    assert metadata_of(await rig.client.get("/v1/fail/5")) == {"x-why": "asked-to-fail"}


def metadata_of(r: Any) -> dict[str, str]:
    prefix = "grpc-metadata-"
    return {k[len(prefix) :]: v for k, v in r.headers.items() if k.startswith(prefix)}


async def test_unknown_path_404_and_wrong_method_405(rig: Rig) -> None:
    """grpc-gateway's DefaultRoutingErrorHandler: NOT_FOUND / UNIMPLEMENTED, the message
    the HTTP status text. Its wrong method is HTTP 501; ours 405 with Allow (docs/gateway.md)."""
    missing = await rig.client.get("/v1/nothing/here")
    assert missing.status_code == 404
    assert missing.json() == {"code": 5, "message": "Not Found", "details": []}
    wrong = await rig.client.post("/v1/shelves/s1/books/b1")
    assert wrong.status_code == 405
    assert wrong.json() == {"code": 12, "message": "Method Not Allowed", "details": []}
    assert wrong.headers["allow"] == "DELETE, GET, PATCH"
    # The app's own routes answer the same way, with the methods they serve.
    own = await rig.client.post("/healthz")
    assert own.status_code == 405
    assert own.json() == {"code": 12, "message": "Method Not Allowed", "details": []}
    assert own.headers["allow"] == "GET, HEAD"


@pytest.mark.parametrize(
    ("method", "url", "kwargs", "field"),
    [
        ("POST", "/v1/echo", {"content": b"{not json"}, "body"),
        ("POST", "/v1/echo", {"json": {"big": "twelve"}}, "big"),
        ("POST", "/v1/echo", {"json": {"flag": "yes"}}, "flag"),
        ("POST", "/v1/echo", {"json": {"color": "COLOR_GREEN"}}, "color"),
        ("POST", "/v1/echo", {"json": {"inner": {"depth": "deep"}}}, "inner.depth"),
        ("POST", "/v1/echo", {"json": {"inner": {"depth": 2**40}}}, "inner.depth"),
        ("POST", "/v1/echo", {"json": {"tags": "not-a-list"}}, "tags"),
        ("POST", "/v1/echo", {"json": {"when": "yesterday"}}, "when"),
        ("POST", "/v1/echo", {"json": {"blob": "%%%"}}, "blob"),
        ("POST", "/v1/echo", {"json": ["an", "array"]}, "body"),
        ("PUT", "/v1/echo/n/inner", {"content": b"[1,"}, "inner"),
        ("GET", "/v1/fail/notanumber", {}, "code"),
        ("GET", "/v1/echo/x?big=1.5", {}, "big"),
        ("GET", "/v1/echo/x?color=PURPLE", {}, "color"),
        ("GET", "/v1/echo/x?flag=maybe", {}, "flag"),
        ("GET", "/v1/echo/x?when=soon", {}, "when"),
        ("GET", "/v1/echo/x?span=forever", {}, "span"),
        # Mask paths proto3 JSON cannot write back (the echo's answer would fail).
        ("GET", "/v1/echo/x?mask=%C3%9C", {}, "mask"),
        ("GET", "/v1/echo/x?mask=a_1", {}, "mask"),
        ("GET", "/v1/echo/x?maybeCount=many", {}, "maybeCount"),
        ("GET", "/v1/echo/x?inner=whole", {}, "inner"),
        ("GET", "/v1/echo/x?name=a&inner.label=a&inner.label=b", {}, "inner.label"),
        ("GET", "/v1/echo/x?labels=flat", {}, "labels"),
        ("GET", "/v1/echo/x?counts[k]=NaN", {}, "counts[k]"),
        ("GET", "/v1/echo/x?ubig=-1", {}, "ubig"),
        ("GET", "/v1/echo/x", {"headers": {"Grpc-Timeout": "soon"}}, "Grpc-Timeout"),
    ],
)
async def test_client_mistakes_are_400_naming_the_field(
    rig: Rig, method: str, url: str, kwargs: dict[str, Any], field: str
) -> None:
    r = await rig.client.request(method, url, **kwargs)
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["code"] == 3
    assert field in violations(body), body


async def test_server_streaming_as_ndjson(rig: Rig) -> None:
    r = await rig.client.get("/v1/stream/3")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/x-ndjson"
    lines = [json.loads(line) for line in r.text.splitlines()]
    assert [line["result"]["name"] for line in lines] == [f"shelves/1/books/{i}" for i in range(3)]
    assert lines[1]["result"]["pages"] == "1"


async def test_streaming_error_midway_and_at_once(rig: Rig) -> None:
    broken = await rig.client.get("/v1/stream/5", params={"failAfter": 2})
    lines = [json.loads(line) for line in broken.text.splitlines()]
    assert [list(line) for line in lines] == [["result"], ["result"], ["error"]]
    assert lines[-1]["error"]["code"] == 13 and lines[-1]["error"]["message"] == "stream broke"
    at_once = await rig.client.get("/v1/stream/5", params={"failFirst": "true"})
    assert at_once.status_code == 404 and at_once.json()["code"] == 5


async def test_server_streaming_as_sse(rig: Rig) -> None:
    headers = {"Accept": "text/event-stream"}
    async with rig.client.stream(
        "GET", "/v1/stream/3", params={"failAfter": 2}, headers=headers
    ) as r:
        assert r.headers["content-type"] == "text/event-stream"
        text = (await r.aread()).decode()
    events = [e for e in text.split("\n\n") if e]
    assert json.loads(events[0].removeprefix("data: "))["name"] == "shelves/1/books/0"
    assert events[2].startswith("event: error\ndata: ")
    assert json.loads(events[2].split("data: ", 1)[1])["code"] == 13


async def test_auth_missing_invalid_and_scopes(rig: Rig) -> None:
    missing = await rig.client.get("/v1/users/me/whoami")
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"].startswith("Bearer")
    assert missing.json()["details"][0]["reason"] == "TOKEN_MISSING"
    invalid = await rig.client.get("/v1/users/me/whoami", headers={"Authorization": "Bearer x"})
    assert invalid.status_code == 401
    assert 'error="invalid_token"' in invalid.headers["www-authenticate"]
    not_admin = await rig.client.get("/v1/admin/users/u1", headers={"Authorization": "Bearer good"})
    assert not_admin.status_code == 403
    assert not_admin.json()["details"][0]["reason"] == "MISSING_SCOPE"
    admin = await rig.client.get("/v1/admin/users/u1", headers={"Authorization": "Bearer admin"})
    assert admin.status_code == 200


async def test_headers_identity_users_me_and_deadline(rig: Rig) -> None:
    r = await rig.client.get(
        "/v1/users/me/whoami",
        headers={
            "Authorization": "Bearer good",
            "Grpc-Metadata-X-Custom": "hello",
            "Grpc-Metadata-X-Tips-User": "mallory",  # a forged identity is dropped
            "Grpc-Metadata-Blob-Bin": base64.b64encode(b"\x01\x02").decode(),
            "Grpc-Timeout": "3S",
            "X-Forwarded-For": "203.0.113.7",
            "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        },
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["name"] == "users/u1"  # users/me resolved to the caller
    md = body["metadata"]
    assert md["x-custom"] == "hello"
    # The user reaches the backend as the verified token only, never as a header.
    assert not any(key.startswith("x-tips-") for key in md)
    assert base64.b64decode(md["blob-bin"]) == b"\x01\x02"
    assert md["authorization"] == "Bearer good"
    assert md["x-forwarded-for"] == "203.0.113.7, 127.0.0.1"
    assert md["x-forwarded-host"].startswith("127.0.0.1:")
    assert md["traceparent"].split("-")[1] == "0af7651916cd43dd8448eb211c80319c"
    assert 2.0 < body["deadlineSeconds"] <= 3.2  # grpc rounds the encoded timeout up
    # Response header metadata comes back as Grpc-Metadata-*.
    assert r.headers["grpc-metadata-x-answer"] == "42"
    assert base64.b64decode(r.headers["grpc-metadata-x-raw-bin"]) == b"\x00\x01"


async def test_default_deadline_applies_without_grpc_timeout(rig: Rig) -> None:
    r = await rig.client.get("/v1/users/u1/whoami", headers={"Authorization": "Bearer good"})
    seconds = r.json()["deadlineSeconds"]
    assert 5.0 < seconds <= 10.2  # Settings().default_deadline_seconds is 10


async def test_healthz_still_served(rig: Rig) -> None:
    r = await rig.client.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


async def test_large_answers_are_gzipped_when_the_client_accepts_it(rig: Rig) -> None:
    sent = {"name": "b", "maybeText": "walk " * 400}  # well over the 1 KiB threshold
    zipped = await rig.client.post("/v1/echo", json=sent, headers={"Accept-Encoding": "gzip"})
    assert zipped.status_code == 200
    assert zipped.headers["content-encoding"] == "gzip"
    assert int(zipped.headers["content-length"]) < len(sent["maybeText"])
    assert zipped.json()["maybeText"] == sent["maybeText"]  # httpx decodes it
    plain = await rig.client.post("/v1/echo", json=sent, headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in plain.headers
    small = await rig.client.post(
        "/v1/echo", json={"name": "b"}, headers={"Accept-Encoding": "gzip"}
    )
    assert "content-encoding" not in small.headers
