"""Alembic environment of the audit store.

Migrations run only on a connection that `gateway.audit.migrate` passes in
``config.attributes["connection"]``, inside the caller's transaction, so there is no
URL in a configuration file and no offline mode.
"""

from __future__ import annotations

from alembic import context

from gateway.audit.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError(
        "the audit migrations run only through gateway.audit.migrate; "
        "use `fonte audit migrate`"
    )

context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
