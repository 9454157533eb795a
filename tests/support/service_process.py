"""One service as its own process, as `tips serve NAME` runs it, with the test's durables.

    python -m tests.support.service_process events|recommender DURABLE

Settings come from the environment (``kernel.server.run``); only the durable
consumers' names differ from `tips serve`, so a test on a shared NATS keeps
its consumers apart from everyone else's (and deletes them afterwards).
"""

from __future__ import annotations

import sys

from kernel.server import run
from kernel.service import ServiceDefinition


def definition(name: str, durable: str) -> ServiceDefinition:
    if name == "events":
        from services.events.service import definition as events

        return events(erasure_durable=durable)
    if name == "recommender":
        from services.recommender.service import definition as recommender

        return recommender(durable)
    raise SystemExit(f"no test launcher for {name!r}")


if __name__ == "__main__":
    service, durable = sys.argv[1], sys.argv[2]
    run(definition(service, durable))
