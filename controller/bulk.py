"""PostgreSQL's bulk path for ingestion: COPY into a staging table, then one set-based statement.

executemany sends one row's parameters per statement (pipelined by psycopg, but parsed,
planned and executed row by row on the server); COPY streams the whole batch in one command,
and one `INSERT … SELECT` / `UPDATE … FROM` applies it. The staging tables are temporary
(per connection, emptied at commit), so nothing is shared between writers and the batch
stays in the caller's transaction: it commits or rolls back with the rest, and the bridge
still acknowledges only after the commit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

_STAGED_SAMPLES = """
CREATE TEMP TABLE IF NOT EXISTS staged_samples (
    device_id varchar(64), epoch varchar(32), seq bigint, ts double precision, payload text
) ON COMMIT DELETE ROWS
"""

_STAGED_DEVICES = """
CREATE TEMP TABLE IF NOT EXISTS staged_devices (
    did varchar(64), n integer, g integer, dup integer, rs integer, sus integer,
    last_seq bigint, epoch varchar(32), seen double precision, tel text,
    tel_at double precision, bundle varchar(128), variant varchar(64), level varchar(16)
) ON COMMIT DELETE ROWS
"""

#: Columns in the order of the staging table (the dicts `Fleet` builds use these keys).
SAMPLE_COLUMNS = ("device_id", "epoch", "seq", "ts", "payload")
DEVICE_COLUMNS = (
    "did", "n", "g", "dup", "rs", "sus", "last_seq", "epoch", "seen", "tel", "tel_at",
    "bundle", "variant", "level",
)  # fmt: skip

# A device row without a sample in the batch (`tel` null: all of its samples were duplicates)
# only adds to its counts; the rest is taken from the newest sample, as executemany does.
_APPLY_DEVICES = """
UPDATE devices AS d SET
    telemetry_count = d.telemetry_count + s.n,
    gaps = d.gaps + s.g,
    duplicates = d.duplicates + s.dup,
    resets = d.resets + s.rs,
    suspect_seqs = d.suspect_seqs + s.sus,
    last_seq = s.last_seq,
    seq_epoch = s.epoch,
    last_seen = CASE WHEN s.tel IS NULL THEN d.last_seen ELSE s.seen END,
    last_telemetry = CASE WHEN s.tel IS NULL THEN d.last_telemetry ELSE s.tel::json END,
    last_telemetry_at = CASE WHEN s.tel IS NULL THEN d.last_telemetry_at ELSE s.tel_at END,
    active_bundle = CASE WHEN s.tel IS NULL THEN d.active_bundle ELSE s.bundle END,
    active_variant = CASE WHEN s.tel IS NULL THEN d.active_variant ELSE s.variant END,
    power_level = CASE WHEN s.tel IS NULL THEN d.power_level ELSE s.level END
FROM staged_devices AS s
WHERE d.id = s.did
"""


def _copy(session: Session, table: str, columns: Sequence[str], rows: list[dict[str, Any]]) -> None:
    raw = session.connection().connection.driver_connection
    statement = f"COPY {table} ({', '.join(columns)}) FROM STDIN"
    with raw.cursor() as cursor, cursor.copy(statement) as copy:  # type: ignore[union-attr]
        for row in rows:
            copy.write_row(tuple(row[c] for c in columns))


def insert_samples(session: Session, rows: list[dict[str, Any]]) -> None:
    """Store telemetry samples, skipping those already there (a redelivery, another replica)."""
    session.execute(text(_STAGED_SAMPLES))
    _copy(session, "staged_samples", SAMPLE_COLUMNS, rows)
    columns = ", ".join(SAMPLE_COLUMNS)
    session.execute(
        text(
            f"INSERT INTO telemetry_samples ({columns}) SELECT {columns} FROM staged_samples "
            "ON CONFLICT DO NOTHING"
        )
    )
    session.execute(text("DELETE FROM staged_samples"))  # a second batch in this transaction


def update_devices(session: Session, rows: list[dict[str, Any]]) -> None:
    """Add a batch's counts to each device and take its newest sample."""
    session.execute(text(_STAGED_DEVICES))
    _copy(session, "staged_devices", DEVICE_COLUMNS, rows)
    session.execute(text(_APPLY_DEVICES))
    session.execute(text("DELETE FROM staged_devices"))
