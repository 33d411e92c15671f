"""The MQTT topic tree, `lepton/v1/dev/{device_id}/{kind}`: builders and a strict parser.

One root, one subtree per device, so a broker ACL can confine a device to its own subtree.
"""

from __future__ import annotations

import re
from enum import StrEnum

from lepton_edge.shared.errors import TopicError

ROOT = "lepton/v1"
DEVICE_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class Kind(StrEnum):
    STATE = "state"
    TELEMETRY = "telemetry"
    EVENT = "event"
    CMD = "cmd"
    REPLY = "reply"
    RESULT = "result"


def check_device_id(device_id: str) -> str:
    """Return `device_id` if it is safe as one topic level (no `/`, `+`, `#`, ≤ 64 chars)."""
    if not DEVICE_ID_PATTERN.fullmatch(device_id):
        raise TopicError(
            f"invalid device id {device_id!r}: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return device_id


def topic(device_id: str, kind: Kind) -> str:
    """The topic a device's messages of `kind` travel on."""
    return f"{ROOT}/dev/{check_device_id(device_id)}/{Kind(kind).value}"


def device_prefix(device_id: str) -> str:
    """The subtree (`lepton/v1/dev/{id}/#`) one device may use; for ACLs."""
    return f"{ROOT}/dev/{check_device_id(device_id)}/#"


def subscription(kind: Kind, shared_group: str | None = None) -> str:
    """Wildcard filter for `kind` from every device, optionally as an MQTT v5 shared subscription."""
    pattern = f"{ROOT}/dev/+/{Kind(kind).value}"
    return f"$share/{shared_group}/{pattern}" if shared_group else pattern


def parse(topic_name: str) -> tuple[str, Kind]:
    """Split a concrete topic into (device_id, kind); raise `TopicError` for anything else."""
    parts = topic_name.split("/")
    if len(parts) != 5 or "/".join(parts[:2]) != ROOT or parts[2] != "dev":
        raise TopicError(f"topic {topic_name!r} is not under {ROOT}/dev/{{id}}/{{kind}}")
    try:
        kind = Kind(parts[4])
    except ValueError:
        raise TopicError(f"topic {topic_name!r} has unknown kind {parts[4]!r}") from None
    return check_device_id(parts[3]), kind
