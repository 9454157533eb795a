"""Tips mesh tooling: the ``tips`` CLI, local infrastructure, ``make up``."""
