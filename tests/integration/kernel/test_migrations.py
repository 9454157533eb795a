"""kernel.migrations: one schema, role and Alembic history per service."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from kernel.db import Database, service_role
from kernel.migrations import MigrationError, migrate
from kernel.service import Binding, Runtime, ServiceDefinition
from kernel.settings import Settings

pytestmark = pytest.mark.integration

REVISION = '''
"""create {table}"""
import sqlalchemy as sa
from alembic import op

revision = "{rev}"
down_revision = {down!r}
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "{table}", sa.Column("id", sa.Integer, primary_key=True), sa.Column("v", sa.Text)
    )
    op.execute("INSERT INTO {table} (v) VALUES ('seed')")


def downgrade() -> None:
    op.drop_table("{table}")
'''


async def _no_build(runtime: Runtime) -> Sequence[Binding]:
    return ()


def _definition(
    root: Path, name: str, revisions: list[tuple[str, str | None, str]]
) -> ServiceDefinition:
    versions = root / name / "migrations" / "versions"
    versions.mkdir(parents=True, exist_ok=True)
    for rev, down, table in revisions:
        (versions / f"{rev}_{table}.py").write_text(
            REVISION.format(rev=rev, down=down, table=table)
        )
    return ServiceDefinition(name=name, build=_no_build, migrations_dir=versions.parent)


@pytest.fixture(scope="module")
async def migrated(
    create_database: Callable[[], Awaitable[str]],
    settings: Settings,
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Settings, list[ServiceDefinition]]:
    # Its own database: the session database may hold the real services' schemas.
    url = await create_database()
    mine = settings.model_copy(update={"database_url": url})
    root = tmp_path_factory.mktemp("svc")
    defs = [
        _definition(root, "auth", [("a1", None, "identities")]),
        _definition(root, "profile", [("p1", None, "profiles"), ("p2", "p1", "prefs")]),
    ]
    await migrate(mine, defs)
    return mine, defs


async def _fetch(settings: Settings, service: str, sql: str) -> list[tuple[object, ...]]:
    db = await Database.connect(settings, service, attempts=1)
    try:
        async with db.session() as session:
            return [tuple(r) for r in (await session.execute(text(sql))).all()]
    finally:
        await db.close()


async def test_each_service_owns_its_schema_and_tables(
    migrated: tuple[Settings, list[ServiceDefinition]],
) -> None:
    settings, _ = migrated
    rows = await _fetch(
        settings,
        "profile",
        "SELECT schemaname, tablename, tableowner FROM pg_tables "
        "WHERE schemaname IN ('auth', 'profile') ORDER BY 1, 2",
    )
    auth_role, profile_role = service_role(settings, "auth"), service_role(settings, "profile")
    assert rows == [
        ("auth", "alembic_version", auth_role),
        ("auth", "identities", auth_role),
        ("profile", "alembic_version", profile_role),
        ("profile", "prefs", profile_role),
        ("profile", "profiles", profile_role),
    ]
    assert await _fetch(settings, "profile", "SELECT version_num FROM alembic_version") == [("p2",)]
    # Unqualified names resolve in the service's own schema.
    assert await _fetch(settings, "profile", "SELECT v FROM prefs") == [("seed",)]


async def test_profile_role_cannot_read_auth_schema(
    migrated: tuple[Settings, list[ServiceDefinition]],
) -> None:
    settings, _ = migrated
    assert await _fetch(settings, "auth", "SELECT v FROM auth.identities") == [("seed",)]
    with pytest.raises(DBAPIError, match="permission denied for schema auth"):
        await _fetch(settings, "profile", "SELECT v FROM auth.identities")


async def test_service_role_cannot_create_in_public_schema(
    migrated: tuple[Settings, list[ServiceDefinition]],
) -> None:
    settings, _ = migrated
    with pytest.raises(DBAPIError, match="permission denied for schema public"):
        await _fetch(settings, "profile", "CREATE TABLE public.sneaky (id int)")


async def test_rerunning_migrate_is_a_noop(
    migrated: tuple[Settings, list[ServiceDefinition]],
) -> None:
    settings, defs = migrated
    await migrate(settings, defs)
    # The seed rows would be duplicated if any revision ran again.
    assert await _fetch(settings, "profile", "SELECT count(*) FROM profiles") == [(1,)]
    assert await _fetch(settings, "auth", "SELECT version_num FROM alembic_version") == [("a1",)]


async def test_new_revision_is_applied_on_rerun(
    migrated: tuple[Settings, list[ServiceDefinition]],
) -> None:
    settings, defs = migrated
    auth = defs[0]
    assert auth.migrations_dir is not None
    (auth.migrations_dir / "versions" / "a2_sessions.py").write_text(
        REVISION.format(rev="a2", down="a1", table="sessions")
    )
    await migrate(settings, defs)
    assert await _fetch(settings, "auth", "SELECT version_num FROM alembic_version") == [("a2",)]
    assert await _fetch(settings, "auth", "SELECT v FROM sessions") == [("seed",)]


async def test_broken_revision_names_the_service(
    create_database: Callable[[], Awaitable[str]],
    settings: Settings,
    tmp_path: Path,
) -> None:
    url = await create_database()
    mine = settings.model_copy(update={"database_url": url})
    broken = _definition(tmp_path, "notifier", [("n1", None, "deliveries")])
    assert broken.migrations_dir is not None
    (broken.migrations_dir / "versions" / "n2_bad.py").write_text(
        'revision = "n2"\ndown_revision = "n1"\n\ndef upgrade() -> None:\n'
        '    from alembic import op\n    op.execute("SELECT * FROM no_such_table")\n'
    )
    with pytest.raises(MigrationError, match="'notifier'"):
        await migrate(mine, [broken])
