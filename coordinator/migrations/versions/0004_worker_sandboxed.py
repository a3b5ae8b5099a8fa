"""whether a worker runs its jobs confined

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 22:30:00

* ``workers.sandboxed``: set from the worker's registration; false for a worker that
  does not say (an unconfined worker must be visible as such).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("workers", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("sandboxed", sa.Boolean(), nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("workers", schema=None) as batch_op:
        batch_op.drop_column("sandboxed")
