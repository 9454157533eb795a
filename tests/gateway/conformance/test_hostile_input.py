"""No input gets a 5xx: byte-level requests the JSON and HTTP layers must refuse cleanly.

Each case is written to the gateway's socket as raw bytes (no client library
normalising them) and must get a 4xx google.rpc.Status that names the
problem, or a normal answer where the input is legal. Cases the HTTP parser
itself refuses (control bytes in a header) get its plain 400: they never
reach the edge's code.
"""

from __future__ import annotations

import asyncio
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pytest

if TYPE_CHECKING:
    from tests.gateway.conformance.conftest import Rig

pytestmark = pytest.mark.integration
AUTH = {"Authorization": "Bearer good"}


async def send_raw(
    rig: Rig, method: str, path: str, body: bytes, headers: dict[str, str]
) -> tuple[int, bytes]:
    url = urlsplit(rig.base_url)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    head = f"{method} {path} HTTP/1.1\r\nHost: edge\r\nConnection: close\r\n"
    head += f"Content-Length: {len(body)}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    writer.write(head.encode("latin-1") + b"\r\n" + body)
    await writer.drain()
    async with asyncio.timeout(30):
        answer = await reader.read()
    writer.close()
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


def status_json(body: bytes) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(body)
    assert set(parsed) == {"code", "message", "details"}, parsed
    return parsed


DEEP_OBJECT = b'{"inner":' * 5000 + b"{}" + b"}" * 5000
DEEP_ARRAY = b'{"tags":' + b"[" * 100_000 + b"]" * 100_000 + b"}"


def nested_inner(levels: int) -> bytes:
    """``{"inner": {"next": {"next": ...}}}``: ``levels`` messages inside each other."""
    return b'{"inner":' + b'{"next":' * (levels - 1) + b"{}" + b"}" * levels


CASES: list[tuple[str, str, str, bytes, dict[str, str], int, str]] = [
    # (id, method, path, body, headers, HTTP status, text the message must contain)
    ("lone-surrogate", "POST", "/v1/echo", b'{"name":"\\ud800"}', {}, 400, "name: not valid UTF-8"),
    ("invalid-utf8-body", "POST", "/v1/echo", b'{"name":"\xff"}', {}, 400, "body: malformed JSON"),
    ("deep-object", "POST", "/v1/echo", DEEP_OBJECT, {}, 400, "nested too deeply"),
    ("deep-array", "POST", "/v1/echo", DEEP_ARRAY, {}, 400, "nested too deeply"),
    ("nan-literal", "POST", "/v1/echo", b'{"ratio":NaN}', {}, 400, "NaN is not JSON"),
    (
        "huge-integer-literal",
        "POST",
        "/v1/echo",
        b'{"big":' + b"9" * 5000 + b"}",
        {},
        400,
        "malformed JSON",
    ),
    (
        "huge-integer-string",
        "POST",
        "/v1/echo",
        b'{"big":"' + b"9" * 5000 + b'"}',
        {},
        400,
        "big: expected an integer",
    ),
    ("not-utf8-path", "GET", "/v1/echo/%ff%fe", b"", {}, 400, "name: not valid UTF-8"),
    (
        "surrogate-in-query",
        "GET",
        "/v1/echo/x?tags=%ed%a0%80",
        b"",
        {},
        400,
        "tags: not valid UTF-8",
    ),
    (
        "bad-bin-header",
        "GET",
        "/v1/users/u1/whoami",
        b"",
        {**AUTH, "Grpc-Metadata-X-Bin": "!!!"},
        400,
        "Grpc-Metadata-x-bin",
    ),
    (
        "oversize-header",
        "GET",
        "/v1/users/u1/whoami",
        b"",
        {**AUTH, "Grpc-Metadata-X": "v" * 20000},
        400,
        "longer than 8192 bytes",
    ),
    (
        "oversize-metadata",
        "GET",
        "/v1/users/u1/whoami",
        b"",
        {**AUTH, **{f"Grpc-Metadata-K{i}": "v" * 4000 for i in range(4)}},
        400,
        "in all",
    ),
    (
        "bad-timeout",
        "GET",
        "/v1/echo/x",
        b"",
        {"Grpc-Timeout": "99999999999H"},
        400,
        "Grpc-Timeout",
    ),
    ("null-body", "POST", "/v1/echo", b"null", {}, 400, "expected a JSON object"),
    (
        "oversize-body",
        "POST",
        "/v1/echo",
        b'{"name":"' + b"a" * (4 * 1024 * 1024) + b'"}',
        {},
        400,
        "body: larger than",
    ),
]


@pytest.mark.parametrize(
    ("method", "path", "body", "headers", "status", "says"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
async def test_bad_input_is_a_4xx_that_names_the_problem(
    rig: Rig, method: str, path: str, body: bytes, headers: dict[str, str], status: int, says: str
) -> None:
    code, payload = await send_raw(rig, method, path, body, headers)
    assert code == status, payload[:300]
    error = status_json(payload)
    assert says in error["message"], error["message"]
    assert len(payload) < 4096, "an error must not echo the input back"


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("Grpc-Metadata-X", "caf\xe9"),
        ("User-Agent", "app\xff/1.0"),
        ("Referer", "https://x/caf\xe9"),
        ("Grpc-Metadata-Bad@Key", "v"),
    ],
    ids=["non-ascii-value", "non-ascii-user-agent", "non-ascii-permanent-header", "invalid-key"],
)
async def test_headers_grpc_cannot_carry_are_skipped(rig: Rig, header: str, value: str) -> None:
    """As grpc-gateway: the call goes through without them (not a 500, not a refusal)."""
    code, payload = await send_raw(rig, "GET", "/v1/users/u1/whoami", b"", {**AUTH, header: value})
    if header.endswith("@Key"):
        assert code == 400  # the HTTP parser refuses the header name itself
        return
    assert code == 200, payload[:300]
    seen = json.loads(payload)["metadata"]
    assert "x" not in seen and "x-forwarded-user-agent" not in seen
    assert "grpcgateway-user-agent" not in seen and "grpcgateway-referer" not in seen


async def test_an_enormous_deadline_is_capped_not_expired(rig: Rig) -> None:
    code, payload = await send_raw(
        rig, "GET", "/v1/users/u1/whoami", b"", {**AUTH, "Grpc-Timeout": "99999999H"}
    )
    assert code == 200, payload[:300]
    # Capped at a day (gRPC rounds the deadline it sends up to its unit).
    assert 0 < json.loads(payload)["deadlineSeconds"] < 86400 * 1.01


async def test_messages_nested_past_protobufs_limit_are_refused(rig: Rig) -> None:
    """JSON parses 150 levels; protobuf's parsers refuse past 100, so the edge does first."""
    code, payload = await send_raw(rig, "POST", "/v1/echo", nested_inner(150), {})
    assert code == 400
    assert "nested deeper than 100 levels" in status_json(payload)["message"]
    code, payload = await send_raw(rig, "POST", "/v1/echo", nested_inner(50), {})
    assert code == 200, payload[:300]


LEFT_OUT = r"[bB]lock|/v1/fail/|\{inner\.label\}"


@pytest.mark.timeout(400)
async def test_schemathesis_finds_no_server_error(rig: Rig, tmp_path: Path) -> None:
    """Property-based requests for every operation of the conformance API: no 5xx.

    Left out: Block and BlockStream (they wait as long as they are told to),
    Fail (it answers the status it is asked for, 5xx included), and the route
    with a dotted path parameter, ``{inner.label}``, which schemathesis cannot
    fill in ("Schema Error"; the document is valid OpenAPI 3.1 and names it as
    grpc-gateway's generator does).
    """
    st = Path(sys.executable).parent / "st"
    process = await asyncio.create_subprocess_exec(
        str(st), "run", f"{rig.base_url}/openapi.json", "--url", rig.base_url,
        "--checks", "not_a_server_error", "--exclude-path-regex", LEFT_OUT,
        "--max-examples", "25", "--request-timeout", "10", "--generation-deterministic",
        "--phases", "examples,coverage,fuzzing", "-H", "Authorization: Bearer admin",
        "--report", "junit", "--report-dir", str(tmp_path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    # The gateway runs in this event loop: wait for the run without blocking it.
    async with asyncio.timeout(240):
        output, _ = await process.communicate()
    tested, server_errors = junit_failures(tmp_path)
    print(f"schemathesis: {tested} operations tested")
    assert tested >= 10, output.decode()[-3000:]
    assert not server_errors, "\n".join(server_errors)


def junit_failures(report_dir: Path) -> tuple[int, list[str]]:
    """Operations in schemathesis' JUnit report, and the failures among them."""
    [report] = list(report_dir.glob("junit*.xml"))
    cases = list(ET.parse(report).iter("testcase"))
    failures = [
        f"{case.get('name')}: {(failure.text or failure.get('message') or '')[:400]}"
        for case in cases
        for failure in case.findall("failure") + case.findall("error")
    ]
    return len(cases), failures
