"""OpenAPI 3.1 for the REST edge, derived from the same descriptors the gateway transcodes.

One operation per HTTP binding (additional bindings included). Paths follow
grpc-gateway v2's transcoding rules, with one representation choice: a
variable that spans several segments, ``{name=users/*/tips/*}``, is expanded
into its literals and one path parameter per wildcard,
``/users/{usersId}/tips/{tipsId}`` (the naming of Google's discovery
documents), because an OpenAPI path parameter cannot hold a ``/``: a client
built from ``/v1/{name}`` would send ``users%2Fu1%2Ftips%2Ft1`` as one
segment, which does not match the route. ``x-proto-field`` on each such
parameter, and ``x-path-template`` on the operation, give the mapping back.

Computed once at start-up (``build_openapi``); the output is deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.descriptor_pool import DescriptorPool

from gateway import descriptors, pathtemplate
from gateway.openapi_schema import (
    NOT_IN_QUERY,
    STATUS,
    WELL_KNOWN,
    Schema,
    SchemaBuilder,
    comments,
    is_map,
    is_output_only,
    is_required,
    ref,
)

_OPENAPI_VERBS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
_SECURITY_SCHEME = "bearerAuth"
# Nested messages are flattened into dotted query parameters down to this depth.
_MAX_QUERY_DEPTH = 4
NDJSON = "application/x-ndjson"
SSE = "text/event-stream"


@dataclass(frozen=True)
class PathParam:
    name: str  # the OpenAPI parameter name
    field_path: str  # the request field it fills (part of), "" for a bare wildcard
    whole: bool  # True when the parameter is the field's entire value
    deep: bool  # True for "**": the value may span several segments


def build_openapi(
    image: descriptor_pb2.FileDescriptorSet,
    pool: DescriptorPool,
    *,
    title: str,
    version: str,
    server_url: str | None = None,
) -> dict[str, Any]:
    """The OpenAPI 3.1 document of every HTTP binding of the image's services."""
    notes = comments(image)
    schemas = SchemaBuilder(notes)
    paths: dict[str, dict[str, Any]] = {}
    tags: list[dict[str, str]] = []
    unsupported: list[dict[str, str]] = []
    all_services = list(descriptors.services(pool, image))
    short_names = [s.name for s in all_services]
    for service in all_services:
        tag = service.name if short_names.count(service.name) == 1 else service.full_name
        bindings = [b for m in service.methods for b in descriptors.http_bindings(m)]
        if not bindings:
            continue
        tags.append(_tag(tag, notes.get(service.full_name, "")))
        for binding in bindings:
            verb = binding.verb.lower()
            if verb not in _OPENAPI_VERBS:
                # OpenAPI has no place for custom verbs such as SEARCH: list them.
                unsupported.append({"method": verb.upper(), "path": binding.path})
                continue
            template = pathtemplate.parse(binding.path)
            key, params = openapi_path(template)
            item = paths.setdefault(key, {})
            if verb in item:
                raise ValueError(f"{verb.upper()} {key} is bound twice ({binding.path})")
            operation_id = f"{tag.replace('.', '_')}_{binding.method.name}"
            if binding.index:
                operation_id += f"_{binding.index + 1}"
            item[verb] = _operation(binding, template, params, tag, operation_id, schemas, notes)
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version, "description": _INFO},
    }
    if server_url:
        document["servers"] = [{"url": server_url}]
    document["tags"] = tags
    document["security"] = [{_SECURITY_SCHEME: []}]
    document["paths"] = paths
    document["components"] = {
        "schemas": schemas.components(),
        "responses": {
            "Error": {
                "description": "An error: google.rpc.Status with its details. The HTTP "
                "status follows the gRPC code as grpc-gateway v2 maps it.",
                "content": {"application/json": {"schema": ref(STATUS)}},
            }
        },
        "securitySchemes": {
            _SECURITY_SCHEME: {
                "type": "http",
                "scheme": "bearer",
                "bearerFormat": "JWT",
                "description": "An access token from the auth service (POST "
                "/v1/sessions:signIn), checked at the edge against its JWKS.",
            }
        },
    }
    if unsupported:
        document["x-unsupported-bindings"] = unsupported
    return document


_INFO = (
    "Generated from the protobuf descriptors the gateway transcodes; no route is "
    "written by hand.\n\n"
    "- JSON is proto3 JSON: lowerCamelCase names (proto names are accepted on "
    "input), 64-bit integers as strings, enums by name, unknown fields ignored.\n"
    "- A path variable that spans several segments, such as "
    "`{name=users/*/tips/*}`, appears as one parameter per wildcard "
    "(`users/{usersId}/tips/{tipsId}`); `x-proto-field` names the field it fills.\n"
    "- `users/me` in a path means the signed-in caller.\n"
    "- Errors are google.rpc.Status objects (`code`, `message`, `details`).\n"
    "- Server-streaming methods answer with newline-delimited JSON "
    '(`{"result": ...}` per message, a final `{"error": ...}` on failure), or '
    "with Server-Sent Events when the request sends `Accept: text/event-stream` "
    "(a `data:` event per message, `event: error` on failure).\n"
    "- Client-streaming and bidi methods take a body of many JSON values, one per "
    "message, separated by whitespace or nothing (`{...}\\n{...}`); each is "
    "checked and sent as it arrives."
)


def _tag(name: str, description: str) -> dict[str, str]:
    return {"name": name, "description": description} if description else {"name": name}


def openapi_path(template: pathtemplate.Template) -> tuple[str, list[PathParam]]:
    """The OpenAPI path key for a template and the parameters in it, in order."""
    parts: list[str] = []
    params: list[PathParam] = []
    used: set[str] = set()

    def add(name: str, field_path: str, whole: bool, deep: bool) -> None:
        unique, n = name, 2
        while unique in used:
            unique, n = f"{name}{n}", n + 1
        used.add(unique)
        parts.append("{" + unique + "}")
        params.append(PathParam(unique, field_path, whole, deep))

    for segment in template.segments:
        if isinstance(segment, pathtemplate.Variable):
            whole = len(segment.segments) == 1
            for piece in segment.segments:
                if piece not in (pathtemplate.WILDCARD, pathtemplate.DEEP_WILDCARD):
                    parts.append(piece)
                elif whole or not parts or parts[-1].startswith("{"):
                    add(segment.field_path, segment.field_path, whole, piece == "**")
                else:
                    add(parts[-1] + "Id", segment.field_path, whole, piece == "**")
        elif segment in (pathtemplate.WILDCARD, pathtemplate.DEEP_WILDCARD):
            add("wildcard", "", False, segment == pathtemplate.DEEP_WILDCARD)
        else:
            parts.append(segment)
    key = "/" + "/".join(parts) + (f":{template.verb}" if template.verb else "")
    return key, params


def _operation(
    binding: descriptors.HttpBinding,
    template: pathtemplate.Template,
    params: list[PathParam],
    tag: str,
    operation_id: str,
    schemas: SchemaBuilder,
    notes: dict[str, str],
) -> dict[str, Any]:
    method = binding.method
    request = method.input_type
    bound = {v.field_path for v in template.variables}
    access = descriptors.access(method)
    comment = notes.get(f"{method.containing_service.full_name}.{method.name}", "")
    description = [comment]
    if access.public:
        description.append("Public: no access token needed.")
    elif access.scopes:
        scopes = ", ".join(f"`{s}`" for s in access.scopes)
        description.append(f"Requires an access token with scopes: {scopes}.")
    else:
        description.append("Requires an access token.")
    if binding.index:
        description.append(f"An additional binding of `{method.name}`.")
    operation: dict[str, Any] = {
        "tags": [tag],
        "operationId": operation_id,
        "summary": _summary(comment) or method.name,
        "description": "\n\n".join(d for d in description if d),
        "x-grpc-method": f"/{method.containing_service.full_name}/{method.name}",
        "x-path-template": binding.path,
    }
    parameters = [_path_parameter(p, template, request, schemas, notes) for p in params]
    if binding.body != "*":
        excluded = bound | ({binding.body} if binding.body else set())
        parameters += _query_parameters(request, excluded, schemas)
    if parameters:
        operation["parameters"] = parameters
    if binding.body:
        operation["requestBody"] = _request_body(binding.body, request, bound, schemas)
    operation["responses"] = _responses(binding, schemas)
    if access.public:
        operation["security"] = []
    else:
        operation["security"] = [{_SECURITY_SCHEME: []}]
        if access.scopes:
            operation["x-required-scopes"] = list(access.scopes)
    return operation


def _summary(comment: str) -> str:
    first = comment.split("\n\n")[0].replace("\n", " ")
    end = first.find(". ")
    sentence = first if end == -1 else first[: end + 1]
    return sentence if len(sentence) <= 120 else sentence[:117] + "..."


def _path_parameter(
    param: PathParam,
    template: pathtemplate.Template,
    request: Descriptor,
    schemas: SchemaBuilder,
    notes: dict[str, str],
) -> dict[str, Any]:
    field = _resolve(request, param.field_path) if param.field_path else None
    schema: Schema = {"type": "string", "minLength": 1}
    out: dict[str, Any] = {"name": param.name, "in": "path", "required": True}
    if param.whole and field is not None and field.is_repeated and field.message_type is None:
        # Split on "," (grpc-gateway's generator says collectionFormat csv): OpenAPI 3's
        # "simple" style, unexploded.
        schema = {"type": "array", "items": schemas.value(field), "minItems": 1}
        out["style"], out["explode"] = "simple", False
    elif param.whole and field is not None and field.type != FieldDescriptor.TYPE_STRING:
        schema = schemas.value(field)
    if not param.field_path:
        out["description"] = "Any single segment (a wildcard not bound to a field)."
    else:
        texts = [notes.get(field.full_name, "") if field is not None else ""]
        if not param.whole:
            variable = next(v for v in template.variables if v.field_path == param.field_path)
            texts.append(
                f"One segment of `{param.field_path}`, which the path fills as "
                f"`{'/'.join(variable.segments)}`."
            )
        if param.deep:
            texts.append("May span several segments (`**`).")
        text = "\n\n".join(t for t in texts if t)
        if text:
            out["description"] = text
        out["x-proto-field"] = param.field_path
    out["schema"] = schema
    return out


def _resolve(request: Descriptor, field_path: str) -> FieldDescriptor | None:
    field: FieldDescriptor | None = None
    message: Descriptor | None = request
    for name in field_path.split("."):
        if message is None:
            return None
        field = message.fields_by_name.get(name)
        if field is None:
            return None
        message = field.message_type
    return field


def _query_parameters(
    request: Descriptor, excluded: set[str], schemas: SchemaBuilder
) -> list[dict[str, Any]]:
    """One parameter per leaf field not bound by the path or the body (grpc-gateway v2)."""
    out: list[dict[str, Any]] = []

    def walk(
        message: Descriptor,
        proto_prefix: str,
        json_prefix: str,
        chain: tuple[str, ...],
        required: bool,
    ) -> None:
        for field in message.fields:
            proto_path = proto_prefix + field.name
            if proto_path in excluded or is_output_only(field):
                continue
            name = json_prefix + field.json_name
            needed = required and is_required(field)
            target = field.message_type
            if is_map(field):
                schema = schemas.field(field)
                out.append(_query(name, schema, needed, style="deepObject"))
            elif target is None or target.full_name in WELL_KNOWN:
                if target is not None and target.full_name in NOT_IN_QUERY:
                    continue
                schema = schemas.field(field)
                if target is not None and isinstance(schema.get("type"), list):
                    schema["type"] = schema["type"][0]  # a wrapper: null is not sent in a query
                out.append(_query(name, schema, needed, style="form"))
            elif (
                not field.is_repeated
                and target.full_name not in chain
                and len(chain) < _MAX_QUERY_DEPTH
            ):
                chain_next = (*chain, target.full_name)
                walk(target, proto_path + ".", name + ".", chain_next, needed)

    walk(request, "", "", (request.full_name,), True)
    return out


def _query(name: str, schema: Schema, required: bool, *, style: str) -> dict[str, Any]:
    description = schema.pop("description", None)
    schema.pop("readOnly", None)
    out: dict[str, Any] = {"name": name, "in": "query"}
    if description:
        out["description"] = description
    if required:
        out["required"] = True
    if schema.get("type") == "array":
        out["style"], out["explode"] = "form", True  # repeated: ?tag=a&tag=b
    elif style == "deepObject":
        out["style"], out["explode"] = "deepObject", True  # maps: ?labels[k]=v
    out["schema"] = schema
    return out


def _field_at(message: Descriptor, path: str) -> Any:
    """The field a dotted proto path names (``payload.input_value``)."""
    *outer, last = path.split(".")
    current: Any = message
    for name in outer:
        current = current.fields_by_name[name].message_type
    return current.fields_by_name[last]


def _request_body(
    body: str, request: Descriptor, bound: set[str], schemas: SchemaBuilder
) -> dict[str, Any]:
    if body == "*":
        schema = schemas.without(request, bound)
        description = "The request message; fields bound by the path are taken from the path."
    else:
        field = _field_at(request, body)
        inner = {p[len(body) + 1 :] for p in bound if p.startswith(body + ".")}
        if inner and field.message_type is not None and not field.is_repeated:
            schema = schemas.without(field.message_type, inner)
        else:
            schema = schemas.field(field)
            schema.pop("description", None)
        description = f"The request's `{field.json_name}` field."
    return {
        "description": description,
        "required": True,
        "content": {"application/json": {"schema": schema}},
    }


def _responses(binding: descriptors.HttpBinding, schemas: SchemaBuilder) -> dict[str, Any]:
    response = binding.method.output_type
    if binding.response_body:
        field = response.fields_by_name[binding.response_body]
        schema = schemas.field(field)
        schema.pop("description", None)
        schema.pop("readOnly", None)
        description = f"The response's `{field.json_name}` field."
    else:
        schema = schemas.message(response)
        description = f"A `{response.name}`."
    if binding.method.server_streaming:
        line = {
            "type": "object",
            "description": 'One line per message: `{"result": ...}`; on failure a last '
            'line `{"error": ...}` with the google.rpc.Status.',
            "properties": {"result": schema, "error": ref(STATUS)},
        }
        ok: dict[str, Any] = {
            "description": "A stream of messages. Newline-delimited JSON by default; "
            "Server-Sent Events when the request sends `Accept: text/event-stream`. "
            "An error before the first message is an ordinary error response.",
            "content": {
                NDJSON: {"schema": line},
                SSE: {
                    "schema": {
                        "type": "string",
                        "description": "One `data:` event per message (its JSON); on "
                        "failure a last `event: error` whose data is the google.rpc.Status.",
                    }
                },
            },
        }
    else:
        ok = {"description": description, "content": {"application/json": {"schema": schema}}}
    return {"200": ok, "default": {"$ref": "#/components/responses/Error"}}
