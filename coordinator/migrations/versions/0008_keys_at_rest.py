"""identity keys stored encrypted; worker grants

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 01:00:00

* ``users.hmac_key`` holds "f1:" + a Fernet token (about 140 characters) instead of the
  key itself: widened to 255. The keys are encrypted by ``dffmpeg-admin db upgrade``
  after the migrations ran (it needs the coordinator's secret, which Alembic does not
  have): see coordinator/keystore.py.
* ``users.worker_grant``: what an admin grants a worker identity (coordinator/grants.py).
* ``workers.allowed_clients``, ``workers.probe_trusted``: the grant, as the scheduler and
  the fast probes read it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.alter_column(
            "hmac_key", existing_type=sa.String(128), type_=sa.String(255), existing_nullable=False
        )
        batch_op.add_column(sa.Column("worker_grant", sa.JSON(), nullable=True))
    with op.batch_alter_table("workers", schema=None) as batch_op:
        batch_op.add_column(sa.Column("allowed_clients", sa.JSON(), nullable=True))
        batch_op.add_column(
            sa.Column("probe_trusted", sa.Boolean(), nullable=False, server_default=sa.true())
        )


def downgrade() -> None:
    with op.batch_alter_table("workers", schema=None) as batch_op:
        batch_op.drop_column("probe_trusted")
        batch_op.drop_column("allowed_clients")
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_column("worker_grant")
        batch_op.alter_column(
            "hmac_key", existing_type=sa.String(255), type_=sa.String(128), existing_nullable=False
        )
