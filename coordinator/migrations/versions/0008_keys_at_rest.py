"""identity keys stored encrypted

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 01:00:00

* ``users.hmac_key`` holds "f1:" + a Fernet token (about 140 characters) instead of the
  key itself: widened to 255. The keys are encrypted by ``dffmpeg-admin db upgrade``
  after the migrations ran (it needs the coordinator's secret, which Alembic does not
  have): see coordinator/keystore.py.
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


def downgrade() -> None:
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.alter_column(
            "hmac_key", existing_type=sa.String(255), type_=sa.String(128), existing_nullable=False
        )
