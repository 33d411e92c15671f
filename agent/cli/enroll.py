"""`lepton-agent enroll`: trade a one-time token for broker credentials and the controller's key.

POSTs `lepton_edge.shared.messages.EnrollRequest` to `{controller}/api/v1/enroll`, pins the controller's
Ed25519 public key next to the config, and writes the MQTT login into the agent's TOML config
(keeping every other setting already there). The new config is validated before it replaces
the old one, so a failed enrollment leaves a working box as it was.
"""

from __future__ import annotations

import argparse
import grp
import json
import os
import ssl
import tomllib
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from lepton_edge.agent.config import DEFAULT_CONFIG_FILE, load_settings
from lepton_edge.shared.errors import SignatureError, TopicError, UserError
from lepton_edge.shared.messages import EnrollRequest, EnrollResponse
from lepton_edge.shared.signing import key_id, load_public_key
from lepton_edge.shared.topics import check_device_id

HTTP_TIMEOUT_S = 15.0
#: The agent's service user; the config (it holds the broker password) is readable by its group.
SERVICE_GROUP = "lepton"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--controller", required=True, help="controller URL, e.g. https://ctl:8080")
    parser.add_argument("--token", required=True, help="one-time enrollment token")
    parser.add_argument("--device-id", help="default: derived from /etc/machine-id")
    parser.add_argument(
        "--config",
        type=Path,
        default=DEFAULT_CONFIG_FILE,
        help=f"agent config to write (default {DEFAULT_CONFIG_FILE})",
    )
    parser.add_argument(
        "--key-file",
        type=Path,
        help="where to pin the controller's public key (default: controller.pem beside --config)",
    )
    parser.add_argument(
        "--ca-file",
        type=Path,
        help="CA certificate to pin for the broker's TLS (and the controller's HTTPS)",
    )
    parser.add_argument(
        "--root",
        type=Path,
        default=Path("/"),
        help="write into the system mounted at this directory (installer tests, images); "
        "paths inside the config stay as the agent will see them",
    )
    parser.add_argument(
        "--repin",
        action="store_true",
        help="accept a controller key different from the one already pinned (key rotation)",
    )


def run(args: argparse.Namespace) -> int:
    root: Path = args.root
    if not root.is_dir():
        raise UserError(f"--root {root} is not a directory")

    def as_seen_by_agent(path: Path) -> Path:
        if path.is_absolute():
            return path
        if root != Path("/"):
            raise UserError(f"{path}: give absolute paths (as the agent sees them) with --root")
        return path.resolve()

    def on_disk(path: Path) -> Path:
        return root / path.relative_to("/")

    config = as_seen_by_agent(args.config)
    key_file = as_seen_by_agent(args.key_file or config.parent / "controller.pem")
    ca_file = as_seen_by_agent(args.ca_file) if args.ca_file else None
    tls_context = _tls_context(on_disk(ca_file)) if ca_file else None
    device_id = _device_id(args.device_id)
    existing = _read_toml(on_disk(config))

    response = request_enrollment(args.controller, args.token, device_id, tls_context)
    try:
        public_key = load_public_key(response.controller_public_key_pem.encode())
    except SignatureError as exc:
        raise UserError(f"the controller sent an unusable public key ({exc})") from None
    pem = response.controller_public_key_pem.encode()
    pinned = on_disk(key_file)
    if pinned.exists() and pinned.read_bytes().strip() != pem.strip() and not args.repin:
        raise UserError(
            f"the controller's key differs from the one pinned in {key_file}: if it was rotated "
            "on purpose, run again with --repin and a new token; otherwise check --controller"
        )

    mqtt = dict(existing.get("mqtt", {}))
    mqtt.update(
        host=response.mqtt_host,
        port=response.mqtt_port,
        username=response.mqtt_username,
        password=response.mqtt_password,
        tls=response.mqtt_tls,
    )
    if ca_file is not None:
        mqtt["ca_file"] = str(ca_file)
    settings = {
        **existing,
        "device_id": response.device_id,
        "controller_key_file": str(key_file),
        "mqtt": mqtt,
    }
    _write(pinned, pem, mode=0o644)
    _write_config(on_disk(config), settings)
    tls = "TLS" if response.mqtt_tls else "no TLS"
    print(
        f"enrolled {response.device_id}: broker {response.mqtt_host}:{response.mqtt_port} "
        f"({tls}) as {response.mqtt_username}; config {config}; controller key "
        f"{key_id(public_key)} pinned in {key_file}"
    )
    return 0


def request_enrollment(
    controller: str, token: str, device_id: str, tls_context: ssl.SSLContext | None = None
) -> EnrollResponse:
    """POST the enrollment; every way it can fail becomes one `UserError` line."""
    base = controller.rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise UserError(f"--controller {controller!r}: use a URL like https://controller:8080")
    try:
        body = EnrollRequest(token=token, device_id=device_id).model_dump_json().encode()
    except ValidationError as exc:
        raise UserError(f"--token: {exc.errors()[0]['msg']}") from None
    request = urllib.request.Request(
        f"{base}/api/v1/enroll",
        data=body,
        headers={"Content-Type": "application/json", "Accept": "application/json"},
        method="POST",
    )
    context = tls_context if base.startswith("https://") else None
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S, context=context) as reply:
            payload = reply.read()
    except urllib.error.HTTPError as exc:
        detail = _detail(exc.read(), str(exc.reason))
        if exc.code in (404, 405, 501):
            raise UserError(
                f"{base} has no enrollment endpoint ({exc.code}): is --controller the lepton "
                "controller?"
            ) from None
        if 400 <= exc.code < 500:
            raise UserError(
                f"the controller refused the enrollment ({exc.code}: {detail}); "
                "ask the operator for a new one (lepton-controller token create --scope enroll)"
            ) from None
        raise UserError(f"the controller failed to enroll us ({exc.code}: {detail})") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UserError(
            f"cannot reach the controller at {base} ({reason}): check --controller and that "
            "the controller is running"
        ) from None
    try:
        return EnrollResponse.model_validate_json(payload)
    except ValidationError as exc:
        raise UserError(
            f"{base} answered the enrollment with something else ({exc.errors()[0]['msg']}): "
            "is --controller the lepton controller?"
        ) from None


def _tls_context(ca_file: Path) -> ssl.SSLContext:
    """A context trusting only `ca_file`; checked now because the MQTT link will pin it too."""
    if not ca_file.is_file():
        raise UserError(f"--ca-file {ca_file} does not exist")
    try:
        return ssl.create_default_context(cafile=str(ca_file))
    except (ssl.SSLError, ValueError) as exc:
        raise UserError(f"--ca-file {ca_file} is not a PEM CA certificate ({exc})") from None


def _device_id(given: str | None) -> str:
    if given is None:
        from lepton_edge.agent.hardware import machine_device_id

        try:
            return machine_device_id()
        except OSError as exc:
            raise UserError(f"cannot derive a device id ({exc}): pass --device-id") from None
    try:
        return check_device_id(given)
    except TopicError as exc:
        raise UserError(f"--device-id: {exc}") from None


def _detail(body: bytes, reason: str) -> str:
    """The controller's one-line reason (`message` for validation errors, else `detail`)."""
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict):
        for key in ("message", "detail"):
            if isinstance(data.get(key), str) and data[key]:
                return " ".join(str(data[key]).split())
    return reason or "no detail"  # not our controller's JSON: never dump an HTML page


def _read_toml(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        return tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UserError(
            f"cannot read the existing config {path} ({exc}): fix or remove it"
        ) from None


def _write_config(path: Path, settings: dict[str, Any]) -> None:
    """Write, validate with the agent's own settings model, then atomically replace."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.new")
    text = "# Written by `lepton-agent enroll`; other settings may be added by hand.\n"
    try:
        _write(tmp, (text + dump_toml(settings)).encode(), mode=0o640)
        load_settings(tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def _write(path: Path, data: bytes, *, mode: int) -> None:
    """Write `data` with `mode`; keep the group of the file it replaces, else the service's."""
    gid = path.stat().st_gid if path.exists() else _service_gid()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, mode)
    if gid is not None and os.geteuid() == 0:
        os.chown(path, 0, gid)


def _service_gid() -> int | None:
    try:
        return grp.getgrnam(SERVICE_GROUP).gr_gid
    except KeyError:
        return None


# --- a small TOML writer (tomllib only reads) ----------------------------------------------------


def dump_toml(data: dict[str, Any]) -> str:
    """TOML for plain config data: scalars and lists first, then one [table] per sub-dict."""
    return _dump_table(data, prefix="").lstrip("\n")


def _dump_table(table: dict[str, Any], prefix: str) -> str:
    lines = [f"{_key(k)} = {_value(v)}" for k, v in table.items() if not isinstance(v, dict)]
    text = ""
    if lines or not prefix:
        header = f"\n[{prefix}]\n" if prefix else ""
        text = header + "".join(line + "\n" for line in lines)
    for key, value in table.items():
        if isinstance(value, dict):
            text += _dump_table(value, f"{prefix}.{_key(key)}" if prefix else _key(key))
    return text


def _key(key: str) -> str:
    bare = key.replace("_", "").replace("-", "").isalnum() and key.isascii()
    return key if bare else json.dumps(key)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")
