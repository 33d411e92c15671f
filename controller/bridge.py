"""The MQTT bridge: subscribes to every device's state/telemetry/event/reply, publishes commands.

Results (`…/result`, QoS 0) are a stream, not records: the bridge keeps only each device's
latest (and latest thumbnail) in memory, for the dashboard; nothing of them is written.

The paho network thread only appends raw messages to a queue; a writer thread validates them
with `lepton_edge.shared.messages.decode` and commits them to the registry in batches (every
`flush_interval_ms` or `batch_max` messages), so ingestion keeps up with a large fleet.
Malformed, oversized or misaddressed payloads are counted and dropped; nothing crashes.

Nothing the broker delivered is lost to a controller crash: the session is persistent (a
stable client id; session expiry on MQTT 5, clean_session=False on 3.1.1) and each message is
acknowledged only after the batch holding it is committed, so what was in flight is delivered
again to the restarted controller (and stored once: see `Fleet`). The broker's window of
unacknowledged messages (`receive_max`) is the queue's bound: a slow database slows the
broker down (it queues), it never makes the controller drop anything.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from lepton_edge.controller.config import ControllerSettings
from lepton_edge.controller.db import Database
from lepton_edge.controller.fleet import Batch, Fleet, IngestResult
from lepton_edge.controller.homeassistant import Discovery
from lepton_edge.shared import messages, topics
from lepton_edge.shared.errors import MessageError, TopicError
from lepton_edge.shared.messages import Event, InferenceResult, Reply, State, Telemetry
from lepton_edge.shared.topics import Kind

log = logging.getLogger(__name__)

SUBSCRIBED_KINDS = (Kind.STATE, Kind.TELEMETRY, Kind.EVENT, Kind.REPLY, Kind.RESULT)


@dataclass
class BridgeCounters:
    received: int = 0
    processed: int = 0
    telemetry: int = 0
    gaps: int = 0
    duplicates: int = 0
    rejected_malformed: int = 0
    rejected_oversized: int = 0
    rejected_topic: int = 0
    rejected_unknown: int = 0
    dropped_queue_full: int = 0
    resets: int = 0
    suspect: int = 0
    late: int = 0
    batches: int = 0
    write_errors: int = 0
    ingest_failed: int = 0
    commands_published: int = 0


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    mid: int
    qos: int
    connection: int  # which connection delivered it: only that one can acknowledge it


def stable_client_id(settings: ControllerSettings) -> str:
    """The same id after a restart (same host, state dir and HTTP port), another for another
    replica (replicas may share a state dir; on one host they listen on different ports)."""
    where = f"{settings.state_dir.resolve()}:{settings.http_port}"
    where = hashlib.sha256(where.encode()).hexdigest()[:8]
    return f"lepton-controller-{socket.gethostname()[:32]}-{where}"


class Bridge:
    """One paho client (MQTT v5) plus the batching writer."""

    def __init__(
        self,
        settings: ControllerSettings,
        db: Database,
        fleet: Fleet | None = None,
        observe_batch: Callable[[float], None] | None = None,
        observe_lag: Callable[[float], None] | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.fleet = fleet or Fleet()
        self.observe_batch = observe_batch  # seconds one batch took to decode and commit
        self.observe_lag = observe_lag  # seconds from a sample's timestamp to its commit
        self.counters = BridgeCounters()
        self.connected = threading.Event()
        self._queue: collections.deque[Received] = collections.deque()
        self._connection = 0
        self.failures: collections.Counter[str] = collections.Counter()  # reason -> rows
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._writer: threading.Thread | None = None
        self._last_prune = time.monotonic()
        self._rate_window: collections.deque[tuple[float, int]] = collections.deque(maxlen=600)
        self.latest_results: dict[str, InferenceResult] = {}
        ha = settings.homeassistant
        self.discovery = (
            Discovery(ha.discovery_prefix, ha.controller_id, self._publish_retained)
            if ha.discovery
            else None
        )
        self.latest_thumbnails: dict[str, InferenceResult] = {}
        m = settings.mqtt
        v5 = m.protocol == "5"
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=m.client_id or stable_client_id(settings),
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            clean_session=None if v5 else False,
            manual_ack=True,
        )
        if m.username:
            self.client.username_pw_set(m.username, m.password)
        if m.tls:
            self.client.tls_set(
                ca_certs=str(m.ca_file) if m.ca_file else None, cert_reqs=ssl.CERT_REQUIRED
            )
        self.client.max_queued_messages_set(0)
        self.client.max_inflight_messages_set(1000)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        m = self.settings.mqtt
        self._writer = threading.Thread(target=self._write_loop, name="bridge-writer", daemon=True)
        self._writer.start()
        self.client.reconnect_delay_set(min_delay=1, max_delay=10)
        if m.protocol == "5":
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = m.session_expiry_s
            props.ReceiveMaximum = m.receive_max
            self.client.connect_async(
                m.host, m.port, keepalive=m.keepalive_s, clean_start=False, properties=props
            )
        else:
            self.client.connect_async(m.host, m.port, keepalive=m.keepalive_s)
        self.client.loop_start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._writer:
            self._writer.join(timeout=10)
        self._flush()  # whatever arrived last, acknowledged while still connected
        self.client.disconnect()
        self.client.loop_stop()

    def wait_connected(self, timeout: float = 10.0) -> bool:
        return self.connected.wait(timeout)

    # --- paho callbacks (network thread: keep them tiny) ----------------------------------------

    def _on_connect(
        self,
        client: mqtt.Client,
        _userdata: Any,
        _flags: Any,
        reason: ReasonCode,
        _props: Properties | None,
    ) -> None:
        if reason.is_failure:
            log.error("broker refused the controller: %s", reason)
            return
        group = self.settings.mqtt.shared_subscription_group
        # Retained births are not delivered on shared subscriptions, and state is small:
        # every controller takes the whole state stream (applying it twice is harmless).
        subs = [(topics.subscription(Kind.STATE), 1)]
        subs += [
            (topics.subscription(k, group), 1)
            for k in SUBSCRIBED_KINDS
            if k not in (Kind.STATE, Kind.RESULT)
        ]
        # Every replica sees every result (QoS 0, not shared): each one's dashboard shows them.
        subs.append((topics.subscription(Kind.RESULT), 0))
        client.subscribe(subs)
        self._connection += 1
        self.connected.set()
        log.info("bridge connected to %s:%s", self.settings.mqtt.host, self.settings.mqtt.port)

    def _on_disconnect(self, *_args: Any) -> None:
        self.connected.clear()

    def _on_message(self, _client: mqtt.Client, _userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self.counters.received += 1
        if msg.qos == 0 and len(self._queue) >= self.settings.ingest.queue_max:
            self.counters.dropped_queue_full += 1  # a result (a stream, QoS 0): the next one comes
            return
        # QoS 1 is never dropped here: unacknowledged, it is bounded by the broker's window
        self._queue.append(
            Received(msg.topic, bytes(msg.payload), msg.mid, msg.qos, self._connection)
        )
        if len(self._queue) >= self._wake_at:
            self._wake.set()

    @property
    def _wake_at(self) -> int:
        """Flush before the broker's window fills (it sends nothing more until we acknowledge)."""
        return max(1, min(self.settings.ingest.batch_max, self.settings.mqtt.receive_max // 2))

    # --- writer thread ----------------------------------------------------------------------------

    def _write_loop(self) -> None:
        interval = self.settings.ingest.flush_interval_ms / 1000
        while not self._stop.is_set():
            self._wake.wait(interval)
            self._wake.clear()
            try:
                while self._queue:
                    self._flush()
                self._maybe_prune()
            except Exception:  # the bridge must outlive any one bad batch
                self.counters.write_errors += 1
                log.exception("bridge: writing a batch failed")
                time.sleep(interval)

    def decode(self, items: list[Received]) -> Batch:
        batch = Batch()
        for item in items:
            topic_name, payload = item.topic, item.payload
            try:
                device_id, kind = topics.parse(topic_name)
            except TopicError as exc:
                self.counters.rejected_topic += 1
                log.debug("dropped: %s", exc)
                continue
            if kind not in SUBSCRIBED_KINDS:
                self.counters.rejected_topic += 1
                continue
            if not payload and kind is Kind.STATE:
                continue  # a retained state cleared (a device removed): nothing to store
            if len(payload) > messages.MAX_PAYLOAD_BYTES:
                self.counters.rejected_oversized += 1
                log.warning("dropped %d-byte payload on %s", len(payload), topic_name)
                continue
            try:
                msg = messages.decode_device_message(kind, payload)
            except MessageError as exc:
                self.counters.rejected_malformed += 1
                log.info("dropped malformed %s from %s: %s", kind.value, device_id, exc)
                continue
            if msg.device_id != device_id:
                self.counters.rejected_topic += 1
                log.info("dropped %s: device_id does not match topic %s", kind.value, topic_name)
                continue
            if isinstance(msg, Telemetry):
                batch.telemetry.append((msg, payload.decode()))
            elif isinstance(msg, State):
                batch.states.append(msg)
            elif isinstance(msg, Event):
                batch.events.append(msg)
            elif isinstance(msg, Reply):
                batch.replies.append(msg)
            elif isinstance(msg, InferenceResult):
                self._keep_result(msg)
        return batch

    def _keep_result(self, result: InferenceResult) -> None:
        if self.discovery is not None:
            self.discovery.saw(result)
        if result.thumbnail_jpeg is not None:
            self.latest_thumbnails[result.device_id] = result
        self.latest_results[result.device_id] = result

    def latest_result(
        self, device_id: str
    ) -> tuple[InferenceResult | None, InferenceResult | None]:
        """The device's newest result, and the newest one that carried a thumbnail."""
        return self.latest_results.get(device_id), self.latest_thumbnails.get(device_id)

    def _flush(self) -> None:
        items: list[Received] = []
        limit = self.settings.ingest.batch_max
        while self._queue and len(items) < limit:
            items.append(self._queue.popleft())
        if not items:
            return
        started = time.perf_counter()
        batch = self.decode(items)
        if len(batch):
            for result in self._apply(batch):
                c = self.counters
                c.telemetry += result.telemetry
                c.gaps += result.gaps
                c.duplicates += result.duplicates
                c.resets += result.resets
                c.suspect += result.suspect
                c.late += result.late
                c.rejected_unknown += result.unknown
        if self.observe_batch is not None:
            self.observe_batch(time.perf_counter() - started)
        if self.observe_lag is not None:
            committed = time.time()
            for telemetry, _ in batch.telemetry:
                self.observe_lag(max(0.0, committed - telemetry.ts))
        if self.discovery is not None:
            for state in batch.states:
                self.discovery.saw(state)
            for telemetry, _ in batch.telemetry:
                self.discovery.saw(telemetry)
        self._acknowledge(items)
        self.counters.processed += len(items)
        self.counters.batches += 1
        self._rate_window.append((time.monotonic(), self.counters.telemetry))

    def _acknowledge(self, items: list[Received]) -> None:
        """Tell the broker these are ours now (committed, or refused for good)."""
        for item in items:
            # A message from an earlier connection is delivered again on this one: that copy
            # is stored once and acknowledged in its turn.
            if item.qos and item.connection == self._connection:
                self.client.ack(item.mid, item.qos)

    def _apply(self, batch: Batch, attempts: int = 3) -> list[IngestResult]:
        """Commit a batch; a database hiccup is retried, and a batch that still fails is
        written message by message, so one row that cannot be written (counted with its
        reason) never takes the others down."""
        for attempt in range(1, attempts + 1):
            try:
                return [self._commit(batch)]
            except Exception as exc:
                self.fleet.reset()  # its caches ran ahead of what was rolled back
                log.warning("bridge: writing a batch failed (attempt %d): %s", attempt, exc)
                if attempt < attempts:
                    time.sleep(0.2 * attempt)
        self.counters.write_errors += 1
        results = []
        for one in batch.split():
            try:
                results.append(self._commit(one))
            except Exception as exc:
                self.fleet.reset()
                reason = type(exc).__name__
                self.failures[reason] += 1
                self.counters.ingest_failed += 1
                log.error("bridge: a message could not be written (%s): %s", one.describe(), exc)
        return results

    def _commit(self, batch: Batch) -> IngestResult:
        with self.db.session() as session:
            return self.fleet.apply(session, batch)

    def _maybe_prune(self) -> None:
        """A round every `prune_interval_s`, one slice of `prune_slice` devices per turn of
        the writer loop: ingestion waits for one slice at a time, never for the whole fleet."""
        ing = self.settings.ingest
        if not self.fleet.pruning:
            if time.monotonic() - self._last_prune < ing.prune_interval_s:
                return
            self._last_prune = time.monotonic()
        with self.db.session() as session:
            self.fleet.prune(
                session,
                ing.history_per_device,
                ing.events_per_device,
                ing.history_max_age_s,
                limit=ing.prune_slice,
            )

    def telemetry_rate(self, window_s: float = 60.0) -> float:
        """Telemetry samples per second ingested over the last `window_s`."""
        now = time.monotonic()
        recent = [(t, n) for t, n in self._rate_window if now - t <= window_s]
        if len(recent) < 2:
            return 0.0
        (t0, n0), (t1, n1) = recent[0], recent[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0

    def backlog(self) -> int:
        return len(self._queue)

    # --- retained messages ------------------------------------------------------------------------

    def _publish_retained(self, topic_name: str, payload: bytes) -> None:
        """Retained QoS 1 (Home Assistant discovery, cleared state); paho queues it while the
        link is down and sends it on reconnect."""
        self.client.publish(topic_name, payload, qos=1, retain=True)

    def forget(self, device_id: str) -> None:
        """A removed device: clear its retained state and its Home Assistant entities."""
        self._publish_retained(topics.topic(device_id, Kind.STATE), b"")
        if self.discovery is not None:
            self.discovery.forget(device_id)

    # --- commands -------------------------------------------------------------------------------

    def publish_command(self, device_id: str, command: messages.CommandMessage) -> bool:
        """Publish at QoS 1; False if not connected (the caller retries later)."""
        if not self.connected.is_set():
            return False
        info = self.client.publish(
            topics.topic(device_id, Kind.CMD), messages.encode(command), qos=1
        )
        ok = info.rc == mqtt.MQTT_ERR_SUCCESS
        if ok:
            self.counters.commands_published += 1
        return ok
