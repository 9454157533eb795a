"""The ``tips`` command: serve one process, migrate, run the mesh, run a bench.

    tips serve NAME              run one service (or ``gateway``) until SIGTERM
    tips migrate [NAME...]       create roles/schemas and upgrade (all services by default)
    tips up [--run-dir DIR] ...  the whole mesh on this machine (see tipsmesh.up)
    tips bench NAME [ARGS...]    run bench/NAME.py (``all``: every scenario)

Settings come from ``TIPS_*`` environment variables (kernel.settings).
Exit codes: 0 ok, 1 failure (unreachable dependency, a process died),
2 bad usage or configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from kernel.settings import SERVICE_NAMES, SettingsError, load_settings

if TYPE_CHECKING:
    from kernel.service import ServiceDefinition

GATEWAY = "gateway"
BENCH_DIR = Path(__file__).resolve().parents[1] / "bench"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tips",
        description="Tips mesh: run services, migrate the database, run the whole mesh.",
        epilog="Settings come from TIPS_* environment variables; see docs/operations.md.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser(
        "serve",
        help="run one service (or the gateway) in this process until SIGTERM/SIGINT",
        description="Run one process of the mesh. TIPS_SERVICE is set from NAME; "
        "exit 2 on invalid settings, 1 when a dependency is unreachable.",
    )
    serve.add_argument(
        "name",
        metavar="NAME",
        choices=[*SERVICE_NAMES, GATEWAY],
        help=f"one of: {', '.join([*SERVICE_NAMES, GATEWAY])}",
    )

    migrate = sub.add_parser(
        "migrate",
        help="create roles and schemas and upgrade each service's tables",
        description="Migrate TIPS_DATABASE_URL (an admin URL) for all or the named services.",
    )
    migrate.add_argument(
        "names", metavar="NAME", nargs="*", help="services to migrate (default: all)"
    )

    up = sub.add_parser(
        "up",
        help="run the whole mesh: PostgreSQL, NATS, every service, the gateway",
        description="Start the mesh and wait; Ctrl-C or SIGTERM stops everything. "
        "PostgreSQL and NATS are started locally unless TIPS_DATABASE_URL / "
        "TIPS_NATS_URL are set.",
    )
    up.add_argument(
        "--run-dir",
        type=Path,
        default=None,
        help="data and logs (default: TIPS_RUN_DIR, else .run/ in the repository)",
    )
    up.add_argument("--no-gateway", action="store_true", help="do not start the gateway")
    ports = up.add_mutually_exclusive_group()
    ports.add_argument(
        "--port-base",
        type=int,
        default=None,
        metavar="N",
        help=f"gateway on N, services on N+1..N+{len(SERVICE_NAMES)} "
        "(default: TIPS_PORT_BASE, else 50051.. and 8080)",
    )
    ports.add_argument(
        "--free-ports", action="store_true", help="pick free ports instead of the defaults"
    )
    up.add_argument(
        "--fresh", action="store_true", help="wipe the run dir's PostgreSQL and NATS data first"
    )
    up.add_argument(
        "--start-timeout",
        type=float,
        default=90.0,
        metavar="S",
        help="seconds every process gets to report SERVING (default 90)",
    )
    up.add_argument(
        "--stop-timeout",
        type=float,
        default=15.0,
        metavar="S",
        help="seconds a process gets to exit after SIGTERM before SIGKILL (default 15)",
    )

    auth = sub.add_parser("auth", help="auth service administration")
    auth_sub = auth.add_subparsers(dest="auth_command", required=True)
    rotate = auth_sub.add_parser(
        "rotate-keys",
        help="rotate the access-token signing key (old public keys stay in the JWKS)",
        description="Create a new signing key; running auth services pick it up within "
        "TIPS_AUTH_SIGNING_KEY_RELOAD_SECONDS. The old key verifies until its tokens expire.",
    )
    rotate.add_argument(
        "--grace", type=float, default=None, metavar="S",
        help="seconds the old public key stays published (default: token lifetime + leeway)",
    )  # fmt: skip

    integrations = sub.add_parser("integrations", help="integrations service administration")
    integrations_sub = integrations.add_subparsers(dest="integrations_command", required=True)
    rewrap = integrations_sub.add_parser(
        "rewrap-tokens",
        help="re-wrap every stored provider token's data key under a key-encryption key",
        description="Re-seal the data keys of every vault record under KEY (default: "
        "TIPS_INTEGRATIONS_KEK_CURRENT), in small batches, while the service runs.",
    )
    rewrap.add_argument("--key", default="", metavar="KEY", help="target key id")

    login = sub.add_parser(
        "login",
        help="sign in to the local mesh as a development user; prints an access token",
        description="Sign in through the development identity provider of a running "
        "`tips up` and print the access token (--json: the whole sign-in answer). "
        "The same NAME is the same user every time; `demo` has consents and signals.",
    )
    login.add_argument("--as", dest="name", default="demo", metavar="NAME")
    login.add_argument("--provider", choices=("google", "apple"), default="google")
    login.add_argument("--run-dir", type=Path, default=None, metavar="DIR")
    login.add_argument("--json", action="store_true", help="print the whole sign-in answer")

    certs = sub.add_parser(
        "certs",
        help="issue development mTLS certificates (a CA and one per process) into DIR",
        description="Create DIR/ca.pem and, for each NAME, DIR/NAME.pem and DIR/NAME.key "
        "(0600), signed by DIR/ca.key; existing valid ones are kept. `tips up` does this in "
        "its run dir; compose runs it once into a volume. Production uses its own CA.",
    )
    certs.add_argument("dir", type=Path, metavar="DIR")
    certs.add_argument(
        "names", nargs="*", metavar="NAME",
        help="process names (default: every service, gateway and operator)",
    )  # fmt: skip

    bench = sub.add_parser(
        "bench",
        help="run a benchmark scenario from bench/ (prints JSON)",
        description="Run bench/NAME.py with the remaining arguments; 'all' runs every one.",
    )
    bench.add_argument("name", metavar="NAME", help="scenario name, or 'all', or 'list'")
    bench.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the scenario")
    return parser


def _load(command: str, names: Sequence[str]) -> list[ServiceDefinition] | None:
    """The definitions, or None after printing which one cannot be imported."""
    from tipsmesh.registry import load_definition

    definitions = []
    for name in names:
        try:
            definitions.append(load_definition(name))
        except (ImportError, AttributeError) as exc:
            print(f"tips {command}: cannot load service {name!r}: {exc}", file=sys.stderr)
            return None
    return definitions


def _environment_ok(command: str) -> bool:
    """False, after saying which, when a ``TIPS_*`` variable is one no process reads."""
    from kernel.settings import SettingsError
    from tipsmesh.registry import check_mesh_environment

    try:
        check_mesh_environment()
    except SettingsError as exc:
        print(f"tips {command}: {exc}", file=sys.stderr)
        return False
    return True


def _serve(name: str) -> int:
    if not _environment_ok("serve"):
        return 2
    if name == GATEWAY:
        # The gateway is not a TIPS_SERVICE (settings would reject the name).
        os.environ.pop("TIPS_SERVICE", None)
        from gateway.server import run as run_gateway

        run_gateway()
        return 0
    os.environ["TIPS_SERVICE"] = name
    from kernel.server import run

    definitions = _load("serve", [name])
    if definitions is None:
        return 1
    # run() loads the settings itself: exit 2 on invalid ones, 1 when a dependency fails.
    run(definitions[0])
    return 0


def _migrate(names: Sequence[str]) -> int:
    from kernel.migrations import MigrationError, migrate_sync

    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"tips migrate: {exc}", file=sys.stderr)
        return 2
    unknown = [n for n in names if n not in SERVICE_NAMES]
    if unknown:
        print(
            f"tips migrate: unknown service {', '.join(unknown)}; "
            f"expected one of {', '.join(SERVICE_NAMES)}",
            file=sys.stderr,
        )
        return 2
    definitions = _load("migrate", names or SERVICE_NAMES)
    if definitions is None:
        return 1
    try:
        migrate_sync(settings, definitions)
    except MigrationError as exc:
        print(
            f"tips migrate: {exc}\n"
            "Is PostgreSQL running and TIPS_DATABASE_URL (an admin URL) right?",
            file=sys.stderr,
        )
        return 1
    print(f"tips migrate: migrated {', '.join(d.name for d in definitions)}")
    return 0


def _up(args: argparse.Namespace) -> int:
    from tipsmesh.up import ROOT, UpError, UpOptions, up

    if not _environment_ok("up"):
        return 2
    port_base = args.port_base
    if port_base is None and not args.free_ports and os.environ.get("TIPS_PORT_BASE"):
        try:
            port_base = int(os.environ["TIPS_PORT_BASE"])
        except ValueError:
            print("tips up: TIPS_PORT_BASE must be an integer", file=sys.stderr)
            return 2
    options = UpOptions(
        run_dir=args.run_dir or Path(os.environ.get("TIPS_RUN_DIR") or ROOT / ".run"),
        gateway=not args.no_gateway,
        port_base=port_base,
        free_ports=args.free_ports,
        fresh=args.fresh,
        start_timeout=args.start_timeout,
        stop_timeout=args.stop_timeout,
    )
    try:
        return asyncio.run(up(options))
    except UpError as exc:  # raised before the mesh started anything
        print(f"tips up: {exc}", file=sys.stderr)
        return 2


def _login(name: str, provider: str, run_dir: Path | None, as_json: bool) -> int:
    import json

    from tipsmesh.devlogin import LoginError, sign_in
    from tipsmesh.up import HOST, ROOT

    state_file = (run_dir or Path(os.environ.get("TIPS_RUN_DIR") or ROOT / ".run")) / "mesh.json"
    try:
        state = json.loads(state_file.read_text())
    except (OSError, ValueError):
        print(
            f"tips login: no running mesh ({state_file} missing): start `make up`", file=sys.stderr
        )
        return 2
    providers = state.get("dev_identity_providers") or {}
    if provider not in providers or "gateway" not in state.get("ports", {}):
        print("tips login: this mesh runs no development sign-in (own identity providers)",
              file=sys.stderr)  # fmt: skip
        return 2
    gateway = f"http://{HOST}:{state['ports']['gateway']}"
    try:
        answer = asyncio.run(sign_in(gateway, providers[provider], provider, name))
    except (LoginError, OSError) as exc:
        print(f"tips login: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(answer, indent=2) if as_json else answer["accessToken"])
    return 0


def _certs(directory: Path, names: Sequence[str]) -> int:
    from kernel.access import GATEWAY, OPERATOR
    from kernel.settings import SERVICE_NAMES
    from tipsmesh.devcerts import ensure_mesh_certs

    issued = ensure_mesh_certs(directory, names or [*SERVICE_NAMES, GATEWAY, OPERATOR])
    for name, who in issued.items():
        print(f"{name}: {who.cert_file} {who.key_file}")
    return 0


def _rotate_keys(grace: float | None) -> int:
    from kernel.settings import SettingsError, load_settings
    from services.auth.service import rotate_signing_keys

    try:
        settings = load_settings(service="auth")
    except SettingsError as exc:
        print(f"tips auth: {exc}", file=sys.stderr)
        return 2
    kid = asyncio.run(rotate_signing_keys(settings, grace))
    print(f"new signing key: {kid}")
    return 0


def _rewrap(key: str) -> int:
    from kernel.settings import SettingsError, load_settings
    from services.integrations.rewrap import rewrap_tokens

    try:
        settings = load_settings(service="integrations")
        result = asyncio.run(rewrap_tokens(settings, key))
    except SettingsError as exc:
        print(f"tips integrations: {exc}", file=sys.stderr)
        return 2
    print(result)
    return 0


def bench_scenarios() -> list[str]:
    return sorted(p.stem for p in BENCH_DIR.glob("*.py") if not p.stem.startswith("_"))


def _bench(name: str, args: Sequence[str]) -> int:
    scenarios = bench_scenarios()
    if name == "list":
        print("\n".join(scenarios))
        return 0
    if name != "all" and name not in scenarios:
        print(
            f"tips bench: no scenario {name!r}; expected one of: {', '.join(scenarios)} or all",
            file=sys.stderr,
        )
        return 2
    worst = 0
    for scenario in scenarios if name == "all" else [name]:
        result = subprocess.run(
            [sys.executable, str(BENCH_DIR / f"{scenario}.py"), *args], check=False
        )
        worst = max(worst, result.returncode)
    return worst


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args.name)
    if args.command == "migrate":
        return _migrate(args.names)
    if args.command == "up":
        return _up(args)
    if args.command == "auth":
        return _rotate_keys(args.grace)
    if args.command == "integrations":
        return _rewrap(args.key)
    if args.command == "certs":
        return _certs(args.dir, args.names)
    if args.command == "login":
        return _login(args.name, args.provider, args.run_dir, args.json)
    return _bench(args.name, args.args)


if __name__ == "__main__":
    sys.exit(main())
