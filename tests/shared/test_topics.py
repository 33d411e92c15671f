import pytest
from hypothesis import given
from hypothesis import strategies as st

from lepton_edge.shared.errors import TopicError
from lepton_edge.shared.topics import (
    Kind,
    check_device_id,
    device_prefix,
    parse,
    subscription,
    topic,
)


@pytest.mark.parametrize("kind", list(Kind))
def test_topic_round_trips(kind: Kind) -> None:
    assert parse(topic("pi-4.kitchen_01", kind)) == ("pi-4.kitchen_01", kind)


def test_topic_layout_is_the_contract() -> None:
    assert topic("d1", Kind.TELEMETRY) == "lepton/v1/dev/d1/telemetry"
    assert device_prefix("d1") == "lepton/v1/dev/d1/#"
    assert subscription(Kind.STATE) == "lepton/v1/dev/+/state"
    assert (
        subscription(Kind.TELEMETRY, shared_group="controllers")
        == "$share/controllers/lepton/v1/dev/+/telemetry"
    )


@pytest.mark.parametrize("bad", ["", "a/b", "+", "#", "a+b", "-lead", "x" * 65, "sp ace"])
def test_device_ids_that_would_escape_their_subtree_are_refused(bad: str) -> None:
    with pytest.raises(TopicError):
        check_device_id(bad)
    with pytest.raises(TopicError):
        topic(bad, Kind.STATE)


@pytest.mark.parametrize(
    "bad",
    [
        "lepton/v1/dev/d1",
        "lepton/v2/dev/d1/state",
        "lepton/v1/dev/d1/bogus",
        "lepton/v1/dev/d1/state/extra",
        "other/v1/dev/d1/state",
        "lepton/v1/devices/d1/state",
    ],
)
def test_parse_refuses_topics_outside_the_tree(bad: str) -> None:
    with pytest.raises(TopicError):
        parse(bad)


@given(st.text())
def test_parse_never_raises_anything_but_topic_error(name: str) -> None:
    try:
        device_id, kind = parse(name)
    except TopicError:
        return
    assert topic(device_id, kind) == name
