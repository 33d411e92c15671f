"""A device's newest result reaches the dashboard: a real agent-side publisher makes a
detection result with its thumbnail, a real mosquitto carries it, the controller's bridge
keeps it, the API serves it, and headless Chromium shows the JPEG and its detections."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from lepton_edge.agent.pipeline import Answer, Pipeline
from lepton_edge.agent.results import ResultPublisher, ResultSettings
from lepton_edge.agent.sources import Frame, Result
from lepton_edge.controller.demo.shapes import CLASSES, scene
from lepton_edge.shared.manifest import Task
from lepton_edge.shared.messages import State, encode
from lepton_edge.shared.tasks import Detections
from lepton_edge.shared.topics import Kind, topic
from tests.agent.agent_support import Watcher
from tests.controller.conftest import ADMIN, LiveController, live_settings
from tests.controller.helpers import wait_for
from tests.mosquitto import Mosquitto

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


class _Post:
    task = Task.DETECTION
    index = 0


def detection_payload() -> bytes:
    image, truth = scene(1, seed=7)[0]
    answer = Answer(
        Task.DETECTION,
        detections=Detections(truth[:, :4], np.full(len(truth), 0.9), truth[:, 4].astype(int)),
    )
    pipeline = Pipeline(None, _Post(), CLASSES, (128, 128, 3), "shapes-1")  # type: ignore[arg-type]
    sent: list[bytes] = []
    publisher = ResultPublisher(
        "cam1",
        ResultSettings(thumbnail_interval_s=1),
        send=lambda p: sent.append(p) or True,
        send_reliable=lambda make: None,
    )
    publisher(
        Frame(image=image[None], origin="front-door"),
        Result("onnx-fp32", answers=[answer], pipeline=pipeline),
    )
    assert len(sent) == 1
    return sent[0]


@pytest.mark.skipif(
    not (CHROMIUM.exists() and CHROMEDRIVER.exists()), reason="needs Debian chromium-driver"
)
def test_device_page_shows_the_detection_thumbnail(tmp_path: Path, mosquitto: Mosquitto) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    live = LiveController(live_settings(tmp_path, f"sqlite:///{tmp_path}/db.sqlite", mosquitto))
    live.start()
    device = Watcher(mosquitto.port)
    driver = None
    try:
        assert live.controller.bridge is not None and live.controller.bridge.wait_connected(10)
        state = State(device_id="cam1", ts=time.time(), status="online")
        device.client.publish(topic("cam1", Kind.STATE), encode(state), qos=1, retain=True)
        headers = {"Authorization": f"Bearer {ADMIN}"}

        def result() -> dict[str, object] | None:
            device.client.publish(topic("cam1", Kind.RESULT), detection_payload(), qos=0)
            r = httpx.get(f"{live.url}/api/v1/devices/cam1/results", headers=headers, timeout=5)
            return r.json() if r.status_code == 200 and r.json()["snapshot"] else None

        wait_for(lambda: result() is not None, 20, what="the result in the API")
        doc = result()
        assert doc is not None
        latest, shot = doc["latest"], doc["snapshot"]
        assert isinstance(latest, dict) and isinstance(shot, dict)
        assert latest["task"] == "detection" and latest["source"] == "front-door"
        assert "thumbnail_jpeg" not in latest or latest["thumbnail_jpeg"] is None
        assert shot["thumbnail_jpeg"] and len(shot["detections"]) >= 1

        options = Options()
        options.binary_location = str(CHROMIUM)
        for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--window-size=1280,900"):
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={tmp_path / 'chromium'}")
        driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
        driver.get(f"{live.url}/ui/#token={ADMIN}")
        driver.get(f"{live.url}/ui/#/device/cam1")
        WebDriverWait(driver, 30).until(
            lambda d: d.execute_script(
                "const i = document.getElementById('result-thumbnail');"
                "return i && i.complete && i.naturalWidth > 0 ? i.naturalWidth : 0"
            )
        )
        width = driver.execute_script(
            "return document.getElementById('result-thumbnail').naturalWidth"
        )
        assert width == 320
        items = driver.find_element(By.ID, "result-items").text
        assert any(label in items for label in CLASSES), items
        driver.save_screenshot(str(tmp_path / "device-result.png"))
    finally:
        if driver is not None:
            driver.quit()
        device.close()
        live.stop()
