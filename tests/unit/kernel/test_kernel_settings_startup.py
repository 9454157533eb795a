"""Start-up failures are clear: settings errors name the variable, retries are bounded."""

from __future__ import annotations

import asyncio
import time

import pytest

from kernel import deadline
from kernel.clients import call_timeout
from kernel.server import StartupError, connect_with_retry
from kernel.settings import SettingsError, load_settings

pytestmark = pytest.mark.unit


def test_invalid_setting_named_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIPS_STARTUP_TIMEOUT_SECONDS", "0")
    with pytest.raises(SettingsError) as err:
        load_settings()
    message = str(err.value)
    assert "TIPS_STARTUP_TIMEOUT_SECONDS" in message and "\n" not in message


async def test_connect_retry_gives_up_within_the_limit() -> None:
    attempts = 0

    async def refuse() -> None:
        nonlocal attempts
        attempts += 1
        raise ConnectionRefusedError("connection refused, password=pw1")

    start = time.monotonic()
    with pytest.raises(StartupError) as err:
        await connect_with_retry("PostgreSQL", refuse, 0.5)
    assert time.monotonic() - start < 1.0
    assert attempts >= 2
    assert "could not reach PostgreSQL within 0.5s" in str(err.value)
    assert "pw1" not in str(err.value)


async def test_connect_retry_bounds_a_hanging_connect() -> None:
    async def hang() -> None:
        await asyncio.Event().wait()

    with pytest.raises(StartupError, match="timed out"):
        await connect_with_retry("NATS", hang, 0.3)


async def test_connect_retry_returns_once_it_works() -> None:
    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 2:
            raise OSError("not yet")
        return "connected"

    assert await connect_with_retry("NATS", flaky, 5) == "connected"


def test_call_timeout_is_min_of_inbound_and_explicit() -> None:
    assert call_timeout(None, 10.0) == 10.0
    assert call_timeout(3.0, 10.0) == 3.0
    with deadline.deadline_in(2.0):
        assert 1.9 < call_timeout(None, 10.0) <= 2.0
        assert call_timeout(0.5, 10.0) == 0.5
        assert 1.9 < call_timeout(30.0, 10.0) <= 2.0


def test_a_variable_no_setting_reads_is_refused_by_name() -> None:
    from kernel.settings import check_environment

    known = {"TIPS_HOST", "TIPS_RECOMMENDER_TRITON_URL", "TIPS_RECOMMENDER_MODEL_REPOSITORY"}
    check_environment(known, {"TIPS_HOST": "0.0.0.0", "PATH": "/bin", "OTHER_TIPS_X": "1"})
    with pytest.raises(SettingsError) as err:
        check_environment(known, {"TIPS_HOST": "h", "TIPS_TRITON_URL": "t:8001", "TIPS_NOPE": "1"})
    message = str(err.value)
    assert "TIPS_NOPE" in message and "TIPS_TRITON_URL" in message and "\n" not in message
    assert "did you mean" in message and "TIPS_RECOMMENDER_TRITON_URL" in message
    assert "t:8001" not in message  # names only: a value may be a secret
