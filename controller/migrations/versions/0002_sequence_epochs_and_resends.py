"""sequence epochs, resets and suspect jumps; samples stored once; command resend attempts

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("devices") as batch:
        batch.alter_column("last_seq", type_=sa.BigInteger(), existing_nullable=True)
        batch.add_column(sa.Column("seq_epoch", sa.String(length=32), nullable=True))
        batch.add_column(sa.Column("resets", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(
            sa.Column("suspect_seqs", sa.Integer(), nullable=False, server_default="0")
        )
    with op.batch_alter_table("telemetry_samples") as batch:
        batch.alter_column("seq", type_=sa.BigInteger(), existing_nullable=False)
        batch.add_column(sa.Column("epoch", sa.String(length=32), nullable=True))
        batch.create_index("uq_telemetry_seq", ["device_id", "epoch", "seq"], unique=True)
    with op.batch_alter_table("commands") as batch:
        batch.add_column(sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("commands") as batch:
        batch.drop_column("attempts")
    with op.batch_alter_table("telemetry_samples") as batch:
        batch.drop_index("uq_telemetry_seq")
        batch.drop_column("epoch")
        batch.alter_column("seq", type_=sa.Integer(), existing_nullable=False)
    with op.batch_alter_table("devices") as batch:
        batch.drop_column("suspect_seqs")
        batch.drop_column("resets")
        batch.drop_column("seq_epoch")
        batch.alter_column("last_seq", type_=sa.Integer(), existing_nullable=True)
