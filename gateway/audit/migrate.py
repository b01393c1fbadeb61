"""Schema migrations of the audit store with Alembic.

The revisions live in ``gateway/audit/migrations`` so that the wheel carries them.
`upgrade_schema` runs on every open of a store, in the open's transaction, so a store
of an older release is upgraded before the first append. A store that an older
release created with ``MetaData.create_all`` has no ``alembic_version`` table. It is
stamped with the revision that its tables match, then upgraded.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, inspect, text
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.errors import AuditError

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# Any fixed 64-bit number. PostgreSQL stores hold this transaction-level advisory lock
# while they migrate, extend the chain, sign a checkpoint or purge, so that several
# processes do these one at a time.
POSTGRES_LOCK_KEY = 0x666F6E7465_417564  # "fonte" "Aud"

# Revisions that match the tables of stores created before migrations existed.
_FIRST_RELEASE_REVISION = "0001"
_CHECKPOINT_REVISION = "0002"
_SUBJECT_KEY_REVISION = "0003"
_SUBJECT_SPAN_REVISION = "0005"


def _alembic_config(connection: Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """Return the newest revision that this release ships."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    head = ScriptDirectory.from_config(config).get_current_head()
    if head is None:
        raise RuntimeError(f"no Alembic revision found in {MIGRATIONS_DIR}")
    return head


def current_revision(connection: Connection) -> str | None:
    """Return the store's revision, or None for a store without ``alembic_version``."""
    return MigrationContext.configure(connection).get_current_revision()


def downgrade_schema(connection: Connection, revision: str) -> None:
    """Take the audit tables back to the older ``revision``, keeping their rows.

    Tests use it to build the stores of earlier releases with real data in them. Runs
    in the caller's transaction, under the PostgreSQL advisory lock.
    """
    lock_postgres(connection)
    command.downgrade(_alembic_config(connection), revision)


async def require_head_revision(connection: AsyncConnection, location: str) -> None:
    """Raise AuditError unless the store on ``connection`` is at the newest revision.

    Commands that read or change the tables of a store they do not migrate call it, so
    that an older store gets a message that names the fix instead of an SQL error.
    """
    revision = await connection.run_sync(current_revision)
    if revision != head_revision():
        found = f"is at schema revision {revision}"
        if revision is None:
            found = "has no schema revision"
        raise AuditError(
            f"audit store {location} {found}, not {head_revision()}; "
            "run `fonte audit migrate` first"
        )


def lock_postgres(connection: Connection) -> None:
    """Take the store's advisory lock until the current transaction ends (PostgreSQL only)."""
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": POSTGRES_LOCK_KEY})


def upgrade_schema(connection: Connection, revision: str = "head") -> tuple[str | None, str]:
    """Create or upgrade the audit tables to ``revision``, by default the newest.

    Returns the revision before and after. Tests pass an older ``revision`` to build
    the store of an earlier release. Runs in the caller's transaction, which
    must be open. On PostgreSQL the advisory lock makes concurrent openers wait, so
    only the first one migrates.
    """
    lock_postgres(connection)
    config = _alembic_config(connection)
    before = current_revision(connection)
    if before is None:
        legacy = _legacy_revision(connection)
        if legacy is not None:
            command.stamp(config, legacy)
            before = legacy
    command.upgrade(config, revision)
    return before, head_revision() if revision == "head" else revision


def _legacy_revision(connection: Connection) -> str | None:
    """Return the revision that an unversioned store's tables match, or None if it is empty."""
    tables = set(inspect(connection).get_table_names())
    if "audit_record" not in tables:
        return None
    # The span table came with a revision, so a store that has it lost its version
    # table after it was migrated.
    if "audit_subject_span" in tables:
        return _SUBJECT_SPAN_REVISION
    # A store of the release that sealed subjects without migrations has both tables.
    if "audit_subject_key" in tables:
        return _SUBJECT_KEY_REVISION
    if "audit_checkpoint" in tables:
        return _CHECKPOINT_REVISION
    return _FIRST_RELEASE_REVISION
