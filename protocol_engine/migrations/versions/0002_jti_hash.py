"""Replay cache keeps the SHA-256 of each jti (exact whatever its length; 0001 cut jti at 255 characters).

Revision ID: 0002
Revises: 0001
"""

import hashlib

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    # Rows written by 0001 hold the raw (possibly cut) jti; rewrite them as hashes so a token seen before the
    # upgrade is still refused after it.
    table = sa.table("seen_token", sa.column("iss", sa.String), sa.column("jti", sa.String),
                     sa.column("expires_at", sa.DateTime(timezone=True)))
    conn = op.get_bind()
    rows = list(conn.execute(sa.select(table.c.iss, table.c.jti, table.c.expires_at)))
    if rows:
        conn.execute(table.delete())
        hashed = {(iss, hashlib.sha256(jti.encode("utf-8", "surrogatepass")).hexdigest()): expires
                  for iss, jti, expires in rows}
        op.bulk_insert(table, [{"iss": iss, "jti": jti, "expires_at": expires}
                               for (iss, jti), expires in hashed.items()])


def downgrade() -> None:
    # Hashes cannot be turned back into jtis; the rows are dropped (tokens live minutes, so little is lost).
    op.execute("DELETE FROM seen_token")
