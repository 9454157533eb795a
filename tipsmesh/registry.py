"""Where each service's definition lives: the one list of the mesh's services."""

from __future__ import annotations

import importlib

from kernel.service import ServiceDefinition
from kernel.settings import SERVICE_NAMES


def load_definition(name: str) -> ServiceDefinition:
    """Import ``services.<name>.service.SERVICE``."""
    if name not in SERVICE_NAMES:
        raise KeyError(f"unknown service {name!r}; expected one of {', '.join(SERVICE_NAMES)}")
    module = importlib.import_module(f"services.{name}.service")
    definition: ServiceDefinition = module.SERVICE
    return definition


def all_definitions() -> list[ServiceDefinition]:
    """Every service of the mesh, in start order."""
    return [load_definition(name) for name in SERVICE_NAMES]
