"""Alembic environment: runs migrations on the engine handed over by coordinator.schema."""

from __future__ import annotations

from alembic import context

from coordinator import models, wakeups  # noqa: F401  (registers the tables on Base.metadata)
from coordinator.db import Base

engine = context.config.attributes["engine"]
with engine.begin() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()
