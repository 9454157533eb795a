"""Finds every connector: each module of this package that exposes ``CONNECTOR``."""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache

from services.integrations import connectors
from services.integrations.connectors.base import Connector


@cache
def all_connectors() -> dict[str, Connector]:
    """Provider id -> connector, ordered by id."""
    found: dict[str, Connector] = {}
    for info in pkgutil.iter_modules(connectors.__path__):
        module = importlib.import_module(f"{connectors.__name__}.{info.name}")
        connector = getattr(module, "CONNECTOR", None)
        if isinstance(connector, Connector):
            found[connector.id] = connector
    return dict(sorted(found.items()))


def get(provider_id: str) -> Connector | None:
    return all_connectors().get(provider_id)
