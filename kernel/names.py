"""Resource names (AIP-122): one way to build and parse ``users/{user}/tips/{tip}``.

A service declares each of its names once, as a ``Pattern``::

    TIP = Pattern("users/{user}/tips/{tip}")
    TIP.format("u_1", "t_9")              # "users/u_1/tips/t_9"
    TIP.parse(request.name, "name")       # ("u_1", "t_9"), or InvalidArgument naming the field

Every variable segment must be non-empty and free of ``/``; a pattern may
narrow one with a regular expression (``ids={"connection": r"[a-z0-9-]{1,63}"}``).
The error names the field and the expected shape, so a client sees
``name: must be users/{user}/tips/{tip}, got 'users/u_1/tip/9'``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from kernel.errors import InvalidArgument

__all__ = ["USER", "USER_ID", "Pattern", "user_name"]

# User ids are opaque, but they go into resource names, metadata and logs: keep them plain.
USER_ID = r"[A-Za-z0-9_-]{1,128}"
_ANY = r"[^/]+"
_VARIABLE = re.compile(r"^\{([a-z_]+)\}$")


class Pattern:
    """One resource name pattern: literal collection segments and ``{variables}``."""

    def __init__(self, template: str, ids: Mapping[str, str] | None = None) -> None:
        self.template = template
        self.segments = template.split("/")
        self.variables: list[str] = []
        parts: list[str] = []
        for segment in self.segments:
            match = _VARIABLE.match(segment)
            if match is None:
                parts.append(re.escape(segment))
                continue
            name = match.group(1)
            self.variables.append(name)
            default = USER_ID if name == "user" else _ANY
            parts.append(f"({(ids or {}).get(name, default)})")
        self._regex = re.compile("^" + "/".join(parts) + "$")
        # str.format template: the literal segments escaped, {} per variable.
        self._template = "/".join(
            "{}" if _VARIABLE.match(s) else s.replace("{", "{{").replace("}", "}}")
            for s in self.segments
        )

    def format(self, *values: str) -> str:
        """The name with ``values`` in the variables' order."""
        if len(values) != len(self.variables):
            raise TypeError(f"{self.template} takes {len(self.variables)} values")
        return self._template.format(*values)

    def match(self, name: str) -> tuple[str, ...] | None:
        """The variables' values, or None when ``name`` does not have this shape."""
        found = self._regex.match(name)
        return found.groups() if found else None

    def parse(self, name: str, field: str = "name") -> tuple[str, ...]:
        """The variables' values; InvalidArgument naming ``field`` otherwise."""
        values = self.match(name)
        if values is None:
            raise InvalidArgument([(field, f"must be {self.template}, got {name!r}")])
        return values

    def parse_one(self, name: str, field: str = "name") -> str:
        """The single variable's value of a one-variable pattern (``users/{user}``)."""
        (value,) = self.parse(name, field)
        return value

    def __repr__(self) -> str:
        return f"Pattern({self.template!r})"


USER = Pattern("users/{user}")


def user_name(user_id: str) -> str:
    """``users/{user}``."""
    return f"users/{user_id}"
