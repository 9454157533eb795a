"""JSON Schemas (OpenAPI 3.1 dialect) for protobuf messages, as the gateway maps them.

The mapping is proto3 JSON as grpc-gateway v2 emits it: lowerCamelCase
property names, 64-bit integers as strings, enums by name, well-known types
in their JSON forms. Comments from the image's SourceCodeInfo become
descriptions; ``google.api.field_behavior`` becomes ``required`` /
``readOnly`` / ``writeOnly``. Everything here runs once, at start-up.
"""

from __future__ import annotations

import copy
from typing import Any

from google.api import field_behavior_pb2
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor

Schema = dict[str, Any]

STATUS = "google.rpc.Status"
# Proto3 JSON's Duration form: seconds with an optional fraction, then "s".
DURATION_PATTERN = r"^-?\d+(\.\d+)?s$"
_INT64 = {"type": "string", "format": "int64", "pattern": r"^-?\d+$"}
_UINT64 = {"type": "string", "format": "uint64", "pattern": r"^\d+$"}
_INT32 = {"type": "integer", "format": "int32", "minimum": -(2**31), "maximum": 2**31 - 1}
_UINT32 = {"type": "integer", "format": "uint32", "minimum": 0, "maximum": 2**32 - 1}

_T = FieldDescriptor
_SCALARS: dict[int, Schema] = {
    _T.TYPE_DOUBLE: {"type": "number", "format": "double"},
    _T.TYPE_FLOAT: {"type": "number", "format": "float"},
    _T.TYPE_INT32: _INT32,
    _T.TYPE_SINT32: _INT32,
    _T.TYPE_SFIXED32: _INT32,
    _T.TYPE_UINT32: _UINT32,
    _T.TYPE_FIXED32: _UINT32,
    _T.TYPE_INT64: _INT64,
    _T.TYPE_SINT64: _INT64,
    _T.TYPE_SFIXED64: _INT64,
    _T.TYPE_UINT64: _UINT64,
    _T.TYPE_FIXED64: _UINT64,
    _T.TYPE_BOOL: {"type": "boolean"},
    _T.TYPE_STRING: {"type": "string"},
    _T.TYPE_BYTES: {"type": "string", "format": "byte"},
}


def _nullable(schema: Schema) -> Schema:
    out = dict(schema)
    out["type"] = [schema["type"], "null"]
    return out


# Well-known types have their own JSON forms; they are never components.
WELL_KNOWN: dict[str, Schema] = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {
        "type": "string",
        "pattern": DURATION_PATTERN,
        "description": 'A duration in seconds with up to 9 fractional digits, e.g. "3.5s".',
    },
    "google.protobuf.FieldMask": {
        "type": "string",
        "description": "Comma-separated field paths in lowerCamelCase, e.g. "
        '"displayName,timeZone".',
    },
    "google.protobuf.Struct": {"type": "object", "additionalProperties": True},
    "google.protobuf.Value": {"description": "Any JSON value."},
    "google.protobuf.ListValue": {"type": "array", "items": {}},
    "google.protobuf.Empty": {"type": "object"},
    "google.protobuf.Any": {
        "type": "object",
        "properties": {"@type": {"type": "string", "description": "The message's type URL."}},
        "required": ["@type"],
        "additionalProperties": True,
        "description": "A message of any type: `@type` names it, the other keys are its fields.",
    },
    "google.protobuf.DoubleValue": _nullable(_SCALARS[_T.TYPE_DOUBLE]),
    "google.protobuf.FloatValue": _nullable(_SCALARS[_T.TYPE_FLOAT]),
    "google.protobuf.Int64Value": _nullable(_INT64),
    "google.protobuf.UInt64Value": _nullable(_UINT64),
    "google.protobuf.Int32Value": _nullable(_INT32),
    "google.protobuf.UInt32Value": _nullable(_UINT32),
    "google.protobuf.BoolValue": _nullable(_SCALARS[_T.TYPE_BOOL]),
    "google.protobuf.StringValue": _nullable(_SCALARS[_T.TYPE_STRING]),
    "google.protobuf.BytesValue": _nullable(_SCALARS[_T.TYPE_BYTES]),
}
# Forms that a query parameter cannot carry.
NOT_IN_QUERY = {
    "google.protobuf.Struct",
    "google.protobuf.Value",
    "google.protobuf.ListValue",
    "google.protobuf.Empty",
    "google.protobuf.Any",
}

STATUS_SCHEMA: Schema = {
    "type": "object",
    "description": "The error model of gRPC and of this API (google.rpc.Status).",
    "properties": {
        "code": {
            **_INT32,
            "description": "The google.rpc.Code value, e.g. 3 for INVALID_ARGUMENT.",
        },
        "message": {"type": "string", "description": "A developer-facing error message."},
        "details": {
            "type": "array",
            "description": "Typed details such as google.rpc.BadRequest or "
            "google.rpc.ErrorInfo, each naming its type in `@type`.",
            "items": WELL_KNOWN["google.protobuf.Any"],
        },
    },
}


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def behaviors(field: FieldDescriptor) -> set[int]:
    """The field's ``google.api.field_behavior`` values."""
    options = field.GetOptions()
    return set(options.Extensions[field_behavior_pb2.field_behavior])


def is_required(field: FieldDescriptor) -> bool:
    marks = behaviors(field)
    return field_behavior_pb2.REQUIRED in marks and field_behavior_pb2.OUTPUT_ONLY not in marks


def is_output_only(field: FieldDescriptor) -> bool:
    return field_behavior_pb2.OUTPUT_ONLY in behaviors(field)


def is_map(field: FieldDescriptor) -> bool:
    message = field.message_type
    return message is not None and message.GetOptions().map_entry


class SchemaBuilder:
    """Builds component schemas for the messages and enums it is asked to reference."""

    def __init__(self, comments: dict[str, str]) -> None:
        self.comments = comments
        self.schemas: dict[str, Schema] = {STATUS: STATUS_SCHEMA}
        self._pending: list[Descriptor | EnumDescriptor] = []

    # References -----------------------------------------------------------

    def message(self, message: Descriptor) -> Schema:
        """A schema for ``message``: its JSON form for a well-known type, else a $ref."""
        if message.full_name in WELL_KNOWN:
            return copy.deepcopy(WELL_KNOWN[message.full_name])
        if message.full_name not in self.schemas:
            self.schemas[message.full_name] = {}  # reserve: recursive messages refer back
            self._pending.append(message)
        return ref(message.full_name)

    def enum(self, enum: EnumDescriptor) -> Schema:
        if enum.full_name == "google.protobuf.NullValue":
            return {"type": "null"}
        if enum.full_name not in self.schemas:
            self.schemas[enum.full_name] = {}
            self._pending.append(enum)
        return ref(enum.full_name)

    def value(self, field: FieldDescriptor) -> Schema:
        """The schema of one value of ``field`` (an item, for a repeated field)."""
        if field.message_type is not None:
            return self.message(field.message_type)
        if field.enum_type is not None:
            return self.enum(field.enum_type)
        return dict(_SCALARS[field.type])

    def field(self, field: FieldDescriptor) -> Schema:
        """The schema of ``field`` as a property: arrays, maps and annotations included."""
        if field.message_type is not None and is_map(field):
            value_field = field.message_type.fields_by_name["value"]
            schema: Schema = {"type": "object", "additionalProperties": self.value(value_field)}
        elif field.is_repeated:
            schema = {"type": "array", "items": self.value(field)}
        else:
            schema = self.value(field)
        notes = [self.comments.get(field.full_name, "")]
        marks = behaviors(field)
        if field_behavior_pb2.OUTPUT_ONLY in marks:
            schema["readOnly"] = True
        if field_behavior_pb2.INPUT_ONLY in marks:
            schema["writeOnly"] = True
        if field_behavior_pb2.IMMUTABLE in marks:
            notes.append("Immutable: set on create, ignored on update.")
        oneof = field.containing_oneof
        if oneof is not None and not _synthetic(field):
            others = ", ".join(f"`{f.json_name}`" for f in oneof.fields)
            notes.append(f"Part of oneof `{oneof.name}`: set at most one of {others}.")
        if field.GetOptions().deprecated:
            schema["deprecated"] = True
        description = "\n\n".join(n for n in notes if n)
        if description:
            schema["description"] = description
        return schema

    def without(self, message: Descriptor, paths: set[str]) -> Schema:
        """``message``'s schema minus the fields at ``paths`` (dotted proto names).

        Used for request bodies whose fields are partly bound by the path:
        a client does not send them twice.
        """
        if not paths:
            return self.message(message)
        top = {p.partition(".")[0] for p in paths}
        properties: dict[str, Schema] = {}
        required: list[str] = []
        for field in message.fields:
            if field.name not in top:
                properties[field.json_name] = self.field(field)
            else:
                nested = {p.partition(".")[2] for p in paths if p.startswith(field.name + ".")}
                if not nested or field.message_type is None:
                    continue  # bound as a whole by the path
                properties[field.json_name] = self.without(field.message_type, nested)
            if is_required(field) and field.name not in paths:
                required.append(field.json_name)
        schema: Schema = {"type": "object", "properties": properties}
        if required:
            schema["required"] = required
        description = self.comments.get(message.full_name)
        if description:
            schema["description"] = description
        return schema

    # Components -----------------------------------------------------------

    def components(self) -> dict[str, Schema]:
        """Every referenced schema, sorted by name (deterministic output)."""
        while self._pending:
            item = self._pending.pop()
            if isinstance(item, EnumDescriptor):
                self.schemas[item.full_name] = self._enum_schema(item)
            else:
                self.schemas[item.full_name] = self._message_schema(item)
        return {name: self.schemas[name] for name in sorted(self.schemas)}

    def _message_schema(self, message: Descriptor) -> Schema:
        schema: Schema = {"type": "object"}
        description = self.comments.get(message.full_name, "")
        oneofs = [o for o in message.oneofs if not _synthetic(o.fields[0])]
        if oneofs:
            lines = [
                f"Oneof `{o.name}`: at most one of "
                + ", ".join(f"`{f.json_name}`" for f in o.fields)
                + "."
                for o in oneofs
            ]
            description = "\n\n".join(x for x in [description, " ".join(lines)] if x)
        if description:
            schema["description"] = description
        schema["properties"] = {f.json_name: self.field(f) for f in message.fields}
        required = [f.json_name for f in message.fields if is_required(f)]
        if required:
            schema["required"] = required
        return schema

    def _enum_schema(self, enum: EnumDescriptor) -> Schema:
        names = [v.name for v in enum.values]
        lines = [self.comments.get(enum.full_name, "")]
        documented = [
            f"- `{v.name}`: {self.comments[f'{enum.full_name}.{v.name}']}"
            for v in enum.values
            if self.comments.get(f"{enum.full_name}.{v.name}")
        ]
        if documented:
            lines.append("\n".join(documented))
        schema: Schema = {"type": "string", "enum": names}
        description = "\n\n".join(x for x in lines if x)
        if description:
            schema["description"] = description
        return schema


def _synthetic(field: FieldDescriptor) -> bool:
    """True for the hidden oneof of a proto3 ``optional`` field."""
    if field.containing_oneof is None:
        return False
    message = descriptor_pb2.DescriptorProto()
    assert field.containing_type is not None
    field.containing_type.CopyToProto(message)
    return any(f.name == field.name and f.proto3_optional for f in message.field)


def comments(image: descriptor_pb2.FileDescriptorSet) -> dict[str, str]:
    """Leading (else trailing) comments keyed by full name.

    Enum values are keyed ``<enum full name>.<VALUE>`` (not proto's sibling
    scoping) so that they cannot clash with the enum's siblings.
    """
    out: dict[str, str] = {}
    for file in image.file:
        names = _names_by_path(file)
        for location in file.source_code_info.location:
            name = names.get(tuple(location.path))
            text = _clean(location.leading_comments or location.trailing_comments)
            if name and text:
                out[name] = text
    return out


def _names_by_path(file: descriptor_pb2.FileDescriptorProto) -> dict[tuple[int, ...], str]:
    # SourceCodeInfo path components: field numbers in descriptor.proto.
    file_message, file_enum, file_service = 4, 5, 6
    message_field, message_nested, message_enum = 2, 3, 4
    enum_value, service_method = 2, 2
    prefix = f"{file.package}." if file.package else ""
    names: dict[tuple[int, ...], str] = {}

    def enum(path: tuple[int, ...], proto: descriptor_pb2.EnumDescriptorProto, scope: str) -> None:
        full = scope + proto.name
        names[path] = full
        for i, value in enumerate(proto.value):
            names[(*path, enum_value, i)] = f"{full}.{value.name}"

    def message(path: tuple[int, ...], proto: descriptor_pb2.DescriptorProto, scope: str) -> None:
        full = scope + proto.name
        names[path] = full
        for i, field in enumerate(proto.field):
            names[(*path, message_field, i)] = f"{full}.{field.name}"
        for i, nested in enumerate(proto.nested_type):
            message((*path, message_nested, i), nested, full + ".")
        for i, nested_enum in enumerate(proto.enum_type):
            enum((*path, message_enum, i), nested_enum, full + ".")

    for i, m in enumerate(file.message_type):
        message((file_message, i), m, prefix)
    for i, e in enumerate(file.enum_type):
        enum((file_enum, i), e, prefix)
    for i, s in enumerate(file.service):
        names[(file_service, i)] = prefix + s.name
        for j, method in enumerate(s.method):
            names[(file_service, i, service_method, j)] = f"{prefix}{s.name}.{method.name}"
    return names


def _clean(comment: str) -> str:
    """Strip the one space after ``//`` and trailing blanks, keep paragraphs."""
    lines = [line[1:] if line.startswith(" ") else line for line in comment.splitlines()]
    return "\n".join(line.rstrip() for line in lines).strip()
