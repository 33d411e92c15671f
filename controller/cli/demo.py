"""`lepton demo`: a simulated fleet on this machine, end to end (what `make demo` runs)."""

from __future__ import annotations

import argparse
from pathlib import Path

from lepton_edge.shared.errors import UserError
from lepton_edge.shared.idx import FASHION_MNIST_DIR

MAX_DEVICES = 64


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--devices", type=int, default=8, help=f"simulated devices, 1-{MAX_DEVICES} (default 8)"
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=60.0,
        help="seconds the fleet runs once the rollout starts (default 60); Ctrl-C ends early",
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        help=f"Fashion-MNIST directory (default {FASHION_MNIST_DIR}; "
        "synthetic frames, accuracy n/a, when that is absent)",
    )
    parser.add_argument(
        "--synthetic",
        action="store_true",
        help="synthetic frames even when Fashion-MNIST is installed (accuracy n/a)",
    )
    parser.add_argument(
        "--http-port", type=int, default=None, help="controller port (default: a free one)"
    )
    parser.add_argument(
        "--mqtt-port", type=int, default=None, help="broker port (default: a free one)"
    )
    parser.add_argument(
        "--broker",
        choices=("auto", "mosquitto", "amqtt"),
        default="auto",
        help="auto: mosquitto when installed, else the embedded amqtt (MQTT 3.1.1)",
    )
    parser.add_argument(
        "--summary-json", type=Path, default=None, help="also write the summary here"
    )
    parser.add_argument(
        "--hold",
        action="store_true",
        help="after the summary, keep the dashboard and API up (agents stopped) until Ctrl-C",
    )
    parser.add_argument(
        "--no-camera",
        action="store_true",
        help="leave out the camera device (a rendered video through the shapes detector)",
    )
    parser.add_argument(
        "--live",
        choices=("auto", "on", "off"),
        default="auto",
        help="live terminal view (auto: when stdout is a terminal)",
    )


def _check_port(value: int | None, flag: str) -> None:
    from lepton_edge.controller.demo.processes import port_in_use

    if value is None:
        return
    if not 1 <= value <= 65535:
        raise UserError(f"{flag} {value}: use a port between 1 and 65535, or leave it out")
    if port_in_use(value):
        raise UserError(f"{flag} {value}: the port is in use; pick another or leave it out")


def run(args: argparse.Namespace) -> int:
    if not 1 <= args.devices <= MAX_DEVICES:
        raise UserError(f"--devices {args.devices}: use 1 to {MAX_DEVICES} devices")
    if not args.duration > 0:
        raise UserError(f"--duration {args.duration:g}: use a positive number of seconds")
    if args.http_port is not None and args.http_port == args.mqtt_port:
        raise UserError("--http-port and --mqtt-port must differ")
    _check_port(args.http_port, "--http-port")
    _check_port(args.mqtt_port, "--mqtt-port")

    from lepton_edge.controller.demo.bundle import check_data_dir
    from lepton_edge.controller.demo.run import Demo, DemoOptions

    data_dir: Path | None
    if args.synthetic and args.data is not None:
        raise UserError("--synthetic and --data exclude each other: choose one")
    if args.synthetic:
        data_dir = None
    elif args.data is not None:
        check_data_dir(args.data)  # a path the user named must be readable
        data_dir = args.data
    elif (FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").exists():
        data_dir = FASHION_MNIST_DIR
    else:
        data_dir = None
        print(f"Fashion-MNIST not found at {FASHION_MNIST_DIR}: synthetic frames, accuracy n/a")
    if args.summary_json is not None and not args.summary_json.parent.is_dir():
        raise UserError(f"--summary-json {args.summary_json}: its directory does not exist")

    options = DemoOptions(
        devices=args.devices,
        duration=args.duration,
        data_dir=data_dir,
        http_port=args.http_port,
        mqtt_port=args.mqtt_port,
        broker=args.broker,
        summary_json=args.summary_json,
        hold=args.hold,
        camera=not args.no_camera,
        live={"auto": None, "on": True, "off": False}[args.live],
    )
    return Demo(options).run()
