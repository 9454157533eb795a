"""Database access for services: SQLAlchemy 2 async on asyncpg.

One PostgreSQL database for the mesh, one schema and one role per service:
schema ``<service>``, role ``tips_<service>`` (``settings.db_role_prefix``).
The role owns its schema and can use nothing else (``kernel.migrations``
sets that up), so a service cannot read another service's tables even by
mistake. Services declare tables with ``MetaData(schema="<service>")``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import sqlalchemy.exc
from sqlalchemy import Table, func, select, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from kernel import deadline
from kernel.settings import Settings

__all__ = [
    "Database",
    "DatabaseError",
    "HeldConnection",
    "admin_url",
    "async_url",
    "insert_from_arrays",
    "is_unavailable",
    "lock",
    "redact",
    "role_password",
    "service_role",
    "service_url",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

# Service names become identifiers in DDL: only plain lower-case names, so
# nothing ever needs quoting (or could inject SQL).
_IDENT = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


class DatabaseError(RuntimeError):
    """The database is unreachable or misconfigured."""


def check_identifier(name: str, what: str = "service name") -> str:
    """Return ``name`` if it is a safe lower-case SQL identifier, else raise."""
    if not _IDENT.match(name):
        raise DatabaseError(f"invalid {what} {name!r}: expected [a-z][a-z0-9_]*, at most 63 chars")
    return name


def insert_from_arrays(
    table: Table, columns: Sequence[tuple[str, str]], params: Sequence[str]
) -> str:
    """``INSERT INTO table (columns)`` of as many rows as the arrays in ``params`` hold.

    ``columns`` are (name, PostgreSQL type) pairs, ``params`` one placeholder per
    column (``$3`` for asyncpg, ``:names`` for SQLAlchemy), each bound to a list.
    One statement and one round trip whatever the row count, and one prepared
    statement too. ``jsonb`` columns travel as text (asyncpg has no jsonb[] codec
    by default).
    """
    if len(params) != len(columns):
        raise ValueError(f"{len(columns)} columns need as many placeholders, got {len(params)}")
    names = ", ".join(c for c, _ in columns)
    arrays = ", ".join(
        f"CAST({p} AS {'text' if t == 'jsonb' else t}[])"
        for p, (_, t) in zip(params, columns, strict=True)
    )
    values = ", ".join(f"CAST(u.{c} AS jsonb)" if t == "jsonb" else f"u.{c}" for c, t in columns)
    return (
        f"INSERT INTO {table.schema}.{table.name} ({names}) "
        f"SELECT {values} FROM unnest({arrays}) AS u({names})"
    )


async def lock(session: AsyncSession, key: str) -> None:
    """Hold the transaction-scoped advisory lock named ``key`` until ``session`` commits.

    One way to serialise work on one thing across replicas (a user's
    notifications, the signing keys, the catalog): the lock goes with the
    transaction, so a crash cannot leave it held. Keys are namespaced by the
    caller (``"notifier:<user>"``); PostgreSQL locks a 64-bit hash of it.
    """
    await session.execute(select(func.pg_advisory_xact_lock(func.hashtextextended(key, 0))))


# SQLSTATE classes that mean "the server is not there right now": connection
# exceptions (08), operator intervention / shutdown (57), insufficient resources (53).
_UNAVAILABLE_SQLSTATES = ("08", "57", "53")


def is_unavailable(exc: BaseException) -> bool:
    """True when ``exc`` (or a cause) says PostgreSQL is unreachable, not that a query is bad."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, (OSError, TimeoutError, ConnectionError)):
            return True
        if isinstance(seen, sqlalchemy.exc.DBAPIError) and seen.connection_invalidated:
            return True
        if isinstance(seen, (sqlalchemy.exc.InterfaceError, sqlalchemy.exc.OperationalError)):
            return True
        if isinstance(seen, sqlalchemy.exc.TimeoutError):  # pool checkout timed out
            return True
        state = getattr(seen, "sqlstate", None) or getattr(seen, "pgcode", None)
        if isinstance(state, str) and state[:2] in _UNAVAILABLE_SQLSTATES:
            return True
        name = type(seen).__name__
        if name in ("ConnectionDoesNotExistError", "InterfaceError", "InternalClientError"):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def service_role(settings: Settings, service: str) -> str:
    """The database role of ``service`` (``tips_<service>`` by default)."""
    return check_identifier(f"{settings.db_role_prefix}{check_identifier(service)}", "role name")


def async_url(url: str | URL) -> URL:
    """``url`` with the asyncpg driver (accepts postgres://, postgresql://, +psycopg...)."""
    parsed = make_url(url) if isinstance(url, str) else url
    if parsed.get_backend_name() not in ("postgresql", "postgres"):
        raise DatabaseError(f"not a PostgreSQL URL: {redact(parsed)}")
    return parsed.set(drivername="postgresql+asyncpg")


def redact(url: str | URL) -> str:
    """The URL with its password hidden, for logs and errors."""
    parsed = make_url(url) if isinstance(url, str) else url
    return parsed.render_as_string(hide_password=True)


def admin_url(settings: Settings) -> str:
    """The admin URL (``settings.database_url``) in ``postgresql+asyncpg://`` form."""
    return async_url(settings.database_url).render_as_string(hide_password=False)


def role_password(settings: Settings, service: str) -> str:
    """The password of ``service``'s role ("" for none)."""
    own = settings.db_role_passwords.get(service)
    return own.get_secret_value() if own is not None else settings.db_role_password


def service_url(settings: Settings, service: str) -> str:
    """The URL ``service`` connects with, in ``postgresql+asyncpg://`` form.

    ``settings.service_database_url`` when set; otherwise the admin URL with
    the user replaced by the service role and the password by the role's
    (``role_password``).
    """
    if settings.service_database_url:
        return async_url(settings.service_database_url).render_as_string(hide_password=False)
    url = async_url(settings.database_url).set(
        username=service_role(settings, service),
        password=role_password(settings, service) or None,
    )
    return url.render_as_string(hide_password=False)


def _create_engine(url: str, service: str, pool_size: int) -> AsyncEngine:
    return create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        # A pooled connection can die with a server restart: check before use.
        pool_pre_ping=True,
        connect_args={
            "timeout": 10,
            # Unqualified names resolve in the service's own schema.
            "server_settings": {"application_name": f"tips-{service}", "search_path": service},
        },
    )


class Database:
    """A service's connection pool and session factory."""

    def __init__(self, engine: AsyncEngine, service: str, *, retry_seconds: float = 4.0) -> None:
        self._engine = engine
        self.service = service
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)
        # Database.retrying's budget (settings.db_retry_seconds).
        self.retry_seconds = retry_seconds

    @classmethod
    async def connect(
        cls,
        settings: Settings,
        service: str,
        *,
        attempts: int = 10,
        delay: float = 0.2,
        max_delay: float = 2.0,
    ) -> Database:
        """Connect as ``service``'s role, retrying a bounded number of times.

        Retries cover a database still starting (``make up``, compose); after
        ``attempts`` the error names the URL (password hidden) and the cause.
        """
        check_identifier(service)
        url = service_url(settings, service)
        engine = _create_engine(url, service, settings.db_pool_size)
        db = cls(engine, service, retry_seconds=settings.db_retry_seconds)
        for attempt in range(1, attempts + 1):
            try:
                await db.ping()
                return db
            except Exception as exc:  # driver errors have no common base class
                if attempt == attempts:
                    await engine.dispose()
                    raise DatabaseError(
                        f"cannot connect service {service!r} to {redact(url)} "
                        f"after {attempts} attempts: {exc}"
                    ) from exc
                log.warning(
                    "database not reachable, retrying",
                    extra={"service": service, "attempt": attempt, "error": str(exc)},
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, max_delay)
        raise AssertionError("unreachable")

    @property
    def engine(self) -> AsyncEngine:
        return self._engine

    def session(self) -> AsyncSession:
        """A new session; use ``async with db.session() as s, s.begin(): ...``."""
        return self._sessions()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """A session inside one transaction: committed on success, rolled back on error."""
        async with self._sessions() as session, session.begin():
            yield session

    @asynccontextmanager
    async def driver(self) -> AsyncIterator[Any]:
        """asyncpg's own connection, from the pool and back to it: for LISTEN, and for
        hot statements where the ORM's per-statement work costs more than the
        statement (the outbox relay). ``jsonb`` is best read as ``::text`` here:
        the pool's connections carry SQLAlchemy's codecs for it."""
        async with self._engine.connect() as conn:
            yield (await conn.get_raw_connection()).driver_connection

    async def listen(
        self,
        channel: str,
        on_notify: Callable[[str], None],
        *,
        on_attach: Callable[[], Awaitable[None]] | None = None,
        attached: asyncio.Event | None = None,
        retry_seconds: float = 1.0,
    ) -> None:
        """Hold a ``LISTEN channel`` connection until cancelled, re-opening it after failures.

        ``on_notify`` gets each payload. Notifications sent while no connection
        listens are lost: ``on_attach`` runs each time one is (re)attached, so
        the caller can catch up from the tables. ``attached`` is set while one is.
        """

        def deliver(_conn: object, _pid: int, _channel: str, payload: str) -> None:
            on_notify(payload)

        while True:
            try:
                # asyncpg's own connection: LISTEN needs the driver's API.
                async with self.driver() as raw:
                    closed = asyncio.Event()
                    raw.add_termination_listener(lambda _conn, done=closed: done.set())
                    await raw.add_listener(channel, deliver)
                    if attached is not None:
                        attached.set()
                    try:
                        if on_attach is not None:
                            await on_attach()
                        await closed.wait()
                    finally:
                        if attached is not None:
                            attached.clear()
                        with contextlib.suppress(Exception):
                            await raw.remove_listener(channel, deliver)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("listener failed", extra={"channel": channel, "error": repr(exc)})
            await asyncio.sleep(retry_seconds)

    async def retrying(
        self,
        work: Callable[[AsyncSession], Awaitable[T]],
        *,
        budget: float | None = None,
        attempt_timeout: float | None = None,
        first_delay: float = 0.1,
        max_delay: float = 1.0,
    ) -> T:
        """``work(session)`` in one transaction, tried again while the database is unavailable.

        For IDEMPOTENT work only (natural-key upserts, ``ON CONFLICT DO
        NOTHING``): a connection lost during the commit may have committed,
        and the retry runs the work again. A failure ``is_unavailable`` says is
        the server gone (a restart, a failover) is retried with backoff
        (``first_delay`` doubling to ``max_delay``) for at most ``budget``
        seconds (``retry_seconds`` by default) and never past the inbound
        RPC's deadline (``kernel.deadline``); then the last error is raised,
        for the interceptor to answer UNAVAILABLE with RetryInfo. Any other
        error is raised at once. ``attempt_timeout`` bounds each attempt; an
        attempt that runs out of it is not retried (a hung store is no restart).
        """
        give_up = time.monotonic() + deadline.within(
            self.retry_seconds if budget is None else budget
        )
        delay, attempt = first_delay, 1
        while True:
            bound = asyncio.timeout(attempt_timeout)
            try:
                async with bound, self.transaction() as session:
                    return await work(session)
            except Exception as exc:
                # An attempt out of its own time is a hung store, not a restart.
                if bound.expired() or not is_unavailable(exc):
                    raise
                if time.monotonic() + delay > give_up:
                    raise
                if attempt == 1:  # one line per call, not per attempt
                    log.warning(
                        "database unavailable, retrying",
                        extra={
                            "service": self.service,
                            "budget": round(give_up - time.monotonic(), 2),
                            "error": type(exc).__name__,
                        },
                    )
            await asyncio.sleep(delay)
            delay, attempt = min(delay * 2, max_delay), attempt + 1

    async def ping(self) -> None:
        """Round-trip ``SELECT 1``; raises if the database is unreachable."""
        async with self._engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def close(self) -> None:
        """Close every pooled connection."""
        await self._engine.dispose()


class HeldConnection:
    """One pooled asyncpg connection kept across the rounds of a hot loop.

    For the decision writer and the outbox relay: ``Database.driver`` checks a
    connection out per use, and the pool's pre-ping costs a BEGIN/ROLLBACK
    round trip pair and SQLAlchemy's bookkeeping each time (2.3% of the
    recommender's loop under the decision load, py-spy). An error inside
    ``use`` drops the connection (its state is unknown; a server restart
    leaves it dead), so the next use checks out a fresh, pinged one.
    ``release`` gives it back to the pool (an idle loop need not hold one).
    """

    def __init__(self, db: Database) -> None:
        self._db = db
        self._sa: AsyncConnection | None = None
        self._raw: Any = None

    @property
    def held(self) -> bool:
        return self._raw is not None

    @asynccontextmanager
    async def use(self) -> AsyncIterator[Any]:
        """asyncpg's connection: the held one, or a new one from the pool."""
        if self._raw is None:
            sa = await self._db.engine.connect()
            try:
                self._raw = (await sa.get_raw_connection()).driver_connection
            except BaseException:
                await sa.close()
                raise
            self._sa = sa
        try:
            yield self._raw
        except BaseException:
            await self.drop()
            raise

    async def release(self) -> None:
        """Back to the pool, in good order (between rounds, not inside ``use``); one
        that cannot say goodbye within seconds (the server gone) is dropped."""
        sa, self._sa, self._raw = self._sa, None, None
        if sa is None:
            return
        try:
            async with asyncio.timeout(5.0):
                await sa.close()
        except Exception:
            with contextlib.suppress(Exception):
                await sa.invalidate()

    async def drop(self) -> None:
        """Closed for good, never back to the pool (after an error)."""
        sa, self._sa, self._raw = self._sa, None, None
        if sa is not None:
            with contextlib.suppress(Exception):
                await sa.invalidate()
                await sa.close()
