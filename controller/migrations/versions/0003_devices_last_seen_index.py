"""an index on devices (last_seen, id): the device list sorted by last seen pages by it

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_devices_last_seen", "devices", ["last_seen", "id"])


def downgrade() -> None:
    op.drop_index("ix_devices_last_seen", table_name="devices")
