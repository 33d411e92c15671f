"""Load generator: many simulated devices speaking the lepton MQTT contract, cheaply.

    .venv/bin/python bench/loadgen.py --devices 10000 --interval 5 --seconds 600 \\
        --host 127.0.0.1 --port 1883

Each device is its own MQTT 3.1.1 connection (client id = device id) with a will that
marks it offline, a retained birth on `…/state` with a hardware profile, a subscription to
its `…/cmd`, and telemetry with `seq` at a fixed interval (QoS 1, counted once the broker
acknowledges it). A deploy command is carried out as the agent's store would, minus the
signature check and the runtimes: the manifest and the ladder's files are downloaded over HTTP
with the command's grant (sha256 checked), then the bundle is reported active on `…/state`
and the command answered `done`. Other commands are answered `rejected`.

This is a lean implementation of the contract, not the agent's own link and outbox: those use
one paho client and a thread per device (about 4 MB and a thread each), so 10,000 of them do
not fit beside the controller on a 2-core box. Here thousands of connections share one asyncio
loop per process and every payload is the shared `Telemetry` model encoded once per device,
with only `ts` and `seq` changed per sample.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import random
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402

from lepton_edge.shared import messages, topics  # noqa: E402
from lepton_edge.shared.hardware import HardwareProfile  # noqa: E402
from lepton_edge.shared.messages import (  # noqa: E402
    CpuSample,
    MemorySample,
    Reply,
    State,
    Telemetry,
)
from lepton_edge.shared.topics import Kind  # noqa: E402

TS, SEQ = 1234567890.125, 987654321  # placeholders in the encoded template
START = int(time.time())
DOWNLOAD_ATTEMPTS = 6  # the agent's default `download_attempts`


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _text(s: str | bytes) -> bytes:
    raw = s.encode() if isinstance(s, str) else s
    return struct.pack("!H", len(raw)) + raw


def _packet(kind: int, body: bytes) -> bytes:
    return bytes([kind]) + _varint(len(body)) + body


def connect_packet(
    client_id: str, will_topic: str, will: bytes, user: str | None, password: str | None
) -> bytes:
    flags = 0x02 | 0x04 | 0x08 | 0x20  # clean session, will, will QoS 1, will retained
    payload = _text(client_id) + _text(will_topic) + _text(will)
    if user is not None:
        flags |= 0x80
        payload += _text(user)
        if password is not None:
            flags |= 0x40
            payload += _text(password)
    header = _text("MQTT") + bytes([4, flags]) + struct.pack("!H", 60)
    return _packet(0x10, header + payload)


def publish_packet(topic: str, payload: bytes, packet_id: int, retain: bool = False) -> bytes:
    return _packet(
        0x32 | (0x01 if retain else 0), _text(topic) + struct.pack("!H", packet_id) + payload
    )


@dataclass
class Counts:
    connected: int = 0
    samples: int = 0  # telemetry sent
    published: int = 0  # every QoS 1 publish: births, samples, goodbyes
    acked: int = 0  # of those, acknowledged by the broker
    deployed: int = 0  # deploy commands carried out
    downloaded: int = 0  # artifact bytes
    commands: int = 0
    failed: int = 0


def _board() -> HardwareProfile:
    return HardwareProfile(
        arch="aarch64",
        cpu_model="Cortex-A72 (loadgen)",
        cores=4,
        features=["neon"],
        memory_mb=2048,
        runtimes={"onnxruntime": "loadgen", "litert": "loadgen"},
    )


def _templates(
    device_id: str, bundle: str | None = None, variant: str | None = None
) -> tuple[bytes, bytes, bytes]:
    """(birth, will, telemetry template with TS and SEQ placeholders) for one device."""
    now = time.time()
    birth = messages.encode(
        State(
            device_id=device_id, ts=now, status="online", hardware=_board(), agent_version="loadgen"
        )
    )
    will = messages.encode(State(device_id=device_id, ts=now, status="offline"))
    telemetry = messages.encode(
        Telemetry(
            device_id=device_id,
            ts=TS,
            seq=SEQ,
            epoch=f"loadgen{START}",  # a new run is a new sequence, not a reset
            active_bundle=bundle,
            active_variant=variant,
            cpu=CpuSample(percent=12.5),
            memory=MemorySample(used_mb=512, available_mb=1536, percent=25.0),
        )
    )
    return birth, will, telemetry


class Device:
    """One simulated device on one MQTT connection."""

    def __init__(
        self,
        device_id: str,
        args: argparse.Namespace,
        counts: Counts,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.id = device_id
        self.args = args
        self.counts = counts
        self.http = http  # for deploys: manifests and artifacts
        self.hardware = _board()
        self.tasks: set[asyncio.Task[None]] = set()
        self.birth, self.will, template = _templates(device_id)
        self._use(template)
        self.packet_id = 0
        self.writer: asyncio.StreamWriter | None = None

    def _use(self, template: bytes) -> None:
        """Telemetry from now on: `template` with this sample's ts and seq."""
        self.head, _, rest = template.partition(json.dumps(TS).encode())
        self.middle, _, self.tail = rest.partition(str(SEQ).encode())

    def _next_id(self) -> int:
        self.packet_id = self.packet_id % 65535 + 1
        return self.packet_id

    def telemetry(self, seq: int) -> bytes:
        return self.head + repr(time.time()).encode() + self.middle + str(seq).encode() + self.tail

    async def run(self, stop_at: float) -> None:
        args = self.args
        reader, writer = await asyncio.open_connection(args.host, args.port)
        self.writer = writer
        state = topics.topic(self.id, Kind.STATE)
        writer.write(connect_packet(self.id, state, self.will, args.username, args.password))
        reading = asyncio.create_task(self._read(reader))
        writer.write(publish_packet(state, self.birth, self._next_id(), retain=True))
        self.counts.published += 1
        writer.write(
            _packet(
                0x82,
                struct.pack("!H", self._next_id())
                + _text(topics.topic(self.id, Kind.CMD))
                + b"\x01",
            )
        )
        self.counts.connected += 1
        telemetry = topics.topic(self.id, Kind.TELEMETRY)
        await asyncio.sleep(random.uniform(0, args.interval))  # spread the fleet over the interval
        seq = 0
        next_at = time.monotonic()
        while time.monotonic() < stop_at:
            writer.write(publish_packet(telemetry, self.telemetry(seq), self._next_id()))
            self.counts.samples += 1
            self.counts.published += 1
            seq += 1
            next_at += args.interval
            await writer.drain()
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        writer.write(publish_packet(state, self.will, self._next_id(), retain=True))
        self.counts.published += 1
        await writer.drain()
        await asyncio.sleep(2)  # the last acknowledgements
        writer.write(b"\xe0\x00")  # DISCONNECT: a clean goodbye, no will
        await writer.drain()
        reading.cancel()
        writer.close()

    async def _read(self, reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            await self._packets(reader)

    async def _packets(self, reader: asyncio.StreamReader) -> None:
        while True:
            first = (await reader.readexactly(1))[0]
            length, shift = 0, 0
            while True:
                byte = (await reader.readexactly(1))[0]
                length += (byte & 0x7F) << shift
                shift += 7
                if not byte & 0x80:
                    break
            body = await reader.readexactly(length)
            kind = first & 0xF0
            if kind == 0x40:  # PUBACK: the broker holds the message
                self.counts.acked += 1
            elif kind == 0x30:  # a command
                self.counts.commands += 1
                (size,) = struct.unpack("!H", body[:2])
                qos = (first >> 1) & 0x03
                payload = body[2 + size + (2 if qos else 0) :]
                if qos and self.writer is not None:  # acknowledge it
                    self.writer.write(b"\x40\x02" + body[2 + size : 4 + size])
                self._command(payload)
            elif kind == 0x20 and body[1] != 0:
                raise ConnectionError(f"{self.id}: broker refused the connection ({body[1]})")

    def _command(self, payload: bytes) -> None:
        try:
            command = json.loads(payload)
            command_id = str(command["command_id"])
        except (ValueError, KeyError, TypeError):
            return
        if command.get("type") == "deploy" and self.http is not None:
            task = asyncio.create_task(self._deploy(command))
            self.tasks.add(task)  # keep a reference until it is done
            task.add_done_callback(self.tasks.discard)
        else:
            self._reply(command_id, "rejected", "a simulated device takes deploy commands only")

    def _reply(self, command_id: str, status: Any, detail: str = "") -> None:
        reply = Reply(
            device_id=self.id, ts=time.time(), command_id=command_id, status=status, detail=detail
        )
        self._publish(topics.topic(self.id, Kind.REPLY), messages.encode(reply))

    def _publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        if self.writer is not None:
            self.writer.write(publish_packet(topic, payload, self._next_id(), retain))
            self.counts.published += 1

    async def _fetch(self, url: str, auth: dict[str, str], sha256: str | None) -> bytes:
        """One download, tried as often as the agent tries (`download_attempts`, 0.5 s apart
        doubling up to 8 s), so a replica that dies mid-transfer costs a retry, not the deploy.
        A file is checked against its sha256 and counted, not kept; a retry starts it over
        (the agent resumes with Range)."""
        assert self.http is not None
        for attempt in range(DOWNLOAD_ATTEMPTS):
            digest, body = hashlib.sha256(), bytearray()
            try:
                async with self.http.stream("GET", url, headers=auth) as stream:
                    stream.raise_for_status()
                    async for chunk in stream.aiter_bytes(1 << 16):
                        digest.update(chunk)
                        self.counts.downloaded += len(chunk)
                        if sha256 is None:
                            body += chunk
            except httpx.HTTPError as exc:
                refused = isinstance(exc, httpx.HTTPStatusError) and exc.response.is_client_error
                if refused or attempt == DOWNLOAD_ATTEMPTS - 1:
                    raise
                await asyncio.sleep(min(8.0, 0.5 * 2**attempt))
                continue
            if sha256 is not None and digest.hexdigest() != sha256:
                raise ValueError(f"{url}: sha256 differs")
            return bytes(body)
        raise AssertionError("unreachable")

    async def _deploy(self, command: dict[str, Any]) -> None:
        """Fetch the manifest and the ladder's files (sha256 checked), then report the bundle
        active: what the agent's store does, minus the signature check and the runtimes."""
        auth = {"Authorization": f"Bearer {command['download_token']}"}
        try:
            reply = await self._fetch(command["manifest_url"], auth, None)
            files = {v["id"]: v["sha256"] for v in json.loads(reply)["variants"]}
            for variant in sorted(set(command["ladder"].values())):
                url = f"{command['artifact_base_url']}/{files[variant]}"
                await self._fetch(url, auth, files[variant])
        except (httpx.HTTPError, KeyError, ValueError) as exc:
            self._reply(command["command_id"], "failed", f"{type(exc).__name__}: {exc}"[:200])
            return
        state = State(
            device_id=self.id,
            ts=time.time(),
            status="online",
            hardware=self.hardware,
            agent_version="loadgen",
            active_bundle=command["bundle_id"],
            active_variant=command["ladder"].get("performance"),
        )
        self._publish(topics.topic(self.id, Kind.STATE), messages.encode(state), retain=True)
        self._use(_templates(self.id, state.active_bundle, state.active_variant)[2])
        self._reply(command["command_id"], "done", f"bundle {command['bundle_id']} active")
        self.counts.deployed += 1


async def _fleet(first: int, count: int, args: argparse.Namespace, counts: Counts) -> None:
    stop_at = time.monotonic() + args.seconds + args.ramp
    # One pool per process: at most `downloads` artifact transfers at once from it.
    limits = httpx.Limits(max_connections=args.downloads, max_keepalive_connections=args.downloads)
    http = httpx.AsyncClient(limits=limits, timeout=120)
    devices = [
        Device(f"{args.prefix}-{n:05d}", args, counts, http) for n in range(first, first + count)
    ]
    tasks = []
    for i, device in enumerate(devices):  # connect at `ramp` seconds for the whole fleet
        tasks.append(asyncio.create_task(device.run(stop_at)))
        await asyncio.sleep(args.ramp / max(1, len(devices)) if i % 50 == 49 else 0)
    for result in await asyncio.gather(*tasks, return_exceptions=True):
        if isinstance(result, BaseException):
            counts.failed += 1
    await http.aclose()


def run(args: argparse.Namespace) -> Counts:
    """Run the fleet in `args.processes` processes (this script, each with its share); the
    summed counts."""
    share = -(-args.devices // args.processes)
    argv = [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if v is not None]
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, *argv, f"--first={first}", f"--share={share}"],
            stdout=subprocess.PIPE,
            text=True,
        )
        for first in range(0, args.devices, share)
    ]
    total = Counts()
    for proc in procs:
        out, _ = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"a load generator process exited {proc.returncode}")
        for key, value in json.loads(out).items():
            setattr(total, key, getattr(total, key) + value)
    return total


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--devices", type=int, default=1000)
    p.add_argument("--interval", type=float, default=5.0, help="seconds between samples")
    p.add_argument("--seconds", type=float, default=60.0, help="how long every device publishes")
    p.add_argument("--ramp", type=float, default=10.0, help="seconds to connect the fleet")
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=1883)
    p.add_argument("--username", default=None)
    p.add_argument("--password", default=None)
    p.add_argument("--prefix", default="load")
    p.add_argument(
        "--downloads", type=int, default=50, help="artifact downloads at once, per process"
    )
    p.add_argument("--first", type=int, default=None, help=argparse.SUPPRESS)  # one worker's share
    p.add_argument("--share", type=int, default=None, help=argparse.SUPPRESS)
    return p


def main() -> None:
    args = parser().parse_args()
    if args.first is None:  # the whole fleet
        counts = run(args)
    else:  # one worker: its share of the fleet on one event loop
        counts = Counts()
        share = min(args.share, args.devices - args.first)
        asyncio.run(_fleet(args.first, share, args, counts))
    print(json.dumps(counts.__dict__))


if __name__ == "__main__":
    main()
