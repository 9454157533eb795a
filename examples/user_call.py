"""A user-facing call over gRPC: a user's tips, with the token `tips login` gives.

    .venv/bin/tips login --as demo --json | .venv/bin/python examples/user_call.py
    .venv/bin/python examples/user_call.py login.json   # a saved answer

The sign-in answer (``tips.auth.v1.SignInResponse`` as JSON) holds the access
token and the user's resource name. The token goes with every call as
``authorization: Bearer ...`` (``tipsclient.connect(token=...)``), and the
recommender verifies it itself; the user is whoever it names, never a
header. Public RPCs (those with a REST route) are called by the gateway, so
this presents the gateway's development certificate (``identity="gateway"``),
as the gateway does when it forwards an app's request (docs/security.md).

Needs only the client package: ``pip install ./clients/python``.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from google.protobuf import json_format

import tipsclient
from tips.auth.v1 import auth_service_pb2 as auth
from tips.recommender.v1 import catalog_tip_pb2
from tips.recommender.v1 import recommender_service_pb2 as rec
from tips.recommender.v1 import recommender_service_pb2_grpc as rec_grpc


def signed_in(argv: list[str]) -> auth.SignInResponse:
    """The sign-in answer from the file named, or from stdin."""
    text = Path(argv[1]).read_text() if len(argv) > 1 and argv[1] != "-" else sys.stdin.read()
    try:
        return json_format.Parse(text, auth.SignInResponse(), ignore_unknown_fields=True)
    except json_format.ParseError as exc:
        raise SystemExit(f"user_call: not a `tips login --json` answer: {exc}") from None


async def main(answer: auth.SignInResponse) -> None:
    try:
        connection = tipsclient.connect(
            "recommender", token=answer.access_token, identity="gateway"
        )
    except tipsclient.ClientConfigError as exc:
        raise SystemExit(f"user_call: {exc}") from None
    async with connection as channel:
        reply = await rec_grpc.RecommenderServiceStub(channel).ListTips(
            rec.ListTipsRequest(parent=answer.user, page_size=3), timeout=10
        )
    print(f"{len(reply.tips)} tip(s) for {answer.user}")
    for tip in reply.tips:
        effort = catalog_tip_pb2.TipEffort.Name(tip.effort)
        print(f"- {tip.title} ({tip.minutes_needed} min, {effort}): {tip.explanation}")


if __name__ == "__main__":
    asyncio.run(main(signed_in(sys.argv)))
