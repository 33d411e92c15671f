"""The demo's own parts without a whole demo: CLI bad input, brokers, profiles, process cleanup."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from lepton_edge.controller.demo import toml
from lepton_edge.controller.demo.broker import start_broker
from lepton_edge.controller.demo.fleet import agent_config
from lepton_edge.controller.demo.processes import Child, stop_all
from lepton_edge.controller.demo.profiles import PROFILES, fleet
from tests.mosquitto import free_port

LEPTON = [
    sys.executable,
    "-c",
    "import sys; from lepton_edge.controller.cli import main; sys.exit(main())",
]


def lepton(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*LEPTON, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--devices", "0"], ["--devices 0"]),
        (["--devices", "-3"], ["--devices -3"]),
        (["--devices", "1000"], ["--devices 1000"]),
        (["--duration", "-5"], ["--duration -5", "positive"]),
        (["--duration", "0"], ["--duration 0"]),
        (["--duration", "nan"], ["--duration nan"]),
        (["--http-port", "70000"], ["--http-port 70000"]),
    ],
)
def test_bad_numbers_are_one_line_errors(args: list[str], words: list[str]) -> None:
    assert_one_line_error(lepton("demo", *args), *words)


def test_unreadable_data_path_is_one_line_error(tmp_path: Path) -> None:
    assert_one_line_error(lepton("demo", "--data", str(tmp_path / "missing")), "--data")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_line_error(lepton("demo", "--data", str(empty)), "Fashion-MNIST")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "t10k-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    (broken / "t10k-labels-idx1-ubyte.gz").write_bytes(b"nor this")
    assert_one_line_error(lepton("demo", "--data", str(broken)), "t10k-images")


@pytest.mark.parametrize("flag", ["--http-port", "--mqtt-port"])
def test_port_in_use_is_one_line_error(flag: str, tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = lepton("demo", flag, str(port), env={"TMPDIR": str(tmp_path)})
    assert_one_line_error(result, flag, str(port), "in use")
    assert list(tmp_path.iterdir()) == []  # nothing started, nothing left


def test_controller_side_of_the_demo_does_not_import_the_agent() -> None:
    code = (
        "import sys, lepton_edge.controller.cli.demo, lepton_edge.controller.demo.run, lepton_edge.controller.demo.fleet, "
        "lepton_edge.controller.demo.summary, lepton_edge.controller.demo.view\n"
        "from lepton_edge.controller.demo.run import missing_parts; missing_parts()\n"
        "print(sorted(m for m in sys.modules if m == 'agent' or m.startswith('agent.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _roundtrip(host: str, port: int, protocol: int) -> list[bytes]:
    got: list[bytes] = []
    arrived = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=protocol)
    client.on_message = lambda c, u, m: (got.append(m.payload), arrived.set())
    client.connect(host, port)
    client.loop_start()
    try:
        client.subscribe("lepton/v1/dev/x/state", qos=1)
        time.sleep(0.3)
        client.publish("lepton/v1/dev/x/state", b"online", qos=1).wait_for_publish(5)
        arrived.wait(5)
    finally:
        client.loop_stop()
        client.disconnect()
    return got


@pytest.mark.parametrize("kind", ["mosquitto", "amqtt"])
def test_broker_starts_on_a_free_port_and_carries_messages(kind: str, tmp_path: Path) -> None:
    broker = start_broker(tmp_path / kind, kind=kind)
    try:
        assert broker.port != 1883
        protocol = mqtt.MQTTv5 if broker.mqtt_version == "5" else mqtt.MQTTv311
        assert _roundtrip(broker.host, broker.port, protocol) == [b"online"]
    finally:
        broker.stop()
    assert not broker.child.alive()


def test_amqtt_broker_refuses_mqtt5_so_the_demo_announces_311(tmp_path: Path) -> None:
    broker = start_broker(tmp_path / "amqtt", kind="amqtt")
    try:
        assert broker.mqtt_version == "3.1.1"
        with pytest.raises(Exception):  # noqa: B017 - paho raises on a refused v5 connect
            client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
            client.connect(broker.host, broker.port)
            rc = client.loop(timeout=2.0)
            client.loop(timeout=2.0)
            assert client.is_connected(), rc
    finally:
        broker.stop()


def test_broker_on_a_busy_port_is_a_user_error(tmp_path: Path) -> None:
    from lepton_edge.shared.errors import UserError

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(UserError, match="in use"):
            start_broker(tmp_path, port=busy.getsockname()[1])


def test_children_are_stopped_and_die_with_the_demo(tmp_path: Path) -> None:
    # A child of a child: when the middle process is killed with SIGKILL, PDEATHSIG ends ours.
    code = (
        "import sys, time, pathlib\n"
        "from lepton_edge.controller.demo.processes import Child\n"
        f"c = Child('sleeper', [sys.executable, '-c', 'import time; time.sleep(60)'], pathlib.Path({str(tmp_path / 'c.log')!r}))\n"
        "print(c.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    middle = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert middle.stdout is not None
    grandchild = int(middle.stdout.readline())
    middle.kill()
    middle.wait()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and Path(f"/proc/{grandchild}").exists():
        time.sleep(0.05)
    status = Path(f"/proc/{grandchild}/stat")
    assert not status.exists() or status.read_text().split()[2] == "Z"

    children = [
        Child(f"c{i}", [sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / f"{i}.log")
        for i in range(3)
    ]
    stop_all(children, timeout=5)
    assert all(not c.alive() for c in children)


def test_profiles_give_a_mixed_fleet_and_valid_agent_configs(tmp_path: Path) -> None:
    devices = fleet(10)
    assert len({d for d, _ in devices}) == 10
    kinds = {p.kind for _, p in devices[:8]}
    assert len(kinds) == 8
    assert any(p.runtimes == ("litert",) and "fp16" not in p.features for p in PROFILES)
    assert any(p.battery is None for p in PROFILES) and any(p.battery for p in PROFILES)
    assert any(p.gpu for p in PROFILES)
    assert any("avx512_vnni" in p.features and p.battery for p in PROFILES)

    class FakeBroker:
        host, port, mqtt_version = "127.0.0.1", free_port(), "3.1.1"

    for device_id, profile in devices:
        cfg = agent_config(
            device_id,
            profile,
            broker=FakeBroker(),  # type: ignore[arg-type]
            state_dir=tmp_path / device_id,
            controller_key_file=tmp_path / "key.pem",
            data_dir=None,
            telemetry_interval_s=1.0,
        )
        text = toml.dumps(cfg)
        parsed = tomllib.loads(text)
        assert parsed["device_id"] == device_id
        assert parsed["mqtt"]["protocol"] == "3.1.1"
        assert parsed["simulate"]["profile"]["features"] == list(profile.features)


def test_without_the_data_set_agents_get_synthetic_frames_and_labels_come_from_fp32(
    tmp_path: Path,
) -> None:
    import numpy as np

    from lepton_edge.controller.demo.bundle import FLEET_MODEL, _dataset

    calib, eval_x, eval_y = _dataset(None)
    assert calib.shape[1:] == eval_x.shape[1:] == (28, 28, 1)
    assert eval_x.dtype == np.float32 and eval_x.min() >= 0.0 and eval_x.max() <= 1.0
    # The labels are the fp32 model's own answers, so "accuracy" means agreement with fp32.
    import onnxruntime as ort

    session = ort.InferenceSession(str(FLEET_MODEL[0]))
    scores = session.run(None, {session.get_inputs()[0].name: eval_x[:50]})[0]
    assert (scores.argmax(axis=1) == eval_y[:50]).all()
    assert len(set(eval_y.tolist())) > 1

    class FakeBroker:
        host, port, mqtt_version = "127.0.0.1", free_port(), "5"

    device_id, profile = fleet(1)[0]
    synthetic = agent_config(
        device_id,
        profile,
        broker=FakeBroker(),  # type: ignore[arg-type]
        state_dir=tmp_path,
        controller_key_file=tmp_path / "key.pem",
        data_dir=None,
        telemetry_interval_s=1.0,
    )
    assert synthetic["engine"]["source"] == "synthetic"
    real = agent_config(
        device_id,
        profile,
        broker=FakeBroker(),  # type: ignore[arg-type]
        state_dir=tmp_path,
        controller_key_file=tmp_path / "key.pem",
        data_dir=Path("/usr/share/datasets/fashion-mnist"),
        telemetry_interval_s=1.0,
    )
    assert real["engine"]["source"] == "idx"
    assert str(real["engine"]["labels_path"]).endswith("t10k-labels-idx1-ubyte.gz")


def test_synthetic_and_data_together_is_one_line_error(tmp_path: Path) -> None:
    assert_one_line_error(lepton("demo", "--synthetic", "--data", str(tmp_path)), "--synthetic")


def test_agent_configs_are_accepted_by_the_agent_settings(tmp_path: Path) -> None:
    """The demo writes TOML the agent really loads (extra="forbid" catches any typo)."""
    from lepton_edge.agent.config import load_settings  # tests may import both sides

    class FakeBroker:
        host, port, mqtt_version = "127.0.0.1", free_port(), "3.1.1"

    for device_id, profile in fleet(8):
        path = tmp_path / f"{device_id}.toml"
        path.write_text(
            toml.dumps(
                agent_config(
                    device_id,
                    profile,
                    broker=FakeBroker(),  # type: ignore[arg-type]
                    state_dir=tmp_path / device_id,
                    controller_key_file=tmp_path / "key.pem",
                    data_dir=None,
                    telemetry_interval_s=1.0,
                )
            )
        )
        settings = load_settings(path)
        assert settings.device_id == device_id
        assert settings.engine.source == "synthetic"
        assert settings.simulate.profile is not None
        assert settings.simulate.profile.arch == profile.arch
        assert (settings.simulate.battery is None) == (profile.battery is None)
        assert settings.mqtt.protocol == "3.1.1"
