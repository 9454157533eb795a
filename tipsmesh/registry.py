"""Where each service's definition lives: the one list of the mesh's services."""

from __future__ import annotations

import importlib

from kernel.service import ServiceDefinition
from kernel.settings import SERVICE_NAMES, Settings, check_environment, variables_of

# Read outside the settings classes: by `tips up` and the tools.
TOOL_VARIABLES = frozenset(
    {"TIPS_PORT_BASE", "TIPS_RUN_DIR", "TIPS_BREAKING_AGAINST", "TIPS_TRITON_PYTHON"}
)


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


def environment_variables() -> frozenset[str]:
    """Every ``TIPS_*`` variable some process of the mesh reads.

    The union, not one service's own: compose and Kubernetes give every
    process one shared environment.
    """
    classes: list[type[Settings]] = [Settings]
    for name in SERVICE_NAMES:
        module = importlib.import_module(f"services.{name}.settings")
        classes += [
            value
            for value in vars(module).values()
            if isinstance(value, type) and issubclass(value, Settings) and value is not Settings
        ]
    return frozenset(variables_of(*classes)) | TOOL_VARIABLES


def check_mesh_environment() -> None:
    """SettingsError naming the ``TIPS_*`` variables no process reads."""
    check_environment(environment_variables())
