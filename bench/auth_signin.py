"""Sign-in and access-token signing, measured in process.

Starts a throwaway PostgreSQL and NATS (the embedded wheels), a local OIDC
issuer over HTTP standing in for Google, and the auth service in process;
warms the provider key cache, then runs N sequential SignIn calls over gRPC
(each with a fresh ID token, nonce and subject: a new user and session each
time, the heaviest case). Also times access-token signing alone (ES256), and,
as the baseline of the same run, GetJwks over the same channel (one gRPC hop
with no database work). Prints JSON.

    tips bench auth_signin [--n 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "gen" / "python")]

import grpc  # noqa: E402
from pydantic import SecretStr  # noqa: E402

from kernel.clients import close_channels  # noqa: E402
from kernel.migrations import migrate  # noqa: E402
from kernel.server import ServiceServer  # noqa: E402
from services.auth.crypto import generate_kek  # noqa: E402
from services.auth.service import SERVICE  # noqa: E402
from services.auth.settings import AuthSettings  # noqa: E402
from services.auth.signing import new_key, sign_with  # noqa: E402
from tips.auth.v1 import auth_service_pb2 as pb  # noqa: E402
from tips.auth.v1 import auth_service_pb2_grpc as pb_grpc  # noqa: E402
from tipsmesh.devidp import OidcIssuer  # noqa: E402
from tipsmesh.localinfra import LocalNats, LocalPostgres  # noqa: E402


def _stats(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "n": len(ordered),
        "p50_ms": round(statistics.median(ordered) * 1000, 3),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 3),
        "mean_ms": round(statistics.fmean(ordered) * 1000, 3),
    }


def _signing(n: int) -> dict[str, float]:
    key, now, samples = new_key(), datetime.now(UTC), []
    for _ in range(n):
        start = time.perf_counter()
        sign_with(
            key,
            issuer="https://auth.tips.local",
            audience="tips-api",
            user="u_1",
            session="s_1",
            scopes="tips.user",
            ttl_seconds=600,
            now=now,
        )
        samples.append(time.perf_counter() - start)
    return _stats(samples)


async def _run(n: int, pg_url: str, nats_url: str) -> dict[str, object]:
    google = await OidcIssuer("google", ["bench-app"]).start()
    settings = AuthSettings(
        database_url=pg_url,
        nats_url=nats_url,
        auth_google_issuer=google.issuer,
        auth_google_client_ids=["bench-app"],
        auth_key_encryption_key=SecretStr(generate_kek()),
        log_level="WARNING",
        log_format="text",
        insecure=True,  # sign-in's cost, not the transport's (bench/hop_security.py)
        dev_mode=True,  # the providers are local stand-ins (tipsmesh.devidp)
        db_role_password=secrets.token_urlsafe(18),  # no login without a password
    )
    await migrate(settings, [SERVICE])
    server = ServiceServer(SERVICE, settings, port=0)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = pb_grpc.AuthServiceStub(channel)

            async def sign_in() -> float:
                nonce = secrets.token_urlsafe(16)
                token = google.mint(uuid.uuid4().hex, nonce=nonce, aud="bench-app")
                request = pb.SignInRequest(provider=1, id_token=token, nonce=nonce)
                start = time.perf_counter()
                await stub.SignIn(request, timeout=10)
                return time.perf_counter() - start

            for _ in range(10):  # warm: provider keys cached, pools filled
                await sign_in()
            signins = [await sign_in() for _ in range(n)]
            jwks = []
            for _ in range(n):
                start = time.perf_counter()
                await stub.GetJwks(pb.GetJwksRequest(), timeout=10)
                jwks.append(time.perf_counter() - start)
    finally:
        await server.stop(grace=0)
        await close_channels()
        await google.stop()
    baseline, result = _stats(jwks), _stats(signins)
    return {
        "scenario": "auth_signin",
        "sign_in": result,
        "access_token_signing": _signing(max(n, 1000)),
        "baseline_get_jwks": baseline,
        "sign_in_p50_over_baseline": round(result["p50_ms"] / baseline["p50_ms"], 2),
        "jwks_fetches_during_run": google.jwks_fetches,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200)
    args = parser.parse_args()
    pg_dir = Path(tempfile.mkdtemp(prefix="tips-bench-pg-"))
    nats_dir = Path(tempfile.mkdtemp(prefix="tips-bench-nats-"))
    pg, nats = LocalPostgres(pg_dir), LocalNats(nats_dir)
    try:
        pg_url, nats_url = pg.start(), nats.start()
        print(json.dumps(asyncio.run(_run(args.n, pg_url, nats_url)), indent=2))
    finally:
        nats.stop()
        pg.stop()
        shutil.rmtree(pg_dir, ignore_errors=True)
        shutil.rmtree(nats_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
