"""A short real demo (4 devices), watched in headless Chromium and checked against the API.

One demo run serves both tests (it is the slow part): the browser test watches the dashboard
while the fleet runs; the summary test waits for `--summary-json`, compares every fact in it
with the controller's API (kept up by `--hold`), then stops the demo with Ctrl-C (SIGINT) and
checks that no process and no temp dir is left behind.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.demo_process import DemoProcess

pytestmark = pytest.mark.slow

DEVICES = ["pi-zero-1", "laptop-1", "tablet-1", "jetson-1"]
CAMERA = "camera-1"  # beside the fleet: a rendered video through the shapes detector
DURATION_S = 30
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
#: `LEPTON_SCREENSHOT=docs/dashboard.png pytest tests/e2e -k browser` refreshes the README's.
SCREENSHOT_ENV = "LEPTON_SCREENSHOT"


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoProcess]:
    run = DemoProcess(tmp_path_factory.mktemp("demo"))
    run.start(
        "--devices",
        str(len(DEVICES)),
        "--duration",
        str(DURATION_S),
        "--summary-json",
        str(run.summary),
        "--hold",
    )
    try:
        run.wait_for_output("agents:", 120)
        yield run
    finally:
        run.kill()


def _token(demo: DemoProcess) -> str:
    """The read-only token in the dashboard URL the demo printed."""
    found = re.search(r"#token=([A-Za-z0-9_-]+)", demo.output())
    assert found, demo.output()[-2000:]
    return found.group(1)


def _api(demo: DemoProcess, path: str, **params: object) -> object:
    r = httpx.get(
        f"{demo.url}/api/v1{path}",
        params=params,  # type: ignore[arg-type]
        headers={"Authorization": f"Bearer {_token(demo)}"},
        timeout=10,
    )
    r.raise_for_status()
    return r.json()


@pytest.mark.skipif(
    not (CHROMIUM.exists() and CHROMEDRIVER.exists()), reason="needs Debian chromium-driver"
)
def test_browser_sees_every_device_and_a_precision_switch(
    demo: DemoProcess, tmp_path: Path
) -> None:
    from selenium import webdriver
    from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    demo.wait_for_output("dashboard:", 120)
    profile = tempfile.mkdtemp(prefix="chromium-", dir=tmp_path)
    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,860",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))

    def wait(seconds: float, what: str, condition: Any) -> None:
        try:
            WebDriverWait(
                driver,
                seconds,
                poll_frequency=1,
                ignored_exceptions=(StaleElementReferenceException,),  # redraws every 2 s
            ).until(condition)
        except TimeoutException:
            driver.save_screenshot(str(tmp_path / "timeout.png"))
            page = driver.find_element(By.TAG_NAME, "body").text
            raise AssertionError(
                f"dashboard: no {what} after {seconds} s; page:\n{page[:2000]}\n"
                f"demo output:\n{demo.output()[-2000:]}"
            ) from None

    try:
        driver.get(f"{demo.url}/ui/#token={_token(demo)}")

        def rows(d: webdriver.Chrome) -> set[str]:
            found = d.find_elements(By.CSS_SELECTOR, "#fleet-table tbody tr[data-device]")
            return {r.get_attribute("data-device") or "" for r in found}

        wait(120, "row for every device", lambda d: rows(d) >= {*DEVICES, CAMERA})
        assert rows(driver) == {*DEVICES, CAMERA}
        # Every device runs a variant once the rollout reached it...
        wait(
            150,
            "active variant on every device",
            lambda d: all(
                c.text not in ("", "–")
                for c in d.find_elements(By.CSS_SELECTOR, "#fleet-table td.variant")
            ),
        )
        # ...and a draining battery makes one of them step down its precision.
        wait(
            150,
            "precision switch",
            lambda d: d.find_elements(By.CSS_SELECTOR, "#switches li[data-kind=precision_switch]"),
        )
        switch = driver.find_element(By.CSS_SELECTOR, "#switches li[data-kind=precision_switch]")
        assert "→" in switch.text and "%" in switch.text  # from → to, and the battery reason
        shot = tmp_path / "dashboard.png"
        assert driver.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
        target = os.environ.get(SCREENSHOT_ENV)
        if target:
            shutil.copy(shot, target)

        # Filters: the ARM boards only, then the "field" tag only.
        def choose(key: str, value: str) -> None:
            for _ in range(10):  # the page redraws every 2 s: retry on a replaced element
                try:
                    select = driver.find_element(By.CSS_SELECTOR, f"select[data-filter={key}]")
                    Select(select).select_by_value(value)
                    return
                except StaleElementReferenceException:
                    time.sleep(0.2)
            raise AssertionError(f"could not set the {key} filter")

        choose("arch", "aarch64")
        wait(10, "arch filter", lambda d: rows(d) == {"pi-zero-1", "jetson-1"})
        choose("arch", "")
        choose("tag", "field")
        wait(10, "tag filter", lambda d: rows(d) == {"pi-zero-1", "tablet-1"})

        # The device page draws its charts from the telemetry history.
        device = sorted(rows(driver))[0]
        driver.get(f"{demo.url}/ui/#/device/{device}")
        wait(
            30,
            "charts on the device page",
            lambda d: len(d.find_elements(By.CSS_SELECTOR, ".charts svg path.line")) >= 3,
        )
        assert driver.find_element(By.ID, "device-id").text.startswith(device)
        driver.save_screenshot(str(tmp_path / "device.png"))

        # The camera's page shows what it detected, with its last frame and the boxes.
        driver.get(f"{demo.url}/ui/#/device/{CAMERA}")
        wait(
            60,
            "the camera's detection thumbnail",
            lambda d: d.execute_script(
                "const i = document.getElementById('result-thumbnail');"
                "return i && i.complete && i.naturalWidth > 0"
            ),
        )
        driver.save_screenshot(str(tmp_path / "camera.png"))

        # The events page lists precision switches, and level changes that kept the variant
        # (policy events with levels) as "power level".
        policy = _api(demo, "/events", kind="policy", limit=1000)
        assert isinstance(policy, list)
        kept = [e for e in policy if (e["data"] or {}).get("to_level")]
        driver.get(f"{demo.url}/ui/#/events")
        wait(
            30,
            "precision switch on the events page",
            lambda d: d.find_elements(By.CSS_SELECTOR, "li[data-kind=precision_switch]"),
        )
        if kept:
            wait(
                30,
                "power level change on the events page",
                lambda d: any(
                    "power level" in li.text
                    for li in d.find_elements(By.CSS_SELECTOR, "li[data-kind=policy]")
                ),
            )
    finally:
        driver.quit()


def test_summary_matches_the_controller_api_and_ctrl_c_leaves_nothing(demo: DemoProcess) -> None:
    deadline = time.monotonic() + 300
    while not demo.summary.exists():
        assert demo.proc is not None
        assert demo.proc.poll() is None, demo.output()[-3000:]
        assert time.monotonic() < deadline, demo.output()[-3000:]
        time.sleep(1)
    summary = json.loads(demo.summary.read_text())
    out = demo.output()

    # The facts `make demo` promises.
    assert summary["distinct_ladders"] >= 2, out[-3000:]
    assert summary["precision_switches"] >= 1, out[-3000:]
    assert {d["device_id"] for d in summary["devices"]} == set(DEVICES)

    # Every fact agrees with the controller's API (still up: --hold).
    api_devices = {d["id"]: d for d in _api(demo, "/devices")}  # type: ignore[union-attr]
    assert set(api_devices) == {*DEVICES, CAMERA}
    camera = summary["camera"]
    assert camera["device_id"] == CAMERA and camera["online_at_end"]
    assert camera["active_bundle"] == api_devices[CAMERA]["active_bundle"] == camera["bundle_id"]
    assert camera["bundle_id"] != summary["bundle_id"]
    assert camera["rollout"]["state"] == "completed", camera["rollout"]
    assert camera["frames"] > 0 and camera["results_published"] > 0
    assert camera["last_result"]["task"] == "detection"
    assert camera["last_result"]["width"] == 640
    rollout = _api(demo, f"/rollouts/{summary['rollout']['id']}")
    assert isinstance(rollout, dict)
    assert rollout["bundle_id"] == summary["bundle_id"]
    assert rollout["state"] == summary["rollout"]["state"] == "completed", rollout
    assert {d["state"] for d in rollout["devices"]} == {"healthy"}
    for d in summary["devices"]:
        api = api_devices[d["device_id"]]
        assert d["online_at_end"]
        assert d["active_bundle"] == api["active_bundle"] == summary["bundle_id"]
        assert d["active_variant"] == api["active_variant"]
        ladder = _api(demo, f"/devices/{d['device_id']}/ladder", bundle_id=summary["bundle_id"])
        assert isinstance(ladder, dict)
        assert d["ladder"]["ladder"] == ladder["ladder"]
        # precision_switch only when the variant changed; a level change that keeps the
        # variant is a policy event with the levels (a policy set by command has none)
        switched = _api(
            demo, "/events", device_id=d["device_id"], kind="precision_switch", limit=1000
        )
        policy = _api(demo, "/events", device_id=d["device_id"], kind="policy", limit=1000)
        assert isinstance(switched, list) and isinstance(policy, list)
        kept = [e for e in policy if (e["data"] or {}).get("to_level")]
        assert len(d["level_changes"]) == len(switched) + len(kept)
        assert all(e["data"]["to_variant"] != e["data"]["from_variant"] for e in switched)
        switched.sort(key=lambda e: e["ts"])
        assert len(d["switches"]) == len(switched)
        for s, e in zip(d["switches"], switched, strict=True):
            assert s["from_variant"] == e["data"]["from_variant"] != s["to_variant"]
            assert s["to_variant"] == e["data"]["to_variant"]
            assert s["reason"] == e["reason"]
        # Live accuracy on Fashion-MNIST: the variants keep the fp32 model's ~90 %.
        assert d["frames"] > 0
        assert d["accuracy"] is not None and 0.8 < d["accuracy"] <= 1.0
    ladders = {
        json.dumps({s["level"]: s["variant_id"] for s in d["ladder"]["ladder"]["steps"]})
        for d in summary["devices"]
    }
    assert len(ladders) == summary["distinct_ladders"]
    # The LiteRT-only board got only .tflite variants; it says so for the ONNX ones.
    pi = next(d for d in summary["devices"] if d["device_id"] == "pi-zero-1")
    assert {v["format"] for v in pi["ladder"]["variants"].values()} == {"tflite"}
    # The fleet's ladders span model size: some step runs the distilled student.
    chosen = [v for d in summary["devices"] for v in d["ladder"]["variants"].values()]
    assert {v["architecture"] for v in chosen} == {"base", "student50"}, out[-3000:]
    assert any("onnxruntime" in why for why in pi["ladder"]["ladder"]["rejected"].values())

    assert "summary" in out and "precision switch" in out

    assert demo.interrupt() == 0
    demo.assert_clean()


@pytest.mark.parametrize(
    ("after", "sig"),
    [
        ("controller:", signal.SIGINT),  # broker and controller up, agents starting
        ("building the bundle:", signal.SIGINT),  # the factory's child process at work
        ("agents:", signal.SIGTERM),  # as a service manager would stop it
    ],
)
def test_stopping_during_setup_leaves_nothing(tmp_path: Path, after: str, sig: int) -> None:
    run = DemoProcess(tmp_path)
    run.start("--devices", "2", "--duration", "30")
    try:
        run.wait_for_output(after, 120)
        assert run.interrupt(sig=sig) == 130
        run.assert_clean()
        assert "Traceback" not in run.output()
    finally:
        run.kill()


def test_demo_runs_on_the_embedded_amqtt_broker(tmp_path: Path) -> None:
    """Without mosquitto the demo falls back to amqtt: MQTT 3.1.1 on every side."""
    run = DemoProcess(tmp_path)
    run.start(
        "--broker",
        "amqtt",
        "--devices",
        "2",
        "--duration",
        "20",
        "--summary-json",
        str(run.summary),
    )
    try:
        run.wait_for_output("agents:", 120)
        assert run.proc is not None
        assert run.proc.wait(240) == 0, run.output()[-3000:]
        out = run.output()
        assert "amqtt" in out and "MQTT 3.1.1" in out
        summary = json.loads(run.summary.read_text())
        # Commands, replies, events and telemetry all crossed the 3.1.1 broker: the devices
        # were benchmarked (ladders come from their timings) and the canary wave went healthy.
        assert all(d["online_at_end"] for d in summary["devices"])
        assert all("device" in d["ladder"]["latency_source"].values() for d in summary["devices"])
        healthy = [d for d in summary["rollout"]["devices"] if d["state"] == "healthy"]
        assert healthy, summary["rollout"]
        by_id = {d["device_id"]: d for d in summary["devices"]}
        for d in healthy:
            assert by_id[d["device_id"]]["active_bundle"] == summary["bundle_id"]
            assert by_id[d["device_id"]]["frames"] > 0
        run.assert_clean()
    finally:
        run.kill()
