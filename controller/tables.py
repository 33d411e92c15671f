"""The controller's tables (SQLAlchemy 2.0). Times are unix seconds (float) on both databases."""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Device(Base):
    __tablename__ = "devices"
    # the device list sorted by last seen, in the cursor's order (ties by id)
    __table_args__ = (Index("ix_devices_last_seen", "last_seen", "id"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    online: Mapped[bool] = mapped_column(Boolean, default=False, index=True)
    hardware: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    hardware_class: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    arch: Mapped[str | None] = mapped_column(String(32), nullable=True)
    agent_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    active_bundle: Mapped[str | None] = mapped_column(String(128), nullable=True)
    active_variant: Mapped[str | None] = mapped_column(String(64), nullable=True)
    power_level: Mapped[str | None] = mapped_column(String(16), nullable=True)
    first_seen: Mapped[float] = mapped_column(Float)
    last_seen: Mapped[float] = mapped_column(Float)
    state_changed_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    last_telemetry: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    last_telemetry_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    last_seq: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    seq_epoch: Mapped[str | None] = mapped_column(String(32), nullable=True)
    telemetry_count: Mapped[int] = mapped_column(Integer, default=0)
    gaps: Mapped[int] = mapped_column(Integer, default=0)
    duplicates: Mapped[int] = mapped_column(Integer, default=0)
    resets: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    suspect_seqs: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class DeviceTag(Base):
    __tablename__ = "device_tags"

    device_id: Mapped[str] = mapped_column(
        ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True
    )
    tag: Mapped[str] = mapped_column(String(64), primary_key=True, index=True)


class TelemetrySample(Base):
    """A bounded per-device history (pruned to `ingest.history_per_device`), raw JSON."""

    __tablename__ = "telemetry_samples"
    __table_args__ = (
        Index("ix_telemetry_device_id", "device_id", "id"),
        # a redelivered sample (after a crash between commit and acknowledgement) is stored once
        Index("uq_telemetry_seq", "device_id", "epoch", "seq", unique=True),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(String(64))
    epoch: Mapped[str | None] = mapped_column(String(32), nullable=True)
    seq: Mapped[int] = mapped_column(BigInteger)
    ts: Mapped[float] = mapped_column(Float)
    payload: Mapped[str] = mapped_column(Text)


class EventRecord(Base):
    __tablename__ = "events"
    __table_args__ = (Index("ix_events_device_id", "device_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(32), index=True)
    reason: Mapped[str] = mapped_column(Text)
    command_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    ts: Mapped[float] = mapped_column(Float)
    received_at: Mapped[float] = mapped_column(Float)


class CommandRecord(Base):
    """Every command sent, keyed by its idempotency id; replies update `status`."""

    __tablename__ = "commands"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    device_id: Mapped[str] = mapped_column(String(64), index=True)
    type: Mapped[str] = mapped_column(String(32))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    rollout_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    detail: Mapped[str] = mapped_column(Text, default="")
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    sent_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    updated_at: Mapped[float] = mapped_column(Float)


class Bundle(Base):
    __tablename__ = "bundles"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    model_name: Mapped[str] = mapped_column(String(128), index=True)
    version: Mapped[str] = mapped_column(String(64))
    manifest: Mapped[dict[str, Any]] = mapped_column(JSON)
    key_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    uploaded_at: Mapped[float] = mapped_column(Float)


class BenchmarkRecord(Base):
    """A variant's latency measured on a device, shared by its whole hardware class."""

    __tablename__ = "benchmarks"

    hardware_class: Mapped[str] = mapped_column(String(32), primary_key=True)
    bundle_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    variant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    device_id: Mapped[str] = mapped_column(String(64))
    p50_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    p95_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    p99_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    measured_at: Mapped[float] = mapped_column(Float)


class Rollout(Base):
    __tablename__ = "rollouts"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    bundle_id: Mapped[str] = mapped_column(ForeignKey("bundles.id"))
    target: Mapped[dict[str, Any]] = mapped_column(JSON)
    waves: Mapped[list[Any]] = mapped_column(JSON, doc="cumulative device counts per wave")
    options: Mapped[dict[str, Any]] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(16), index=True)
    current_wave: Mapped[int] = mapped_column(Integer, default=0)
    wave_started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    wave_succeeded_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    reason: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class RolloutDevice(Base):
    __tablename__ = "rollout_devices"

    rollout_id: Mapped[str] = mapped_column(
        ForeignKey("rollouts.id", ondelete="CASCADE"), primary_key=True
    )
    device_id: Mapped[str] = mapped_column(String(64), primary_key=True, index=True)
    wave: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16), default="pending")
    command_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    rollback_command_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    previous_bundle: Mapped[str | None] = mapped_column(String(128), nullable=True)
    baseline_p99_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    ladder: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    sent_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    healthy_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    detail: Mapped[str] = mapped_column(Text, default="")


class ApiToken(Base):
    """Admin/read tokens and one-time enrollment tokens; only a SHA-256 of each is kept."""

    __tablename__ = "api_tokens"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), default="")
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    scope: Mapped[str] = mapped_column(String(16))
    device_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    used_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)


class DeviceCredential(Base):
    """A device's broker login; `password_hash` is mosquitto's `$7$` PBKDF2-SHA512 line."""

    __tablename__ = "device_credentials"

    device_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(Text)
    created_at: Mapped[float] = mapped_column(Float)
