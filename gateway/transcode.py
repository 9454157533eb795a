"""HTTP request -> request message, as grpc-gateway v2 builds it.

Order: the body (``body: "*"`` fills the message, ``body: "field"`` one
field), then path variables (nested field paths), then query parameters for
every field not bound by path or body (``a.b=1``, repeated by repeating the
key, maps as ``m[k]=v``). Input names may be lowerCamelCase or the proto
names; unknown body fields and unknown query parameters are ignored, as
grpc-gateway does, so older servers accept newer clients. Every client
mistake raises ``InvalidArgument`` naming the field as the client spelt it.

As grpc-gateway's generated handlers: a path variable bound to a repeated
field is split on ``,`` (``runtime.StringSlice`` and its kin), and on a route
without a body rule a form's fields (``application/x-www-form-urlencoded``,
read by Go's ``req.ParseForm``) are query parameters, before the query's own.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import Any, cast
from urllib.parse import parse_qsl

from google.protobuf import descriptor_pool, field_mask_pb2, json_format, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from gateway.render import WKT_SPECIAL
from kernel.errors import InvalidArgument

_FD = FieldDescriptor
_INT_RANGES = {
    _FD.CPPTYPE_INT32: (-(2**31), 2**31 - 1),
    _FD.CPPTYPE_UINT32: (0, 2**32 - 1),
    _FD.CPPTYPE_INT64: (-(2**63), 2**63 - 1),
    _FD.CPPTYPE_UINT64: (0, 2**64 - 1),
}
_FLOAT_WORDS = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
# strconv.ParseBool, which grpc-gateway uses for query and path values.
_BOOL_WORDS = {
    **dict.fromkeys(("1", "t", "T", "TRUE", "true", "True"), True),
    **dict.fromkeys(("0", "f", "F", "FALSE", "false", "False"), False),
}
_WRAPPERS = frozenset(
    n
    for n in WKT_SPECIAL
    if n.endswith("Value") and n not in ("google.protobuf.Value", "google.protobuf.ListValue")
)
_QUERY_KEY = re.compile(r"^([^\[\]]+)(?:\[([^\]]*)\])?$")
FIELD_MASK = "google.protobuf.FieldMask"


HTTP_BODY = "google.api.HttpBody"
FORM = "application/x-www-form-urlencoded"
_FORM_ON_A_BODY_RULE = "a form is read only on a route without a body rule: send JSON"
# The methods whose form Go's req.ParseForm reads (it ignores others' bodies).
FORM_METHODS = frozenset({"POST", "PUT", "PATCH"})
# What grpc-gateway's generated code splits a repeated path value on (its default, "csv").
PATH_LIST_SEPARATOR = ","
# protobuf's own parsers refuse deeper messages (upb's default recursion limit).
MAX_MESSAGE_DEPTH = 100


class Bad(InvalidArgument):
    """One bad field: the 400 every client mistake becomes."""

    def __init__(self, field: str, description: str) -> None:
        super().__init__([(field, description)])


def _is_map(field: FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


def _is_plain_message(field: FieldDescriptor) -> bool:
    """A singular message field that query/path names may descend into."""
    mt = field.message_type
    return mt is not None and not field.is_repeated and mt.full_name not in WKT_SPECIAL


class Codec:
    """Name lookups per message type, built once per pool."""

    def __init__(self, pool: descriptor_pool.DescriptorPool) -> None:
        self.pool = pool
        self._names: dict[str, dict[str, FieldDescriptor]] = {}

    def names(self, descriptor: Any) -> dict[str, FieldDescriptor]:
        """Field by JSON name and by proto name."""
        found = self._names.get(descriptor.full_name)
        if found is None:
            found = {}
            self._names[descriptor.full_name] = found
            for field in descriptor.fields:
                found[field.name] = field
                found[field.json_name] = field
            for field in descriptor.fields:
                if field.message_type is not None:
                    self.names(field.message_type)  # warm nested types now
        return found

    # --- JSON (body) ------------------------------------------------------

    def merge_json(self, message: Message, value: Any, where: str, depth: int = 0) -> None:
        """Merge a parsed JSON value into ``message`` (``depth``: messages above it)."""
        if depth > MAX_MESSAGE_DEPTH:
            raise Bad(where or "body", f"messages nested deeper than {MAX_MESSAGE_DEPTH} levels")
        descriptor = message.DESCRIPTOR
        if descriptor.full_name in WKT_SPECIAL:
            self._merge_wkt(message, value, where)
            return
        if not isinstance(value, dict):
            raise Bad(where or "body", f"expected a JSON object for {descriptor.name}")
        names = self.names(descriptor)
        oneofs: dict[str, str] | None = None
        for key, item in value.items():
            field = names.get(key)
            if field is None:
                continue  # unknown fields are ignored, as grpc-gateway does
            at = f"{where}.{key}" if where else key
            oneof = field.containing_oneof
            # A oneof of one field is proto3 `optional`: nothing to conflict with.
            if oneof is not None and item is not None and len(oneof.fields) > 1:
                oneofs = {} if oneofs is None else oneofs
                other = oneofs.setdefault(oneof.name, field.json_name)
                if other != field.json_name:
                    raise Bad(at, f"{other} is set too: only one field of {oneof.name} may be")
            self.set_json(message, field, item, at, depth)

    def set_json(
        self, message: Message, field: FieldDescriptor, value: Any, where: str, depth: int = 0
    ) -> None:
        """Set one field of ``message`` from its JSON value."""
        if value is None:
            if (
                field.message_type is not None
                and field.message_type.full_name == ("google.protobuf.Value")
                and not field.is_repeated
            ):
                getattr(message, field.name).null_value = 0
            return
        if _is_map(field):
            if not isinstance(value, dict):
                raise Bad(where, "expected a JSON object (a map)")
            target = getattr(message, field.name)
            entry: Any = field.message_type
            key_field = entry.fields_by_name["key"]
            value_field = entry.fields_by_name["value"]
            for k, v in value.items():
                at = f"{where}[{k}]"
                key = self._scalar_from_text(key_field, k, at)
                if value_field.message_type is not None:
                    self.merge_json(target[key], v, at, depth + 1)
                elif v is not None:
                    target[key] = self._scalar_from_json(value_field, v, at)
            return
        if field.is_repeated:
            if not isinstance(value, list):
                raise Bad(where, "expected a JSON array")
            target = getattr(message, field.name)
            for index, item in enumerate(value):
                at = f"{where}[{index}]"
                if field.message_type is not None:
                    self.merge_json(target.add(), item, at, depth + 1)
                elif item is None:
                    raise Bad(at, "null is not allowed in a repeated field")
                else:
                    target.append(self._scalar_from_json(field, item, at))
            return
        if field.message_type is not None:
            sub = getattr(message, field.name)
            sub.SetInParent()
            self.merge_json(sub, value, where, depth + 1)
            return
        setattr(message, field.name, self._scalar_from_json(field, value, where))

    def _merge_wkt(self, message: Message, value: Any, where: str) -> None:
        try:
            json_format.ParseDict(value, message, descriptor_pool=self.pool)
        except (json_format.ParseError, ValueError, TypeError) as exc:
            reason = str(exc).split(" at ", 1)[0]
            raise Bad(where or "body", f"invalid {message.DESCRIPTOR.name}: {reason}") from None

    def _scalar_from_json(self, field: FieldDescriptor, value: Any, where: str) -> Any:
        cpp = field.cpp_type
        if cpp in _INT_RANGES:
            if isinstance(value, bool):
                raise Bad(where, "expected an integer")
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            if isinstance(value, int):
                return _in_range(cpp, value, where)
            if isinstance(value, str):
                return self._scalar_from_text(field, value, where)
            raise Bad(where, "expected an integer")
        if cpp in (_FD.CPPTYPE_DOUBLE, _FD.CPPTYPE_FLOAT):
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
            if isinstance(value, str):
                return self._scalar_from_text(field, value, where)
            raise Bad(where, "expected a number")
        if cpp == _FD.CPPTYPE_BOOL:
            if isinstance(value, bool):
                return value
            raise Bad(where, "expected true or false")
        if cpp == _FD.CPPTYPE_ENUM:
            if isinstance(value, (str, int)) and not isinstance(value, bool):
                return self._enum(field, value, where)
            raise Bad(where, "expected an enum name or number")
        if not isinstance(value, str):
            raise Bad(where, "expected a string")
        if field.type == _FD.TYPE_BYTES:
            return _b64(value, where)
        return _unicode(value, where)

    # --- text (path and query) -------------------------------------------

    def _scalar_from_text(self, field: FieldDescriptor, text: str, where: str) -> Any:
        cpp = field.cpp_type
        if cpp in _INT_RANGES:
            try:
                number = int(text, 10)
            except ValueError:
                raise Bad(where, f"expected an integer, got {_shown(text)}") from None
            return _in_range(cpp, number, where)
        if cpp in (_FD.CPPTYPE_DOUBLE, _FD.CPPTYPE_FLOAT):
            if text in _FLOAT_WORDS:
                return _FLOAT_WORDS[text]
            try:
                return float(text)
            except ValueError:
                raise Bad(where, f"expected a number, got {_shown(text)}") from None
        if cpp == _FD.CPPTYPE_BOOL:
            if text not in _BOOL_WORDS:
                raise Bad(where, f"expected true or false, got {_shown(text)}")
            return _BOOL_WORDS[text]
        if cpp == _FD.CPPTYPE_ENUM:
            return self._enum(field, int(text) if _is_int(text) else text, where)
        if field.type == _FD.TYPE_BYTES:
            return _b64(text, where)
        return _unicode(text, where)

    def _enum(self, field: FieldDescriptor, value: str | int, where: str) -> int:
        enum: Any = field.enum_type
        if isinstance(value, int):
            if enum.values_by_number.get(value) is None and enum.is_closed:
                raise Bad(where, f"{value} is not a value of {enum.name}")
            return _in_range(_FD.CPPTYPE_INT32, value, where)
        found = enum.values_by_name.get(value)
        if found is None:
            names = ", ".join(v.name for v in enum.values)
            raise Bad(where, f"{_shown(value)} is not a value of {enum.name} (one of {names})")
        number: int = found.number
        return number

    def set_text(self, message: Message, field: FieldDescriptor, text: str, where: str) -> None:
        """Set (or append to) a field from a path or query value."""
        mt = field.message_type
        if mt is not None:
            if field.is_repeated:
                raise Bad(where, "a repeated message field cannot be set from a query or path")
            self._wkt_from_text(getattr(message, field.name), text, where)
            return
        value = self._scalar_from_text(field, text, where)
        if field.is_repeated:
            getattr(message, field.name).append(value)
        else:
            setattr(message, field.name, value)

    def set_path(self, message: Message, field: FieldDescriptor, text: str, where: str) -> None:
        """Set a field from a path value: a repeated one takes each of its ``,``-parts."""
        if field.is_repeated and field.message_type is None:
            for item in text.split(PATH_LIST_SEPARATOR):
                self.set_text(message, field, item, where)
        else:
            self.set_text(message, field, text, where)

    def _wkt_from_text(self, message: Message, text: str, where: str) -> None:
        name = message.DESCRIPTOR.full_name
        if name in _WRAPPERS:
            inner: Any = message.DESCRIPTOR.fields_by_name["value"]
            message.value = self._scalar_from_text(inner, text, where)  # type: ignore[attr-defined]
            return
        if name == FIELD_MASK:
            # Query masks are comma separated; names may be camelCase or proto names.
            paths = [_snake(p) for p in text.split(",") if p]
            _check_mask_paths(paths, where)
            message.paths.extend(paths)  # type: ignore[attr-defined]
            return
        if name in ("google.protobuf.Timestamp", "google.protobuf.Duration"):
            self._merge_wkt(message, text, where)
            return
        raise Bad(where, f"a {message.DESCRIPTOR.name} cannot be set from a query or path value")


def _is_int(text: str) -> bool:
    return text.lstrip("-").isdigit()


def _in_range(cpp: int, value: int, where: str) -> int:
    low, high = _INT_RANGES[cpp]
    if not low <= value <= high:
        raise Bad(where, f"{value} is out of range [{low}, {high}]")
    return value


def _b64(text: str, where: str) -> bytes:
    padded = text + "=" * (-len(text) % 4)
    try:
        if "-" in text or "_" in text:
            return base64.urlsafe_b64decode(padded)
        return base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError):
        raise Bad(where, "expected base64 bytes") from None


def _snake(name: str) -> str:
    return re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), name)


def _check_mask_paths(paths: list[str], where: str) -> None:
    """Refuse paths proto3 JSON cannot write (``Ü``, ``a_1``): no field is named so, and
    the answer echoing the mask would fail to render (a 500)."""
    try:
        field_mask_pb2.FieldMask(paths=paths).ToJsonString()
    except ValueError:
        raise Bad(where, f"not a field path: {_shown(','.join(paths))}") from None


@dataclass(frozen=True)
class RequestPlan:
    """How one binding fills its request message; built at start-up."""

    message_class: type[Message]
    # (field path as in the template, the fields along it)
    path_fields: tuple[tuple[str, tuple[FieldDescriptor, ...]], ...]
    body: str
    # The fields along a `body: "field"` rule (`body: "payload.input"` nests); ().
    body_path: tuple[FieldDescriptor, ...]
    # Proto field paths bound by path or body: query parameters under them are ignored.
    bound: tuple[str, ...]
    # PATCH with a body field: the FieldMask to fill from the body's keys when unsent.
    mask_field: FieldDescriptor | None
    # The body is a google.api.HttpBody: raw bytes and their content type, not JSON.
    raw_body: bool = False
    # The field the body fills: the last of body_path (kept as a field: read per request).
    body_field: FieldDescriptor | None = dataclass_field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "body_field", self.body_path[-1] if self.body_path else None)


def plan_request(
    codec: Codec,
    descriptor: Descriptor,
    variables: Sequence[str],
    body: str,
    http_verb: str,
) -> RequestPlan:
    """The plan for a binding; ValueError names a path or body field the type lacks."""
    path_fields = tuple((v, resolve(codec, descriptor, v)) for v in variables)
    body_path: tuple[FieldDescriptor, ...] = ()
    if body and body != "*":
        try:
            body_path = resolve(codec, descriptor, body)
        except ValueError:
            raise ValueError(f"{descriptor.full_name} has no body field {body!r}") from None
    body_field = body_path[-1] if body_path else None
    mask_field = None
    if http_verb == "PATCH" and body_field is not None:
        masks = [
            f
            for f in descriptor.fields
            if f.message_type is not None
            and f.message_type.full_name == FIELD_MASK
            and not f.is_repeated
        ]
        masks.sort(key=lambda f: f.name != "update_mask")
        mask_field = masks[0] if masks else None
    bound = tuple(".".join(f.name for f in fields) for _, fields in path_fields)
    if body_path:
        bound += (".".join(f.name for f in body_path),)
    codec.names(descriptor)
    target = body_field.message_type if body_field is not None else descriptor
    raw_body = bool(body) and target is not None and target.full_name == HTTP_BODY
    return RequestPlan(
        message_factory.GetMessageClass(descriptor),
        path_fields,
        body,
        body_path,
        bound,
        mask_field,
        raw_body,
    )


def resolve(codec: Codec, descriptor: Descriptor, path: str) -> tuple[FieldDescriptor, ...]:
    """The fields along a dotted proto field path (start-up; raises ValueError)."""
    fields: list[FieldDescriptor] = []
    current: Descriptor | None = descriptor
    for part in path.split("."):
        if current is None:
            raise ValueError(f"{path!r}: {fields[-1].name} is not a message")
        field = current.fields_by_name.get(part)
        if field is None:
            raise ValueError(f"{descriptor.full_name} has no field {path!r}")
        fields.append(field)
        current = field.message_type if _is_plain_message(field) else None
    return tuple(fields)


def build_request(
    codec: Codec,
    plan: RequestPlan,
    path_values: Mapping[str, str],
    query: str,
    body: bytes,
    content_type: str = "",
) -> Message:
    """The request message for one HTTP request; ``Bad`` on any client mistake.

    ``body`` is a body rule's body, or on a route without one the form a POST,
    PUT or PATCH sent (the caller reads it only then: ``reads_body``).
    """
    if plan.raw_body:
        return _raw_request(codec, plan, path_values, query, body, content_type)
    if not plan.body:
        form = _form_text(body) if body and is_form(content_type) else ""
        return request_from_json(codec, plan, path_values, query, None, form)
    where = plan.body if plan.body != "*" else "body"
    # An empty body is an empty message, as in grpc-gateway (its decoder's io.EOF).
    empty: Any = {} if plan.body_field is None else None
    try:
        # JSON whatever the Content-Type, as grpc-gateway decodes a body rule's body
        # (so `curl -d '{...}'`, which says it sends a form, works).
        value = _parse_body(body, where, empty)
    except Bad:
        if is_form(content_type):
            raise Bad(where, _FORM_ON_A_BODY_RULE) from None
        raise
    return request_from_json(codec, plan, path_values, query, value)


def reads_body(plan: RequestPlan, method: str, content_type: str) -> bool:
    """Whether a request's body is read: a body rule's, or a form as Go's ParseForm reads one."""
    return bool(plan.body) or (method in FORM_METHODS and is_form(content_type))


def is_form(content_type: str) -> bool:
    """``application/x-www-form-urlencoded``, parameters (a charset) aside."""
    return content_type.partition(";")[0].strip().lower() == FORM


def _form_text(body: bytes) -> str:
    # Raw bytes are UTF-8, as Go reads them; bytes that are not stay as surrogates,
    # which the field they reach refuses with a 400 naming it.
    return body.decode("utf-8", "surrogateescape")


def _raw_request(
    codec: Codec,
    plan: RequestPlan,
    path_values: Mapping[str, str],
    query: str,
    body: bytes,
    content_type: str,
) -> Message:
    """A google.api.HttpBody body: the bytes as sent, with their Content-Type."""
    message = request_from_json(codec, plan, path_values, query, None)
    target: Any = message
    if plan.body_field is not None:
        target = getattr(_descend(message, plan.body_path), plan.body_field.name)
    target.content_type = content_type
    target.data = body
    return message


def request_from_json(
    codec: Codec,
    plan: RequestPlan,
    path_values: Mapping[str, str],
    query: str,
    body_json: Any,
    form: str = "",
) -> Message:
    """The request message from a body already parsed (one value of a streamed body).

    ``form``: a form's fields, read before the query's as Go's ``req.Form`` lists them.
    """
    message = plan.message_class()
    if plan.body and not plan.raw_body:
        if plan.body_field is None:
            codec.merge_json(message, body_json, "")
        elif body_json is not None:
            target = _descend(message, plan.body_path)
            where = ".".join(f.json_name for f in plan.body_path)
            codec.set_json(target, plan.body_field, body_json, where)
    for variable, fields in plan.path_fields:
        target = _descend(message, fields)
        codec.set_path(target, fields[-1], path_values[variable], variable)
    if (query or form) and plan.body != "*":
        _apply_query(codec, message, plan, query, form)
    if plan.mask_field is not None and plan.body_field is not None:
        mask = getattr(message, plan.mask_field.name)
        if not mask.paths and isinstance(body_json, dict):
            _fill_mask(codec, mask, body_json, plan.body_field)
    return message


def _parse_body(body: bytes, where: str, empty: Any = None) -> Any:
    if not body.strip():
        return empty
    try:
        return json.loads(body, parse_constant=reject_constant)
    except RecursionError:
        raise Bad(where, "JSON nested too deeply") from None
    except ValueError as exc:  # malformed, not UTF-8, an integer of over 4300 digits
        raise Bad(where, f"malformed JSON: {exc}") from None


def reject_constant(name: str) -> Any:
    # Python's json reads NaN and Infinity, which JSON (and protojson) do not have;
    # proto3 JSON spells them as the strings "NaN" and "Infinity".
    raise ValueError(f"{name} is not JSON (send it as the string {name!r})")


def _shown(value: object, limit: int = 64) -> str:
    """A client's value quoted in an error, cut short: errors must not echo megabytes."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 5]}...{text[-1]}"


def _unicode(text: str, where: str) -> str:
    """``text`` if it is valid Unicode: a proto string cannot hold a lone surrogate."""
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise Bad(where, "not valid UTF-8 (a lone surrogate or undecodable bytes)") from None
    return text


def _descend(message: Message, fields: tuple[FieldDescriptor, ...]) -> Message:
    for field in fields[:-1]:
        message = getattr(message, field.name)
    return message


def _apply_query(
    codec: Codec, message: Message, plan: RequestPlan, query: str, form: str = ""
) -> None:
    singular_seen: set[str] = set()
    # Undecodable bytes stay as surrogates, so the field that gets them says so.
    pairs = _pairs(query) if not form else [*_pairs(form), *_pairs(query)]
    for key, value in pairs:
        m = _QUERY_KEY.match(key)
        if m is None:
            raise Bad(key, "malformed query parameter name")
        dotted, map_key = m.group(1), m.group(2)
        target: Message = message
        fields: list[FieldDescriptor] = []
        known = True
        parts = dotted.split(".")
        for part in parts:
            if fields:
                if not _is_plain_message(fields[-1]):
                    raise Bad(key, f"{fields[-1].json_name} has no sub-fields")
                target = getattr(target, fields[-1].name)
            field = codec.names(target.DESCRIPTOR).get(part)
            if field is None:
                known = False  # unknown parameters are ignored, as grpc-gateway does
                break
            fields.append(field)
        if not known:
            continue
        proto_path = ".".join(f.name for f in fields)
        if any(proto_path == b or proto_path.startswith(b + ".") for b in plan.bound):
            continue
        leaf = fields[-1]
        if map_key is not None:
            if not _is_map(leaf):
                raise Bad(key, f"{leaf.json_name} is not a map")
            entry = cast(Any, leaf.message_type)
            value_field = entry.fields_by_name["value"]
            if value_field.message_type is not None:
                raise Bad(key, "a map of messages cannot be set from a query")
            mk = codec._scalar_from_text(entry.fields_by_name["key"], map_key, key)
            getattr(target, leaf.name)[mk] = codec._scalar_from_text(value_field, value, key)
            continue
        if _is_map(leaf):
            raise Bad(key, f"set map entries as {dotted}[key]=value")
        if _is_plain_message(leaf):
            raise Bad(key, f"{leaf.json_name} is a message; set its fields as {dotted}.field")
        if not leaf.is_repeated:
            if proto_path in singular_seen:
                raise Bad(key, "given more than once but is not repeated")
            singular_seen.add(proto_path)
        codec.set_text(target, leaf, value, key)


def _pairs(text: str) -> list[tuple[str, str]]:
    return parse_qsl(text, keep_blank_values=True, errors="surrogateescape")


def _fill_mask(codec: Codec, mask: Message, body: dict[str, Any], field: FieldDescriptor) -> None:
    """grpc-gateway's FieldMaskFromRequestBody: one path per key, nested objects descend."""
    paths: list[str] = []

    def walk(obj: dict[str, Any], descriptor: Any, prefix: str) -> None:
        names = codec.names(descriptor)
        for key, value in obj.items():
            sub = names.get(key)
            if sub is None:
                # The mask would name a field that is not there (as grpc-gateway refuses).
                where = f"{field.json_name}.{prefix}{key}"
                raise Bad(where, f"{descriptor.name} has no field {key!r} to update")
            path = prefix + sub.name
            if _is_plain_message(sub) and isinstance(value, dict) and value:
                walk(value, sub.message_type, path + ".")
            else:
                paths.append(path)

    if field.message_type is not None and not field.is_repeated and not _is_map(field):
        walk(body, field.message_type, "")
    else:
        paths.append(field.name)
    mask.paths.extend(paths)  # type: ignore[attr-defined]
