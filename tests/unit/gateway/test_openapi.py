"""OpenAPI 3.1 from descriptors: the product's spec and a test proto using every mapping."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc_tools
import pytest
from google.protobuf import descriptor_pb2
from openapi_spec_validator import OpenAPIV31SpecValidator, validate

from gateway import descriptors, pathtemplate
from gateway.docs_page import docs_html, docs_html_from_spec
from gateway.openapi import NDJSON, SSE, build_openapi

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]
DEMO = Path(__file__).parent / "openapi_proto"
VERBS = ("get", "put", "post", "delete", "patch")
SCHEMAS = "#/components/schemas/"


def operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (verb, path, item[verb])
        for path, item in spec["paths"].items()
        for verb in VERBS
        if verb in item
    ]


def find(spec: dict[str, Any], operation_id: str) -> tuple[str, str, dict[str, Any]]:
    return next(o for o in operations(spec) if o[2]["operationId"] == operation_id)


def schema(spec: dict[str, Any], name: str) -> dict[str, Any]:
    return spec["components"]["schemas"][name]  # type: ignore[no-any-return]


def params(operation: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in operation.get("parameters", [])}


@pytest.fixture(scope="module")
def product() -> tuple[descriptor_pb2.FileDescriptorSet, dict[str, Any]]:
    image = descriptors.load_image()
    pool = descriptors.build_pool(image)
    return image, build_openapi(image, pool, title="Tips", version="v1", server_url="/")


@pytest.fixture(scope="module")
def spec(product: tuple[descriptor_pb2.FileDescriptorSet, dict[str, Any]]) -> dict[str, Any]:
    return product[1]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("demo") / "demo.binpb"
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    subprocess.run(
        [
            sys.executable, "-m", "grpc_tools.protoc",
            f"-I{DEMO}", f"-I{ROOT / 'proto'}", f"-I{ROOT / 'third_party'}", f"-I{well_known}",
            "--include_imports", "--include_source_info", f"--descriptor_set_out={out}",
            "demo/v1/demo.proto",
        ],
        check=True,
    )  # fmt: skip
    image = descriptors.load_image(out)
    return build_openapi(image, descriptors.build_pool(image), title="Demo", version="1")


def test_product_spec_is_valid_openapi_3_1(spec: dict[str, Any]) -> None:
    validate(spec, cls=OpenAPIV31SpecValidator)
    assert spec["openapi"] == "3.1.0"
    assert spec["servers"] == [{"url": "/"}]


def test_every_binding_appears_exactly_once(
    product: tuple[descriptor_pb2.FileDescriptorSet, dict[str, Any]],
) -> None:
    image, spec = product
    pool = descriptors.build_pool(image)
    expected = sorted(
        (b.verb.lower(), b.path)
        for service in descriptors.services(pool, image)
        for method in service.methods
        for b in descriptors.http_bindings(method)
    )
    seen = sorted((verb, op["x-path-template"]) for verb, _, op in operations(spec))
    assert seen == expected
    ids = [op["operationId"] for _, _, op in operations(spec)]
    assert len(ids) == len(set(ids))
    assert "AuthService_CompleteWebSignIn_2" in ids  # the additional GET binding


def test_a_request_built_from_the_spec_hits_its_route(spec: dict[str, Any]) -> None:
    for _, path, op in operations(spec):
        values = {p["name"]: f"v{i}" for i, p in enumerate(op.get("parameters", []))}
        built = path
        for name, value in values.items():
            built = built.replace("{" + name + "}", value)
        match = pathtemplate.parse(op["x-path-template"]).match(built)
        assert match is not None, (path, op["x-path-template"], built)
        # Each path parameter's value lands in the field it names.
        for p in op.get("parameters", []):
            if p["in"] == "path":
                assert values[p["name"]] in match[p["x-proto-field"]]


def test_multi_segment_variables_become_one_parameter_per_wildcard(spec: dict[str, Any]) -> None:
    verb, path, op = find(spec, "AuthService_RevokeSession")
    assert (verb, path) == ("post", "/v1/users/{usersId}/sessions/{sessionsId}:revoke")
    assert [(p["name"], p["x-proto-field"]) for p in op["parameters"]] == [
        ("usersId", "name"),
        ("sessionsId", "name"),
    ]


def test_public_routes_need_no_token_and_others_need_bearer(spec: dict[str, Any]) -> None:
    assert find(spec, "AuthService_SignIn")[2]["security"] == []
    assert find(spec, "AuthService_GetJwks")[2]["security"] == []
    _, _, get_profile = find(spec, "ProfileService_GetProfile")
    assert get_profile["security"] == [{"bearerAuth": []}]
    assert spec["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": spec["components"]["securitySchemes"]["bearerAuth"]["description"],
    }
    admin = [op for _, _, op in operations(spec) if op.get("x-required-scopes") == ["admin"]]
    assert admin
    assert all("`admin`" in op["description"] for op in admin)


def test_comments_become_descriptions(spec: dict[str, Any]) -> None:
    tags = {t["name"]: t.get("description", "") for t in spec["tags"]}
    assert tags["AuthService"]
    assert find(spec, "ProfileService_GetProfile")[2]["summary"] == "Gets the user's profile."
    profile = schema(spec, "tips.profile.v1.Profile")
    assert "IANA time zone" in profile["properties"]["timeZone"]["description"]


def test_errors_are_status(spec: dict[str, Any]) -> None:
    status = schema(spec, "google.rpc.Status")
    assert set(status["properties"]) == {"code", "message", "details"}
    assert status["properties"]["details"]["items"]["required"] == ["@type"]
    for _, _, op in operations(spec):
        assert op["responses"]["default"] == {"$ref": "#/components/responses/Error"}


def test_streaming_route_is_ndjson_and_sse(spec: dict[str, Any]) -> None:
    _, _, op = find(spec, "EventsService_ReplaySignals")
    content = op["responses"]["200"]["content"]
    assert set(content) == {NDJSON, SSE}
    line = content[NDJSON]["schema"]["properties"]
    assert line["result"] == {"$ref": SCHEMAS + "tips.events.v1.ReplaySignalsResponse"}
    assert line["error"] == {"$ref": SCHEMAS + "google.rpc.Status"}


def test_spec_is_deterministic(
    product: tuple[descriptor_pb2.FileDescriptorSet, dict[str, Any]],
) -> None:
    image, spec = product
    again = build_openapi(
        image, descriptors.build_pool(image), title="Tips", version="v1", server_url="/"
    )
    assert again == spec
    assert list(again["components"]["schemas"]) == sorted(again["components"]["schemas"])


def test_demo_spec_is_valid(demo: dict[str, Any]) -> None:
    validate(demo, cls=OpenAPIV31SpecValidator)


def test_demo_message_mapping(demo: dict[str, Any]) -> None:
    note = schema(demo, "demo.v1.Note")
    props = note["properties"]
    assert note["required"] == ["text"]  # REQUIRED; OUTPUT_ONLY never required
    assert props["views"]["type"] == "string" and props["views"]["format"] == "int64"
    assert props["views"]["readOnly"] is True
    assert props["bytesUsed"]["format"] == "uint64"
    assert props["labels"] == {
        "type": "object",
        "additionalProperties": {"type": "string"},
        "description": "Free-form labels.",
    }
    assert props["counters"]["additionalProperties"]["format"] == "int64"
    assert "oneof `target`" in props["user"]["description"]
    assert "Oneof `target`" in note["description"]
    assert "oneof" not in props["subtitle"].get("description", "")  # proto3 optional
    assert props["priority"]["type"] == ["integer", "null"]
    assert props["nickname"]["type"] == ["string", "null"]
    assert props["createTime"]["format"] == "date-time"
    assert props["ttl"]["pattern"] == r"^-?\d+(\.\d+)?s$"
    assert props["extra"]["type"] == "object"
    assert props["attachments"]["items"]["properties"]["@type"]["type"] == "string"
    assert props["blob"] == {"type": "string", "format": "byte"}
    assert props["level"] == {"$ref": SCHEMAS + "demo.v1.Level"}
    assert props["tags"] == {"type": "array", "items": {"type": "string"}}
    assert props["parent"] == {"$ref": SCHEMAS + "demo.v1.Note"}  # recursion by reference
    level = schema(demo, "demo.v1.Level")
    assert level["enum"] == ["LEVEL_UNSPECIFIED", "LEVEL_LOW", "LEVEL_HIGH"]
    assert "`LEVEL_HIGH`: Shouted." in level["description"]


def test_demo_query_parameters(demo: dict[str, Any]) -> None:
    verb, path, op = find(demo, "NoteService_ListNotes")
    assert (verb, path) == ("get", "/v1/folders/{foldersId}/notes")
    assert op["security"] == []
    query = {n: p for n, p in params(op).items() if p["in"] == "query"}
    assert set(query) == {
        "pageSize", "filter.minLevel", "filter.tags", "filter.since",
        "labels", "readMask", "archived", "levels", "afterId",
    }  # fmt: skip
    assert query["filter.tags"]["explode"] is True
    assert query["filter.tags"]["schema"]["type"] == "array"
    assert query["filter.minLevel"]["schema"] == {"$ref": SCHEMAS + "demo.v1.Level"}
    assert query["filter.since"]["schema"]["format"] == "date-time"
    assert query["labels"]["style"] == "deepObject"
    assert query["archived"]["schema"]["type"] == "boolean"  # wrapper: no null in a query
    assert query["afterId"]["schema"]["type"] == "string"
    assert query["afterId"]["required"] is True
    assert "required" not in query["filter.minLevel"]  # field not REQUIRED


def test_demo_bodies_and_bindings(demo: dict[str, Any]) -> None:
    _, path, get = find(demo, "NoteService_GetNote")
    assert path == "/v1/folders/{foldersId}/notes/{notesId}"
    assert get["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": SCHEMAS + "demo.v1.Note"
    }
    _, path2, _ = find(demo, "NoteService_GetNote_2")
    assert path2 == "/v1/notes/{name}"
    # body "field": that field's schema, minus the part the path binds.
    _, _, update = find(demo, "NoteService_UpdateNote")
    body = update["requestBody"]["content"]["application/json"]["schema"]
    assert "name" not in body["properties"] and "text" in body["properties"]
    assert [p["name"] for p in update["parameters"] if p["in"] == "query"] == ["updateMask"]
    _, _, create = find(demo, "NoteService_CreateNote")
    assert create["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": SCHEMAS + "demo.v1.Note"
    }
    assert [p["name"] for p in create["parameters"] if p["in"] == "query"] == ["noteId"]
    assert create["x-required-scopes"] == ["writer"]
    # body "*": the request minus path fields; no query parameters.
    _, path3, star = find(demo, "NoteService_StarNote")
    assert path3.endswith(":star")
    body = star["requestBody"]["content"]["application/json"]["schema"]
    assert body["properties"] == {"stars": body["properties"]["stars"]}
    assert body["required"] == ["stars"]
    assert all(p["in"] == "path" for p in star["parameters"])
    # "**" and a custom verb OpenAPI cannot express.
    _, path4, read = find(demo, "NoteService_ReadFile")
    assert path4 == "/v1/files/{path}"
    assert "several segments" in read["parameters"][0]["description"]
    assert demo["x-unsupported-bindings"] == [{"method": "SEARCH", "path": "/v1/files"}]
    _, _, watch = find(demo, "NoteService_WatchNotes")
    assert set(watch["responses"]["200"]["content"]) == {NDJSON, SSE}


def test_docs_page_lists_every_operation_and_loads_nothing_external(
    spec: dict[str, Any],
) -> None:
    html = docs_html_from_spec(spec)
    for _, path, op in operations(spec):
        assert f'id="op-{op["operationId"]}"' in html
        assert path in html
    assert "ReplaySignals" in html and "bearer token" in html and "public" in html
    for page in (html, docs_html("/openapi.json")):
        # Nothing fetched from elsewhere: no external src/href, no @import.
        for attribute in re.findall(r'(?:src|href)\s*=\s*["\']?([^"\'\s>]+)', page, re.I):
            assert not re.match(r"^(https?:)?//", attribute), attribute
        assert "@import" not in page and "<link" not in page


def test_docs_client_page_escapes_the_url() -> None:
    page = docs_html("/x</script><script>alert(1)//")
    assert "</script><script>alert" not in page
