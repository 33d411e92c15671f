"""The fleet registry: applies decoded agent messages to the database and answers queries.

Transport-free: the MQTT bridge hands it batches of validated messages; the API and the
rollout loop read from it. Writes are batched: one transaction per batch, executemany, or
COPY on PostgreSQL (`bulk`).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    JSON,
    Table,
    Text,
    and_,
    bindparam,
    cast,
    delete,
    func,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.orm import Session

from lepton_edge.controller import bulk, commands
from lepton_edge.controller.tables import (
    BenchmarkRecord,
    CommandRecord,
    Device,
    DeviceCredential,
    DeviceTag,
    EventRecord,
    Rollout,
    RolloutDevice,
    TelemetrySample,
)
from lepton_edge.shared.hardware import HardwareProfile
from lepton_edge.shared.messages import BenchmarkResult, Event, Reply, State, Telemetry

log = logging.getLogger(__name__)

_DEV: Table = Device.__table__  # type: ignore[assignment]
_SAMPLES: Table = TelemetrySample.__table__  # type: ignore[assignment]


@dataclass
class Batch:
    """Validated messages in arrival order, split by kind; `raw` keeps telemetry's JSON text."""

    states: list[State] = field(default_factory=list)
    telemetry: list[tuple[Telemetry, str]] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    replies: list[Reply] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.states) + len(self.telemetry) + len(self.events) + len(self.replies)

    def drop(self, device_ids: set[str]) -> int:
        """Remove the messages of these devices; how many there were."""
        before = len(self)
        self.states = [m for m in self.states if m.device_id not in device_ids]
        self.telemetry = [t for t in self.telemetry if t[0].device_id not in device_ids]
        self.events = [m for m in self.events if m.device_id not in device_ids]
        self.replies = [m for m in self.replies if m.device_id not in device_ids]
        return before - len(self)

    def split(self) -> list[Batch]:
        """One batch per message, in the order kinds are applied."""
        return [
            *(Batch(states=[m]) for m in self.states),
            *(Batch(telemetry=[m]) for m in self.telemetry),
            *(Batch(events=[m]) for m in self.events),
            *(Batch(replies=[m]) for m in self.replies),
        ]

    def describe(self) -> str:
        """Which message a one-message batch holds, for a log line."""
        for kind, messages in (
            ("state", self.states),
            ("telemetry", [t for t, _ in self.telemetry]),
            ("event", self.events),
            ("reply", self.replies),
        ):
            if messages:
                return f"{kind} from {messages[0].device_id}"
        return "nothing"


@dataclass
class IngestResult:
    telemetry: int = 0
    gaps: int = 0
    duplicates: int = 0
    resets: int = 0
    suspect: int = 0
    late: int = 0
    unknown: int = 0  # messages from devices that are not enrolled


#: A jump of a device's sequence number beyond this is suspect until the next sample goes on
#: from it (one inflated `seq` must not make every genuine sample look like a duplicate).
MAX_SEQ_JUMP = 1_000_000


@dataclass
class _DeviceBatch:
    """One device's share of a telemetry batch."""

    n: int = 0
    gaps: int = 0
    dups: int = 0
    resets: int = 0
    suspect: int = 0
    last: tuple[Telemetry, str] | None = None


def _insert_new(session: Session, model: Any) -> Any:
    """INSERT that skips rows already there: another controller (shared subscriptions) may
    register the same new device in the same instant, and its batch must not fail for it."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(model).on_conflict_do_nothing()
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(model).on_conflict_do_nothing()
    return insert(model)


class Fleet:
    """Registry writes with a small cache of known devices and their last sequence numbers.

    A device's telemetry is a sequence (`epoch`, `seq`): a new epoch is a reset (its state dir
    was made anew), a step past the next number is a gap, a number already stored is a
    duplicate (a redelivery), one not stored yet below the last is a late arrival that fills
    a gap, and a jump beyond `max_seq_jump` is suspect until the next sample goes on from it.
    The samples table holds each (device, epoch, seq) once, whatever arrives twice.

    With shared subscriptions (`shared=True`) each controller sees only part of a device's
    stream: no controller can tell a gap or a duplicate from the other's share, so none is
    judged (the table still stores each sample once).
    """

    def __init__(
        self,
        shared: bool = False,
        max_seq_jump: int = MAX_SEQ_JUMP,
        enrolled_only: bool = False,
        copy: bool = True,
    ) -> None:
        self.shared = shared
        #: on PostgreSQL (psycopg), write telemetry through COPY (`bulk`); else executemany
        self.copy = copy
        self.max_seq_jump = max_seq_jump
        #: only devices that enrolled (a broker credential) are registered; others are refused
        self.enrolled_only = enrolled_only
        self._known: set[str] = set()
        self._seq: dict[str, tuple[str | None, int]] = {}  # device -> (epoch, last seq)
        self._jump: dict[str, int] = {}  # device -> a suspect seq not yet confirmed
        self._touched: set[str] = set()
        self._pruning: list[str] = []  # the devices of the pruning round under way
        self._lock = threading.Lock()

    # --- ingestion ---------------------------------------------------------------------------

    def _ensure_devices(self, session: Session, ids: set[str], now: float) -> set[str]:
        """Register the devices not seen before; the ids refused (not enrolled, when only
        enrolled devices may exist)."""
        unknown = ids - self._known
        if not unknown:
            return set()
        rows = session.execute(
            select(Device.id, Device.seq_epoch, Device.last_seq).where(Device.id.in_(unknown))
        )
        for device_id, epoch, last_seq in rows:
            self._known.add(device_id)
            if last_seq is not None:
                self._seq.setdefault(device_id, (epoch, last_seq))
            unknown.discard(device_id)
        refused: set[str] = set()
        if unknown and self.enrolled_only:
            enrolled = set(
                session.scalars(
                    select(DeviceCredential.device_id).where(
                        DeviceCredential.device_id.in_(unknown)
                    )
                )
            )
            refused, unknown = unknown - enrolled, unknown & enrolled
        if unknown:
            session.execute(
                _insert_new(session, Device),
                [
                    {
                        "id": d,
                        "online": False,
                        "first_seen": now,
                        "last_seen": now,
                        "telemetry_count": 0,
                        "gaps": 0,
                        "duplicates": 0,
                    }
                    for d in sorted(unknown)
                ],
            )
            self._known |= unknown
        return refused

    def reset(self) -> None:
        """Forget the caches (after a failed transaction they may be ahead of the database)."""
        with self._lock:
            self._known.clear()
            self._seq.clear()
            self._jump.clear()

    def apply(self, session: Session, batch: Batch, now: float | None = None) -> IngestResult:
        """Apply one batch in the caller's transaction."""
        now = now or time.time()
        result = IngestResult()
        with self._lock:
            ids = {m.device_id for m in batch.states}
            ids |= {t.device_id for t, _ in batch.telemetry}
            ids |= {e.device_id for e in batch.events}
            ids |= {r.device_id for r in batch.replies}
            refused = self._ensure_devices(session, ids, now)
            if refused:
                result.unknown = batch.drop(refused)
                log.info("refused messages from devices not enrolled: %s", sorted(refused))
            if self.shared and ids - refused:
                # Replicas write the same devices' rows (each takes a share of every stream,
                # and every state): taking the row locks in one order, by id, up front keeps
                # their transactions from deadlocking on each other.
                session.execute(
                    select(Device.id)
                    .where(Device.id.in_(ids - refused))
                    .order_by(Device.id)
                    .with_for_update()
                )
            for state in batch.states:
                self._apply_state(session, state, now)
            if batch.telemetry:
                self._apply_telemetry(session, batch.telemetry, now, result)
        if batch.events:
            with self._lock:
                self._touched |= {e.device_id for e in batch.events}
            session.execute(
                insert(EventRecord),
                [
                    {
                        "device_id": e.device_id,
                        "kind": e.kind.value,
                        "reason": e.reason,
                        "command_id": e.command_id,
                        "data": e.data,
                        "ts": e.ts,
                        "received_at": now,
                    }
                    for e in batch.events
                ],
            )
        for reply in batch.replies:
            self._apply_reply(session, reply, now)
        return result

    def _apply_state(self, session: Session, state: State, now: float) -> None:
        values: dict[str, Any] = {
            "online": state.status == "online",
            "last_seen": now,
            "state_changed_at": now,
        }
        if state.status == "online":
            if state.hardware is not None:
                values["hardware"] = state.hardware.model_dump(mode="json")
                values["hardware_class"] = state.hardware.hardware_class()
                values["arch"] = state.hardware.arch
            values["agent_version"] = state.agent_version
            values["active_bundle"] = state.active_bundle
            values["active_variant"] = state.active_variant
            values["power_level"] = state.power_level.value if state.power_level else None
        session.execute(update(Device).where(Device.id == state.device_id).values(**values))

    def _apply_telemetry(
        self,
        session: Session,
        samples: list[tuple[Telemetry, str]],
        now: float,
        result: IngestResult,
    ) -> None:
        per_device: dict[str, _DeviceBatch] = {}
        keep: list[tuple[Telemetry, str]] = []
        behind: list[tuple[Telemetry, str]] = []  # at or below the last seq: stored already?
        for sample, raw in samples:
            acc = per_device.setdefault(sample.device_id, _DeviceBatch())
            if self.shared:  # only a share of the stream: follow it, judge nothing
                self._seq[sample.device_id] = (sample.epoch, sample.seq)
                verdict = "next"
            else:
                verdict = self._judge(sample, acc)
            if verdict == "behind":
                behind.append((sample, raw))
                continue
            keep.append((sample, raw))
            if verdict == "next":
                acc.last = (sample, raw)
        late = {id(sample) for sample, _ in self._not_stored(session, behind)}
        in_batch = {(s.device_id, s.epoch, s.seq) for s, _ in keep}
        for sample, raw in behind:
            key = (sample.device_id, sample.epoch, sample.seq)
            if id(sample) in late and key not in in_batch:  # a late arrival: it fills a gap
                keep.append((sample, raw))
                in_batch.add(key)
                result.late += 1
            else:  # stored already, or twice in this batch
                per_device[sample.device_id].dups += 1
        for sample, _ in keep:
            per_device[sample.device_id].n += 1
        history = [
            {
                "device_id": s.device_id,
                "epoch": s.epoch,
                "seq": s.seq,
                "ts": s.ts,
                "payload": raw,
            }
            for s, raw in keep
        ]
        dialect = session.get_bind().dialect
        copy = self.copy and (dialect.name, dialect.driver) == ("postgresql", "psycopg")
        if history:  # each (device, epoch, seq) once, even from two controllers at a time
            if copy:
                bulk.insert_samples(session, history)
            else:
                # the Core table, not the ORM class: no per-row ORM bookkeeping
                session.execute(_insert_new(session, _SAMPLES), history)
        rows = []
        for d, acc in per_device.items():
            result.telemetry += acc.n
            result.gaps += acc.gaps
            result.duplicates += acc.dups
            result.resets += acc.resets
            result.suspect += acc.suspect
            epoch, last_seq = self._seq.get(d, (None, None))
            newest, newest_raw = acc.last if acc.last else (None, None)
            rows.append(
                {
                    "did": d,
                    "n": acc.n,
                    "g": acc.gaps,
                    "dup": acc.dups,
                    "rs": acc.resets,
                    "sus": acc.suspect,
                    "last_seq": last_seq,
                    "epoch": epoch,
                    "seen": now,
                    # the validated payload as it came: no re-serialisation per sample
                    "tel": newest_raw,
                    "tel_at": now if newest else None,
                    "bundle": newest.active_bundle if newest else None,
                    "variant": newest.active_variant if newest else None,
                    "level": newest.power_level.value if newest and newest.power_level else None,
                }
            )
        counts = {
            "telemetry_count": _DEV.c.telemetry_count + bindparam("n"),
            "gaps": _DEV.c.gaps + bindparam("g"),
            "duplicates": _DEV.c.duplicates + bindparam("dup"),
            "resets": _DEV.c.resets + bindparam("rs"),
            "suspect_seqs": _DEV.c.suspect_seqs + bindparam("sus"),
            "last_seq": bindparam("last_seq"),
            "seq_epoch": bindparam("epoch"),
        }
        if copy:
            bulk.update_devices(session, rows)
            self._touched |= set(per_device)
            return
        with_sample = [r for r in rows if r["tel"] is not None]
        only_counts = [r for r in rows if r["tel"] is None]
        if with_sample:
            raw_json: Any = bindparam("tel", type_=Text)
            if session.get_bind().dialect.name != "sqlite":
                raw_json = cast(raw_json, JSON)
            session.execute(
                update(_DEV)
                .where(_DEV.c.id == bindparam("did"))
                .values(
                    **counts,
                    last_seen=bindparam("seen"),
                    last_telemetry=raw_json,
                    last_telemetry_at=bindparam("tel_at"),
                    # no `online` here: birth and will on `state` alone decide it; a last
                    # sample and the will often share a batch, and states are applied first
                    active_bundle=bindparam("bundle"),
                    active_variant=bindparam("variant"),
                    power_level=bindparam("level"),
                ),
                with_sample,
            )
        if only_counts:
            session.execute(
                update(_DEV).where(_DEV.c.id == bindparam("did")).values(**counts),
                only_counts,
            )
        self._touched |= set(per_device)

    def _judge(self, sample: Telemetry, acc: _DeviceBatch) -> str:
        """Where `sample` falls in its device's sequence: "next" (moves it on, maybe past a
        gap or a reset), "behind" (at or below the last: a duplicate or a late arrival) or
        "keep" (stored, but the sequence stays: a suspect jump)."""
        d, seq = sample.device_id, sample.seq
        known = self._seq.get(d)
        if known is None:
            self._seq[d] = (sample.epoch, seq)
            return "next"
        epoch, last = known
        restarted = sample.epoch != epoch if sample.epoch is not None else seq == 0
        if restarted and not (sample.epoch is None and last == 0):
            acc.resets += 1
            self._jump.pop(d, None)
            self._seq[d] = (sample.epoch, seq)
            return "next"
        if seq <= last:
            return "behind"
        confirmed = self._jump.pop(d, None) == seq - 1  # the sample after a jump goes on
        if seq - last > self.max_seq_jump and not confirmed:
            acc.suspect += 1
            self._jump[d] = seq
            log.warning("telemetry from %s jumps from seq %d to %d: suspect", d, last, seq)
            return "keep"
        acc.gaps += seq - last - 1 - confirmed  # the suspect sample itself was stored
        self._seq[d] = (epoch, seq)
        return "next"

    @staticmethod
    def _not_stored(
        session: Session, samples: list[tuple[Telemetry, str]]
    ) -> list[tuple[Telemetry, str]]:
        """Those of `samples` (each at or below its device's last seq) not in the table yet."""
        if not samples:
            return []
        stored: set[tuple[str, str | None, int]] = set()
        for d, epoch, seq in session.execute(
            select(TelemetrySample.device_id, TelemetrySample.epoch, TelemetrySample.seq).where(
                TelemetrySample.device_id.in_(sorted({s.device_id for s, _ in samples})),
                TelemetrySample.seq.in_(sorted({s.seq for s, _ in samples})),
            )
        ):
            stored.add((d, epoch, seq))
        fresh, seen = [], set()
        for sample, raw in samples:
            key = (sample.device_id, sample.epoch, sample.seq)
            # without an epoch (an older agent) the table cannot tell: a duplicate, as before
            if sample.epoch is not None and key not in stored and key not in seen:
                fresh.append((sample, raw))
                seen.add(key)
        return fresh

    def _apply_reply(self, session: Session, reply: Reply, now: float) -> None:
        cmd = commands.apply_reply(session, reply, now)
        if cmd is not None and cmd.type == "benchmark" and reply.status == "done":
            self._store_benchmark(session, reply)

    def _store_benchmark(self, session: Session, reply: Reply) -> None:
        try:
            result = BenchmarkResult.model_validate(reply.result)
        except ValueError as exc:
            # the reply itself is kept (status, detail); only its result is unusable
            log.warning("benchmark reply from %s is malformed: %s", reply.device_id, exc)
            return
        now = time.time()
        for variant_id, timing in result.timings.items():
            row = session.get(
                BenchmarkRecord, (result.hardware_class, result.bundle_id, variant_id)
            )
            if row is None:
                row = BenchmarkRecord(
                    hardware_class=result.hardware_class,
                    bundle_id=result.bundle_id,
                    variant_id=variant_id,
                )
                session.add(row)
            row.device_id = reply.device_id
            row.p50_ms = timing.p50_ms
            row.p95_ms = timing.p95_ms
            row.p99_ms = timing.p99_ms
            row.error = timing.error
            row.measured_at = now

    # --- housekeeping -------------------------------------------------------------------------

    @property
    def pruning(self) -> bool:
        return bool(self._pruning)

    def prune(
        self,
        session: Session,
        history_per_device: int,
        events_per_device: int,
        max_age_s: float | None = None,
        now: float | None = None,
        limit: int | None = None,
    ) -> int:
        """Keep the newest `history_per_device` samples of each device touched since the
        last round, and none older than `max_age_s`.

        A round takes the devices touched so far and works through them `limit` at a time,
        one slice per call, so the caller (the bridge's writer) never stalls for a whole
        fleet's deletes at once; `pruning` says a round is under way."""
        with self._lock:
            if not self._pruning:
                self._pruning, self._touched = sorted(self._touched), set()
            touched = self._pruning[:limit] if limit else self._pruning
            self._pruning = self._pruning[len(touched) :]
        if not touched:
            return 0
        aged = 0
        if max_age_s is not None:
            cut = (time.time() if now is None else now) - max_age_s
            old = text("DELETE FROM telemetry_samples WHERE device_id = :d AND ts < :cut")
            result = session.execute(old, [{"d": d, "cut": cut} for d in touched])
            aged = int(getattr(result, "rowcount", 0) or 0)
        cutoff = text(
            "DELETE FROM telemetry_samples WHERE device_id = :d AND id <= ("
            "SELECT id FROM telemetry_samples WHERE device_id = :d "
            "ORDER BY id DESC LIMIT 1 OFFSET :n)"
        )
        res = session.execute(cutoff, [{"d": d, "n": history_per_device} for d in touched])
        ev_cut = text(
            "DELETE FROM events WHERE device_id = :d AND id <= ("
            "SELECT id FROM events WHERE device_id = :d ORDER BY id DESC LIMIT 1 OFFSET :n)"
        )
        session.execute(ev_cut, [{"d": d, "n": events_per_device} for d in touched])
        return aged + int(getattr(res, "rowcount", 0) or 0)


# --- queries (API, rollouts) ------------------------------------------------------------------


def device_tags(session: Session, device_ids: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {d: [] for d in device_ids}
    if not device_ids:
        return out
    for device_id, tag in session.execute(
        select(DeviceTag.device_id, DeviceTag.tag)
        .where(DeviceTag.device_id.in_(device_ids))
        .order_by(DeviceTag.tag)
    ):
        out[device_id].append(tag)
    return out


class DeviceInRollout(Exception):
    """The device is part of a rollout still under way; removing it would stall that rollout."""


def remove_device(session: Session, device_id: str) -> bool:
    """Forget a device: its row, tags, history, events, commands and broker credential (a
    finished rollout keeps its record). False when there was no such device."""
    if session.get(Device, device_id) is None:
        return False
    active = session.scalar(
        select(RolloutDevice.rollout_id)
        .join(Rollout, Rollout.id == RolloutDevice.rollout_id)
        .where(RolloutDevice.device_id == device_id, Rollout.state.in_(("running", "paused")))
        .limit(1)
    )
    if active is not None:
        raise DeviceInRollout(
            f"device {device_id} is in rollout {active}, which is still under way: abort it "
            "or let it finish, then remove the device"
        )
    for table in (DeviceTag, TelemetrySample, EventRecord, CommandRecord, DeviceCredential):
        session.execute(delete(table).where(table.device_id == device_id))
    session.execute(delete(Device).where(Device.id == device_id))
    return True


def set_tags(session: Session, device_id: str, tags: list[str]) -> None:
    session.execute(delete(DeviceTag).where(DeviceTag.device_id == device_id))
    for tag in sorted(set(tags)):
        session.add(DeviceTag(device_id=device_id, tag=tag))


def _device_filters(
    query: Any,
    *,
    q: str | None = None,
    tag: str | None = None,
    online: bool | None = None,
    arch: str | None = None,
    hardware_class: str | None = None,
    variant: str | None = None,
    power_level: str | None = None,
    bundle: str | None = None,
) -> Any:
    if q:
        query = query.where(Device.id.contains(q, autoescape=True))
    if tag is not None:
        query = query.where(Device.id.in_(select(DeviceTag.device_id).where(DeviceTag.tag == tag)))
    if online is not None:
        query = query.where(Device.online == online)
    if arch is not None:
        query = query.where(Device.arch == arch)
    if hardware_class is not None:
        query = query.where(Device.hardware_class == hardware_class)
    if variant is not None:
        query = query.where(Device.active_variant == variant)
    if power_level is not None:
        query = query.where(Device.power_level == power_level)
    if bundle is not None:
        query = query.where(Device.active_bundle == bundle)
    return query


def list_devices(
    session: Session,
    *,
    sort: str = "id",
    after: tuple[Any, str] | None = None,
    limit: int = 10_000,
    offset: int = 0,
    **filters: Any,
) -> list[Device]:
    """Devices matching `filters`, ordered by `sort` ("-last_seen": newest first) then id;
    `after` = the previous page's last (sort value, id)."""
    descending = sort.startswith("-")
    column = getattr(Device, sort.lstrip("-"))
    order = (column.desc(), Device.id.desc()) if descending else (column, Device.id)
    query = _device_filters(select(Device), **filters).order_by(*order)
    if after is not None:
        value, key = after
        if descending:
            query = query.where(or_(column < value, and_(column == value, Device.id < key)))
        else:
            query = query.where(or_(column > value, and_(column == value, Device.id > key)))
    return list(session.scalars(query.limit(limit).offset(offset)))


def summary(session: Session, **filters: Any) -> dict[str, Any]:
    """How many devices match `filters`, and how they split by status, power level, active
    variant, hardware class, architecture, bundle and tag: what a fleet page draws without
    listing devices."""
    base = _device_filters(select(Device.id), **filters).subquery()
    out: dict[str, Any] = {"total": session.scalar(select(func.count()).select_from(base)) or 0}
    for name, column in (
        ("online", Device.online),
        ("power_level", Device.power_level),
        ("variant", Device.active_variant),
        ("hardware_class", Device.hardware_class),
        ("arch", Device.arch),
        ("bundle", Device.active_bundle),
    ):
        rows = session.execute(
            select(column, func.count()).where(Device.id.in_(select(base.c.id))).group_by(column)
        ).all()
        if name == "online":
            out[name] = {"online": 0, "offline": 0} | {
                "online" if value else "offline": n for value, n in rows
            }
        else:
            out[name] = {("none" if value is None else str(value)): n for value, n in rows}
    tags = session.execute(
        select(DeviceTag.tag, func.count())
        .where(DeviceTag.device_id.in_(select(base.c.id)))
        .group_by(DeviceTag.tag)
    ).all()
    out["tag"] = dict(tags)
    return out


def history(session: Session, device_id: str, limit: int) -> list[Telemetry]:
    rows = session.execute(
        select(TelemetrySample.payload)
        .where(TelemetrySample.device_id == device_id)
        .order_by(TelemetrySample.id.desc())
        .limit(limit)
    ).all()
    return [Telemetry.model_validate_json(r[0]) for r in reversed(rows)]


def recent_events(
    session: Session,
    device_id: str | None = None,
    kind: str | None = None,
    limit: int = 100,
    before: int | None = None,
) -> list[EventRecord]:
    """Newest first; `before`: only events older than that event id (the next page)."""
    query = select(EventRecord).order_by(EventRecord.id.desc()).limit(limit)
    if before is not None:
        query = query.where(EventRecord.id < before)
    if device_id is not None:
        query = query.where(EventRecord.device_id == device_id)
    if kind is not None:
        query = query.where(EventRecord.kind == kind)
    return list(session.scalars(query))


def profile(device: Device) -> HardwareProfile | None:
    return HardwareProfile.model_validate(device.hardware) if device.hardware else None


def counts(session: Session) -> dict[str, Any]:
    """Aggregates for /metrics."""
    online = session.scalar(select(func.count()).where(Device.online.is_(True))) or 0
    total = session.scalar(select(func.count()).select_from(Device)) or 0
    per_variant = dict(
        session.execute(
            select(Device.active_variant, func.count())
            .where(Device.online.is_(True))
            .group_by(Device.active_variant)
        ).all()
    )
    per_level = dict(
        session.execute(
            select(Device.power_level, func.count())
            .where(Device.online.is_(True))
            .group_by(Device.power_level)
        ).all()
    )
    sums = session.execute(
        select(
            *(
                func.coalesce(func.sum(c), 0)
                for c in (Device.gaps, Device.duplicates, Device.resets, Device.suspect_seqs)
            )
        )
    ).one()
    gaps, dups, resets, suspect = (int(v) for v in sums)
    return {
        "online": online,
        "total": total,
        "per_variant": per_variant,
        "per_level": per_level,
        "gaps": gaps,
        "duplicates": dups,
        "resets": resets,
        "suspect": suspect,
    }
