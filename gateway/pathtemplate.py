"""`google.api.http` path templates: parsed once at start-up, matched per request.

The grammar (google/api/http.proto)::

    Template = "/" Segments [ Verb ] ;
    Segments = Segment { "/" Segment } ;
    Segment  = "*" | "**" | LITERAL | Variable ;
    Variable = "{" FieldPath [ "=" Segments ] "}" ;
    FieldPath = IDENT { "." IDENT } ;
    Verb     = ":" LITERAL ;

As grpc-gateway reads it, a verb right after a variable is everything after
the first colon (``{uuid}:custom:custom`` has the verb ``custom:custom``),
and after a literal everything after the last one; a request matches a verb
when its path ends with ``:`` and the verb.

``{name}`` is ``{name=*}``. ``*`` matches one segment, ``**`` the rest of the
path (zero or more segments, last only). Matching follows grpc-gateway v2:
single-segment variables are percent-decoded completely (``%2F`` becomes
``/``); multi-segment variables keep ``%2F`` encoded, since it cannot be told
apart from a separator once decoded (http.proto's "reserved expansion").
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import unquote

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
# Characters a literal may hold: RFC 3986 unreserved plus sub-delims except ':'.
_LITERAL = re.compile(r"^[A-Za-z0-9\-._~!$&'()+,;=@%]+$")
# A verb may also hold ':' (grpc-gateway's "custom:custom").
_VERB = re.compile(r"^[A-Za-z0-9\-._~!$&'()+,;=@%:]+$")

WILDCARD = "*"
DEEP_WILDCARD = "**"


class TemplateError(ValueError):
    """A path template that does not follow the grammar (a contract bug)."""


@dataclass(frozen=True)
class Variable:
    """``{field_path=segments}``: which request field a run of segments fills."""

    field_path: str
    # The pattern of the variable's segments: literals, "*" and "**".
    segments: tuple[str, ...]

    @property
    def multi_segment(self) -> bool:
        return len(self.segments) != 1 or self.segments[0] == DEEP_WILDCARD


@dataclass(frozen=True)
class Template:
    """A parsed path template."""

    source: str
    # Each element is a literal segment, "*", "**", or a Variable.
    segments: tuple[str | Variable, ...]
    verb: str = ""
    variables: tuple[Variable, ...] = field(default=())
    # Flattened pattern, one entry per path segment ("**" possibly last).
    _pattern: tuple[str, ...] = field(default=(), repr=False)
    # For each pattern index, the variable it belongs to (or None).
    _owners: tuple[Variable | None, ...] = field(default=(), repr=False)

    @property
    def literal_count(self) -> int:
        """How many literal segments: more literals make a more specific route."""
        return sum(1 for s in self._pattern if s not in (WILDCARD, DEEP_WILDCARD))

    @property
    def has_deep_wildcard(self) -> bool:
        return DEEP_WILDCARD in self._pattern

    def match(self, path: str) -> dict[str, str] | None:
        """The variables' values for ``path`` (still percent-encoded), or None."""
        if not path.startswith("/"):
            return None
        if self.verb:
            # As grpc-gateway's mux: the last segment ends with ":" + the verb.
            if not path.endswith(self._verb_suffix):
                return None
            path_part = path[1 : -len(self._verb_suffix)]
        else:
            path_part = path[1:]
        parts = path_part.split("/") if path_part else []
        return self._match_parts(parts)

    @property
    def _verb_suffix(self) -> str:
        return ":" + self.verb

    def _match_parts(self, parts: list[str]) -> dict[str, str] | None:
        pattern = self._pattern
        deep = self.has_deep_wildcard
        if deep:
            if len(parts) < len(pattern) - 1:
                return None
        elif len(parts) != len(pattern):
            return None
        values: dict[Variable, list[str]] = {}
        for index, expected in enumerate(pattern):
            owner = self._owners[index]
            if expected == DEEP_WILDCARD:
                taken = parts[index:]
                if any(p == "" for p in taken):
                    return None
            else:
                segment = parts[index]
                if segment == "" or (expected != WILDCARD and segment != expected):
                    return None
                taken = [segment]
            if owner is not None:
                values.setdefault(owner, []).extend(taken)
        return {
            var.field_path: _decode(values.get(var, []), var.multi_segment)
            for var in self.variables
        }

    def expand(self, values: dict[str, str]) -> str:
        """The path for ``values`` (used by OpenAPI examples and tests)."""
        out: list[str] = []
        for segment in self.segments:
            if isinstance(segment, Variable):
                out.append(values[segment.field_path])
            else:
                out.append(segment)
        return "/" + "/".join(out) + (f":{self.verb}" if self.verb else "")


def _decode(parts: list[str], multi_segment: bool) -> str:
    # Bytes that are not UTF-8 stay as surrogates: setting the field refuses them
    # with a 400 that names the variable (gateway.transcode).
    if not multi_segment:
        return unquote("/".join(parts), errors="surrogateescape")
    # Keep %2F (and %2f) encoded in multi-segment values: it is data, not a separator.
    return "/".join(
        unquote(p.replace("%2F", "%252F").replace("%2f", "%252f"), errors="surrogateescape")
        for p in parts
    )


def parse(source: str) -> Template:
    """Parse a template; ``TemplateError`` says what is wrong and where."""
    if not source.startswith("/"):
        raise TemplateError(f"{source!r}: a path template starts with '/'")
    body, verb = _cut_verb(source)
    if verb is not None and not _VERB.match(verb):
        raise TemplateError(f"{source!r}: bad verb {verb!r}")
    segments = _parse_segments(body[1:], source, top_level=True)
    pattern: list[str] = []
    owners: list[Variable | None] = []
    variables: list[Variable] = []
    for segment in segments:
        if isinstance(segment, Variable):
            if any(v.field_path == segment.field_path for v in variables):
                raise TemplateError(f"{source!r}: {segment.field_path} bound twice")
            variables.append(segment)
            pattern.extend(segment.segments)
            owners.extend([segment] * len(segment.segments))
        else:
            pattern.append(segment)
            owners.append(None)
    if DEEP_WILDCARD in pattern[:-1]:
        raise TemplateError(f"{source!r}: '**' may only be the last segment")
    return Template(
        source=source,
        segments=tuple(segments),
        verb=verb or "",
        variables=tuple(variables),
        _pattern=tuple(pattern),
        _owners=tuple(owners),
    )


def _cut_verb(source: str) -> tuple[str, str | None]:
    # A verb follows the last '}' and the last '/': right after a variable it is
    # all after the first colon, after a literal all after the last (grpc-gateway).
    tail_start = max(source.rfind("/"), source.rfind("}"))
    tail = source[tail_start + 1 :]
    colon = tail.find(":") if source[tail_start] == "}" else tail.rfind(":")
    if colon == -1:
        return source, None
    cut = tail_start + 1 + colon
    return source[:cut], source[cut + 1 :]


def _parse_segments(text: str, source: str, *, top_level: bool) -> list[str | Variable]:
    segments: list[str | Variable] = []
    index = 0
    while index <= len(text):
        if text.startswith("{", index):
            if not top_level:
                raise TemplateError(f"{source!r}: variables cannot nest")
            close = text.find("}", index)
            if close == -1:
                raise TemplateError(f"{source!r}: unclosed '{{'")
            segments.append(_parse_variable(text[index + 1 : close], source))
            index = close + 1
        else:
            end = text.find("/", index)
            end = len(text) if end == -1 else end
            segments.append(_parse_plain(text[index:end], source))
            index = end
        if index == len(text):
            break
        if text[index] != "/":
            raise TemplateError(f"{source!r}: expected '/' at {text[index:]!r}")
        index += 1
        if index == len(text):
            raise TemplateError(f"{source!r}: trailing '/'")
    return segments


def _parse_plain(segment: str, source: str) -> str:
    if segment in (WILDCARD, DEEP_WILDCARD):
        return segment
    if not segment or not _LITERAL.match(segment):
        raise TemplateError(f"{source!r}: bad segment {segment!r}")
    return segment


def _parse_variable(inner: str, source: str) -> Variable:
    field_path, _, pattern = inner.partition("=")
    if not _IDENT.match(field_path):
        raise TemplateError(f"{source!r}: bad field path {field_path!r}")
    if not pattern:
        return Variable(field_path, (WILDCARD,))
    parts = _parse_segments(pattern, source, top_level=False)
    return Variable(field_path, tuple(str(p) for p in parts))
