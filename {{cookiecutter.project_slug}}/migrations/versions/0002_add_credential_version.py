"""Add users.credential_version: logging out and password changes revoke.

Every session and bearer token carries the version it was issued under; the
app raises it to void them all at once. Existing users start at 0.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade():
    # Batch mode: SQLite alters a table by copying it (see env.py).
    with op.batch_alter_table("users") as batch:
        batch.add_column(
            sa.Column(
                "credential_version",
                sa.Integer(),
                server_default="0",
                nullable=False,
            )
        )


def downgrade():
    with op.batch_alter_table("users") as batch:
        batch.drop_column("credential_version")
