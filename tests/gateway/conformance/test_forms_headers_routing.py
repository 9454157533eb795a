"""grpc-gateway's permanent-header mapping, form fields, repeated path variables,
and its answers to a wrong method or an unknown path, over real HTTP.

What grpc-gateway v2 does, read from its source (docs/gateway.md names the
functions): ``runtime/context.go`` (annotateContext, isPermanentHTTPHeader),
``runtime/mux.go`` (ServeHTTP, the "path length fallback"), ``runtime/errors.go``
(DefaultRoutingErrorHandler) and the generated handlers (``req.ParseForm``,
``runtime.StringSlice`` and its kin).
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlencode

import pytest
from openapi_spec_validator import OpenAPIV31SpecValidator, validate

if TYPE_CHECKING:
    from tests.gateway.conformance.conftest import Rig

from tests.gateway.conformance.conftest import violations

pytestmark = pytest.mark.integration

AUTH = {"Authorization": "Bearer good"}
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


# --- permanent headers ------------------------------------------------------


async def test_permanent_headers_go_upstream_as_grpcgateway_metadata(rig: Rig) -> None:
    sent = {
        "Accept": "application/json",
        "Accept-Language": "de-CH",
        "User-Agent": "tips-app/1.0 (iPhone)",
        "Content-Type": "application/json",
        "Origin": "https://app.example",
        "Referer": "https://app.example/page",
        "Cache-Control": "no-cache",
        "If-None-Match": '"e1"',
        "Via": "1.1 edge-proxy",
        "Cookie": "session=secret",  # a credential: not passed on
        "X-Not-Permanent": "dropped",  # neither permanent nor Grpc-Metadata-*
    }
    r = await rig.client.get("/v1/users/u1/whoami", headers={**AUTH, **sent})
    assert r.status_code == 200, r.text
    md = r.json()["metadata"]
    mapped = {k: v for k, v in md.items() if k.startswith("grpcgateway-")}
    assert mapped == {
        "grpcgateway-accept": "application/json",
        "grpcgateway-accept-language": "de-CH",
        "grpcgateway-user-agent": "tips-app/1.0 (iPhone)",
        "grpcgateway-content-type": "application/json",
        "grpcgateway-origin": "https://app.example",
        "grpcgateway-referer": "https://app.example/page",
        "grpcgateway-cache-control": "no-cache",
        "grpcgateway-if-none-match": '"e1"',
        "grpcgateway-via": "1.1 edge-proxy",
    }
    # Authorization goes once, as the verified token; Host only as x-forwarded-host.
    assert md["authorization"] == "Bearer good"
    assert "x-not-permanent" not in md
    # The User-Agent goes once, under grpc-gateway's name (the auth service reads it).
    assert "x-forwarded-user-agent" not in md
    assert md["x-forwarded-host"].startswith("127.0.0.1:")
    assert md["x-forwarded-for"] == "127.0.0.1"


async def test_permanent_headers_past_the_metadata_cap_are_skipped(rig: Rig) -> None:
    """Counted in the same 12 KiB as Grpc-Metadata-*, which come first; a browser
    sends them unasked, so one that does not fit is left out, not refused."""
    headers = {**AUTH, "Grpc-Metadata-Big": "a" * 8000, "Referer": "https://x/" + "b" * 5000}
    r = await rig.client.get("/v1/users/u1/whoami", headers=headers)
    assert r.status_code == 200, r.text
    md = r.json()["metadata"]
    assert md["big"] == "a" * 8000 and "grpcgateway-referer" not in md
    alone = await rig.client.get(
        "/v1/users/u1/whoami", headers={**AUTH, "Referer": headers["Referer"]}
    )
    assert alone.json()["metadata"]["grpcgateway-referer"] == headers["Referer"]


# --- form bodies --------------------------------------------------------------


FORM_FIELDS = [
    ("inner.label", "deep"),
    ("tags", "a"),
    ("tags", "b"),
    ("labels[k1]", "v1"),
    ("color", "COLOR_BLUE"),
    ("colors", "1"),
    ("when", "2024-05-01T12:00:00Z"),
    ("span", "1.5s"),
    ("mask", "inner.label,maybeCount"),
    ("maybeCount", "7"),
    ("big", "9007199254740993"),
    ("name", "not-the-path"),  # bound by the path: ignored, as in a query
    ("unknownField", "ignored"),
]


@pytest.mark.parametrize("method", ["POST", "PUT"])
async def test_form_fields_fill_a_route_without_a_body_as_query_parameters(
    rig: Rig, method: str
) -> None:
    """As Go's ``req.ParseForm`` in grpc-gateway's generated handlers: the form's
    fields join the query's (the form's first), read by the query rules."""
    form = urlencode(FORM_FIELDS).encode()
    r = await rig.client.request(
        method, "/v1/echoForm/n1", params={"tags": "c"}, content=form, headers=FORM
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["name"] == "n1"
    assert body["inner"] == {"label": "deep", "depth": 0, "next": None}
    assert body["tags"] == ["a", "b", "c"]  # the form's values, then the query's
    assert body["labels"] == {"k1": "v1"}
    assert body["color"] == "COLOR_BLUE" and body["colors"] == ["COLOR_RED"]
    assert body["when"] == "2024-05-01T12:00:00Z" and body["span"] == "1.500s"
    assert body["mask"] == "inner.label,maybeCount" and body["maybeCount"] == 7
    assert body["big"] == "9007199254740993"


@pytest.mark.parametrize(
    ("form", "query", "field"),
    [
        ("big=twelve", "", "big"),
        ("color=PURPLE", "", "color"),
        ("counts[k]=NaN", "", "counts[k]"),
        ("inner.label=a", "inner.label=b", "inner.label"),  # one value too many
        ("inner=whole", "", "inner"),
    ],
)
async def test_bad_form_fields_are_400_naming_the_field(
    rig: Rig, form: str, query: str, field: str
) -> None:
    url = "/v1/echoForm/n1" + (f"?{query}" if query else "")
    r = await rig.client.post(url, content=form.encode(), headers=FORM)
    assert r.status_code == 400, r.text
    assert r.json()["code"] == 3 and field in violations(r.json())


async def test_a_form_posted_to_a_path_only_get_serves_is_that_get(rig: Rig) -> None:
    """grpc-gateway's "path length fallback" (runtime/mux.go): an HTML form's POST
    reaches the GET route of its path, the form's fields as query parameters."""
    r = await rig.client.post(
        "/v1/echo/x", params={"tags": "q"}, content=b"tags=f&flag=true", headers=FORM
    )
    assert r.status_code == 200, r.text
    assert r.json()["name"] == "x" and r.json()["tags"] == ["f", "q"] and r.json()["flag"] is True
    # Only for exactly that Content-Type, as grpc-gateway compares it; else a wrong method.
    for content_type in ("application/x-www-form-urlencoded; charset=utf-8", "application/json"):
        wrong = await rig.client.post(
            "/v1/echo/x", content=b"tags=f", headers={"Content-Type": content_type}
        )
        assert wrong.status_code == 405 and wrong.json()["code"] == 12, content_type
    # Never to a method other than GET.
    book = await rig.client.post("/v1/shelves/s1/books/b1", content=b"x=1", headers=FORM)
    assert book.status_code == 200, book.text
    assert book.json()["title"] == "Dune"  # GetBook's answer, not DeleteBook's empty one


async def test_a_form_body_on_a_route_with_a_body_is_refused(rig: Rig) -> None:
    """grpc-gateway decodes a body rule's body with its JSON marshaler whatever the
    Content-Type (runtime/marshaler_registry.go), so a form there is a 400 and JSON
    sent as a form (``curl -d``'s default Content-Type) is JSON."""
    says = "a form is read only on a route without a body rule: send JSON"
    star = await rig.client.post("/v1/echo", content=b"name=a&tags=b", headers=FORM)
    assert star.status_code == 400 and star.json()["code"] == 3
    assert violations(star.json()) == {"body": says}
    field = await rig.client.put("/v1/echo/n1/inner", content=b"label=a", headers=FORM)
    assert field.status_code == 400 and violations(field.json()) == {"inner": says}
    # An empty body is an empty message, as with JSON.
    empty = await rig.client.post("/v1/echo", content=b"", headers=FORM)
    assert empty.status_code == 200 and empty.json()["name"] == ""
    as_curl_sends_it = await rig.client.post("/v1/echo", content=b'{"name":"c"}', headers=FORM)
    assert as_curl_sends_it.status_code == 200, as_curl_sends_it.text
    assert as_curl_sends_it.json()["name"] == "c"


# --- repeated path variables --------------------------------------------------


async def test_repeated_path_variables_are_split_on_commas(rig: Rig) -> None:
    """As runtime.StringSlice / Int32Slice / EnumSlice in grpc-gateway's generated code."""
    r = await rig.client.get("/v1/lists/a,b%2Cc/1,-2,3/COLOR_RED,2", params={"tags": "q"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["tags"] == ["a", "b", "c"]  # %2C is decoded first, as grpc-gateway's mux does
    assert body["numbers"] == [1, -2, 3]
    assert body["colors"] == ["COLOR_RED", "COLOR_BLUE"]
    one = (await rig.client.get("/v1/lists/solo/7/COLOR_BLUE")).json()
    assert one["tags"] == ["solo"] and one["numbers"] == [7] and one["colors"] == ["COLOR_BLUE"]


@pytest.mark.parametrize(
    ("path", "field", "says"),
    [
        ("/v1/lists/a/1,x/COLOR_RED", "numbers", "expected an integer, got 'x'"),
        ("/v1/lists/a/1,/COLOR_RED", "numbers", "expected an integer, got ''"),
        ("/v1/lists/a/1/COLOR_RED,PURPLE", "colors", "'PURPLE' is not a value of Color"),
        ("/v1/lists/a/1,99999999999/COLOR_RED", "numbers", "out of range"),
    ],
)
async def test_a_bad_element_of_a_repeated_path_variable_is_a_400(
    rig: Rig, path: str, field: str, says: str
) -> None:
    r = await rig.client.get(path)
    assert r.status_code == 400, r.text
    assert says in violations(r.json())[field]


async def test_a_repeated_path_variable_is_an_array_in_openapi(rig: Rig) -> None:
    spec = (await rig.client.get("/openapi.json")).json()
    validate(spec, cls=OpenAPIV31SpecValidator)
    [operation] = [
        item["get"]
        for item in spec["paths"].values()
        if item.get("get", {}).get("x-path-template") == "/v1/lists/{tags}/{numbers}/{colors}"
    ]
    params = {p["name"]: p for p in operation["parameters"] if p["in"] == "path"}
    numbers = params["numbers"]["schema"]
    assert numbers["type"] == "array" and numbers["minItems"] == 1
    assert numbers["items"]["type"] == "integer" and numbers["items"]["format"] == "int32"
    assert params["numbers"]["style"] == "simple" and params["numbers"]["explode"] is False
    assert params["tags"]["schema"]["items"] == {"type": "string"}
    assert params["colors"]["schema"]["items"] == {
        "$ref": "#/components/schemas/conformance.v1.Color"
    }
    # Bound by the path, so not a query parameter as well.
    assert not any(p["name"] == "tags" and p["in"] == "query" for p in operation["parameters"])


# --- wrong method, unknown path -----------------------------------------------


async def test_head_options_and_trailing_slash_as_grpc_gateway_routes_them(rig: Rig) -> None:
    """grpc-gateway serves HEAD and OPTIONS only where a rule names them (custom
    kinds): elsewhere they are a wrong method on a known path, an unknown path else."""
    for method in ("HEAD", "OPTIONS"):
        known = await rig.client.request(method, "/v1/echo/x")
        assert known.status_code == 405, method
        assert known.headers["allow"] == "GET"
        unknown = await rig.client.request(method, "/v1/nothing/here")
        assert unknown.status_code == 404, method
    options = await rig.client.options("/v1/echo/x")
    assert options.json() == {"code": 12, "message": "Method Not Allowed", "details": []}
    # A trailing slash is another path: /v1/books/ is not /v1/books.
    slash = await rig.client.request("SEARCH", "/v1/books/")
    assert slash.status_code == 404
    assert slash.json() == {"code": 5, "message": "Not Found", "details": []}
    assert (await rig.client.get("/v1/shelves/s1/books/b1/")).status_code == 404
    # Deliberately not as grpc-gateway: an empty segment fills no variable (docs/gateway.md).
    assert (await rig.client.get("/v1/echo/")).status_code == 404
