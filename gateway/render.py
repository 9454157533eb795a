"""Messages to proto3 JSON as grpc-gateway v2 writes them.

grpc-gateway v2's default marshaler is protojson with ``EmitUnpopulated``:
lowerCamelCase names, every field without presence emitted with its zero
value, unset singular message fields emitted as ``null``, unset oneof members
and proto3 ``optional`` fields left out, 64-bit integers as strings, enums as
names. ``json_format`` cannot emit the ``null`` and walks descriptors on
every call, so each message type gets a plan built once (at start-up, for
every route's types) and rendering only follows plans.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Callable
from typing import Any

from google.protobuf import descriptor_pool, json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

Convert = Callable[[Any], Any]

_FD = FieldDescriptor
_INT64_TYPES = {
    _FD.TYPE_INT64,
    _FD.TYPE_UINT64,
    _FD.TYPE_SINT64,
    _FD.TYPE_FIXED64,
    _FD.TYPE_SFIXED64,
}
_FLOAT_TYPES = {_FD.TYPE_FLOAT, _FD.TYPE_DOUBLE}
# Well-known types whose JSON form is special; json_format renders them.
WKT_SPECIAL = frozenset(
    {
        "google.protobuf.Any",
        "google.protobuf.Timestamp",
        "google.protobuf.Duration",
        "google.protobuf.FieldMask",
        "google.protobuf.Struct",
        "google.protobuf.Value",
        "google.protobuf.ListValue",
        "google.protobuf.Empty",
        "google.protobuf.DoubleValue",
        "google.protobuf.FloatValue",
        "google.protobuf.Int64Value",
        "google.protobuf.UInt64Value",
        "google.protobuf.Int32Value",
        "google.protobuf.UInt32Value",
        "google.protobuf.BoolValue",
        "google.protobuf.StringValue",
        "google.protobuf.BytesValue",
    }
)


def _identity(value: Any) -> Any:
    return value


def _int64(value: int) -> str:
    return str(value)


def _float(value: float) -> Any:
    if math.isfinite(value):
        return value
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def _bytes(value: bytes) -> str:
    return base64.b64encode(value).decode("ascii")


class Renderer:
    """Per-type render plans over one descriptor pool."""

    def __init__(self, pool: descriptor_pool.DescriptorPool) -> None:
        self._pool = pool
        self._plans: dict[str, Convert] = {}

    def message(self, descriptor: Descriptor) -> Convert:
        """A function rendering a message of this type to a JSON-ready value."""
        name = descriptor.full_name
        plan = self._plans.get(name)
        if plan is None:
            if name in WKT_SPECIAL:
                plan = self._wkt()
                self._plans[name] = plan
            else:
                # Register a trampoline first: message types may be recursive.
                fields: list[tuple[str, str, int, Convert]] = []

                def render(message: Message) -> dict[str, Any]:
                    return _render_fields(message, fields)

                self._plans[name] = render
                fields.extend(self._field_plan(f) for f in descriptor.fields)
                plan = render
        return plan

    def field(self, field: FieldDescriptor) -> Convert:
        """A function rendering the value of ``field`` (as read off a message)."""
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            key_field = field.message_type.fields_by_name["key"]
            value_conv = self._single(field.message_type.fields_by_name["value"])
            key_conv: Callable[[Any], str] = (
                (lambda k: "true" if k else "false") if key_field.type == _FD.TYPE_BOOL else str
            )
            return lambda m: {key_conv(k): value_conv(v) for k, v in m.items()}
        single = self._single(field)
        if _is_repeated(field):
            return lambda values: [single(v) for v in values]
        return single

    def _field_plan(self, field: FieldDescriptor) -> tuple[str, str, int, Convert]:
        if _is_repeated(field):
            kind = _ALWAYS
        elif field.containing_oneof is not None:
            kind = _IF_SET  # oneof members and proto3 optional: only when set
        elif field.message_type is not None:
            kind = _NULL_IF_UNSET
        else:
            kind = _ALWAYS
        return field.name, field.json_name, kind, self.field(field)

    def _single(self, field: FieldDescriptor) -> Convert:
        if field.message_type is not None:
            return self.message(field.message_type)
        if field.enum_type is not None:
            names = {v.number: v.name for v in field.enum_type.values}
            return lambda n: names.get(n, n)
        if field.type in _INT64_TYPES:
            return _int64
        if field.type in _FLOAT_TYPES:
            return _float
        if field.type == _FD.TYPE_BYTES:
            return _bytes
        return _identity

    def _wkt(self) -> Convert:
        pool = self._pool

        def render(message: Message) -> Any:
            return json_format.MessageToDict(
                message, descriptor_pool=pool, always_print_fields_with_no_presence=True
            )

        return render


_ALWAYS, _IF_SET, _NULL_IF_UNSET = 0, 1, 2


def _is_repeated(field: FieldDescriptor) -> bool:
    return bool(field.is_repeated)


def _render_fields(message: Message, fields: list[tuple[str, str, int, Convert]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, json_name, kind, convert in fields:
        if kind == _ALWAYS or message.HasField(name):
            out[json_name] = convert(getattr(message, name))
        elif kind == _NULL_IF_UNSET:
            out[json_name] = None
    return out
