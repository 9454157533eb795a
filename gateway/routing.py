"""The route table: every HTTP binding of a descriptor set, matched per request.

Built once at start-up. Per verb, routes are ordered most specific first:
templates without ``**`` before those with it, more literal segments first,
then templates with a ``:verb`` before those without. Lookup narrows the
candidates by the first two path segments, so a request tries a handful of
templates, not all of them.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import MethodDescriptor

from gateway import pathtemplate
from gateway.descriptors import HttpBinding, access, http_bindings, services
from gateway.pathtemplate import DEEP_WILDCARD, WILDCARD, Template, Variable
from gateway.render import Renderer
from gateway.transcode import HTTP_BODY, Codec, RequestPlan, plan_request

_KEY_DEPTH = 2


@dataclass(frozen=True)
class Route:
    """One (verb, template) and everything its requests need, precomputed."""

    verb: str
    template: Template
    binding: HttpBinding
    # "/package.Service/Method": the gRPC path the generic call uses.
    grpc_path: str
    service: str
    plan: RequestPlan
    # Renders the response (or its response_body field) to a JSON-ready value.
    render: Callable[[Any], Any]
    response_body: str
    response_class: type[Any]
    # Server streaming: the answer is NDJSON (or SSE).
    streaming: bool
    # Client streaming (or bidi, with ``streaming``): the body is many JSON values.
    client_streaming: bool
    # The answer (or its response_body) is a google.api.HttpBody: this gives it, and
    # its content type and bytes are the HTTP answer instead of JSON.
    http_body: Callable[[Any], Any] | None
    public: bool
    scopes: tuple[str, ...]
    # Template order in the table: most specific first.
    rank: tuple[int, int, int, int] = field(default=(0, 0, 0, 0))

    @property
    def method(self) -> MethodDescriptor:
        return self.binding.method


def _pattern(template: Template) -> list[str]:
    out: list[str] = []
    for segment in template.segments:
        if isinstance(segment, Variable):
            out.extend(segment.segments)
        else:
            out.append(segment)
    return out


def _rank(template: Template, order: int) -> tuple[int, int, int, int]:
    return (
        1 if template.has_deep_wildcard else 0,
        -template.literal_count,
        0 if template.verb else 1,
        order,
    )


class RouteTable:
    """Routes by verb, matched most specific first."""

    def __init__(self, routes: Iterable[Route]) -> None:
        self.routes = sorted(routes, key=lambda r: r.rank)
        self._by_verb: dict[str, list[Route]] = {}
        for route in self.routes:
            self._by_verb.setdefault(route.verb, []).append(route)
        # (verb, first segments) -> candidates; built for every literal prefix seen.
        keys: set[tuple[str, ...]] = set()
        for route in self.routes:
            pattern = _pattern(route.template)
            for depth in range(1, _KEY_DEPTH + 1):
                keys.add(tuple(pattern[:depth]))
        self._index: dict[tuple[str, tuple[str, ...]], list[Route]] = {}
        for verb, verb_routes in self._by_verb.items():
            for key in keys:
                self._index[(verb, key)] = [r for r in verb_routes if _compatible(r, key)]

    def _candidates(self, verb: str, parts: list[str]) -> list[Route]:
        routes = self._by_verb.get(verb)
        if not routes:
            return []
        for depth in range(min(_KEY_DEPTH, len(parts)), 0, -1):
            found = self._index.get((verb, tuple(parts[:depth])))
            if found is not None:
                return found
        return routes

    def match(self, verb: str, path: str) -> tuple[Route, dict[str, str]] | None:
        """The most specific route for (verb, path) and its path variables."""
        parts = _key_parts(path)
        for route in self._candidates(verb, parts):
            values = route.template.match(path)
            if values is not None:
                return route, values
        return None

    def allowed(self, path: str) -> list[str]:
        """Verbs with a route for ``path`` (non-empty means 405, not 404)."""
        parts = _key_parts(path)
        return sorted(
            verb
            for verb in self._by_verb
            if any(r.template.match(path) is not None for r in self._candidates(verb, parts))
        )


def _key_parts(path: str) -> list[str]:
    parts = path[1:].split("/", _KEY_DEPTH)[:_KEY_DEPTH]
    if parts:
        # The last segment may carry ":verb"; literals never contain ':'.
        parts[-1] = parts[-1].split(":", 1)[0]
    return parts


def _compatible(route: Route, key: tuple[str, ...]) -> bool:
    pattern = _pattern(route.template)
    for index, literal in enumerate(key):
        if index >= len(pattern):
            return False
        expected = pattern[index]
        if expected == DEEP_WILDCARD:
            return True
        if expected != WILDCARD and expected != literal:
            return False
    return True


def build_routes(
    pool: descriptor_pool.DescriptorPool,
    image: descriptor_pb2.FileDescriptorSet,
    codec: Codec,
    renderer: Renderer,
) -> RouteTable:
    """Every HTTP binding of every service in the image (ValueError on a bad rule)."""
    routes: list[Route] = []
    for service in services(pool, image):
        for method in service.methods:
            policy = access(method)
            for binding in http_bindings(method):
                try:
                    routes.append(_route(binding, codec, renderer, policy, len(routes)))
                except (ValueError, pathtemplate.TemplateError) as exc:
                    raise ValueError(f"{method.full_name}: {binding.path}: {exc}") from None
    return RouteTable(routes)


def _route(
    binding: HttpBinding, codec: Codec, renderer: Renderer, policy: Any, order: int
) -> Route:
    from google.protobuf import message_factory

    method = binding.method
    template = pathtemplate.parse(binding.path)
    plan = plan_request(
        codec,
        method.input_type,
        [v.field_path for v in template.variables],
        binding.body,
        binding.verb,
    )
    output = method.output_type
    http_body: Callable[[Any], Any] | None = None
    if binding.response_body:
        field_desc = output.fields_by_name.get(binding.response_body)
        if field_desc is None:
            raise ValueError(f"{output.full_name} has no field {binding.response_body!r}")
        convert = renderer.field(field_desc)
        render = _field_renderer(convert, binding.response_body)
        answer = field_desc.message_type
        if answer is not None and answer.full_name == HTTP_BODY and not field_desc.is_repeated:
            http_body = operator.attrgetter(binding.response_body)
    else:
        render = renderer.message(output)
        if output.full_name == HTTP_BODY:
            http_body = _itself
    return Route(
        verb=binding.verb,
        template=template,
        binding=binding,
        grpc_path=f"/{method.containing_service.full_name}/{method.name}",
        service=method.containing_service.full_name,
        plan=plan,
        render=render,
        response_body=binding.response_body,
        response_class=message_factory.GetMessageClass(output),
        streaming=bool(method.server_streaming),
        client_streaming=bool(method.client_streaming),
        http_body=http_body,
        public=bool(policy.public),
        scopes=tuple(policy.scopes),
        rank=_rank(template, order),
    )


def _itself(message: Any) -> Any:
    return message


def _field_renderer(convert: Callable[[Any], Any], name: str) -> Callable[[Any], Any]:
    return lambda message: convert(getattr(message, name))
