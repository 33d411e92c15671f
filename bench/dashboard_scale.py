"""Bench: the fleet page with 10,000 devices in headless Chromium, and one page of the API.

    .venv/bin/python bench/dashboard_scale.py [--devices 10000]

10,000 devices are registered straight into a fresh SQLite registry (births as the bridge
would apply them: mixed architectures, power levels, variants, 1 in 3 offline), then
`lepton-controller serve` runs on it. Measured in this one run: Chromium's time from
navigation start until the fleet page shows its first page of devices with the fleet's
counts (median of 5 loads), and the API's time for one page of 100 devices and for the
summary (median of 20 each). Goals (issue 18): first render <= 1.5 s, one page <= 100 ms.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from lepton_edge.controller.config import ControllerSettings  # noqa: E402
from lepton_edge.controller.core import Controller  # noqa: E402
from lepton_edge.controller.fleet import Batch  # noqa: E402
from lepton_edge.shared.hardware import HardwareProfile  # noqa: E402
from lepton_edge.shared.messages import PowerLevel, State  # noqa: E402
from tests.deploy.support import ControllerProcess  # noqa: E402

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


def populate(state_dir: Path, devices: int) -> None:
    """Register `devices` devices in the registry under `state_dir`, as births would."""
    boards = [
        HardwareProfile(arch=arch, cpu_model=cpu, cores=4, memory_mb=2048, runtimes={"litert": "x"})
        for arch, cpu in (
            ("aarch64", "Cortex-A72"),
            ("x86_64", "Atom x6425E"),
            ("aarch64", "A78AE"),
        )
    ]
    levels = list(PowerLevel)
    variants = ["tflite-int8-static", "student50-tflite-int8-static", "onnx-fp32"]
    controller = Controller(ControllerSettings(state_dir=state_dir, mqtt={"enabled": False}))
    controller.db.migrate()
    now = time.time()
    for start in range(0, devices, 1000):
        states = [
            State(
                device_id=f"box-{n:05d}",
                ts=now,
                status="offline" if n % 3 == 0 else "online",
                hardware=boards[n % 3],
                active_variant=variants[n % 3],
                power_level=levels[n % 4],
            )
            for n in range(start, min(devices, start + 1000))
        ]
        with controller.db.session() as session:
            controller.fleet.apply(session, Batch(states=states))


def first_render_ms(url: str, token: str, loads: int, screenshot: Path | None) -> list[float]:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--window-size=1280,860"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    shown = (
        "const rows = document.querySelectorAll('#fleet-table tbody tr[data-device]').length;"
        "const stat = document.querySelector('.stats .value');"
        "return rows > 0 && stat && stat.textContent !== '' ? performance.now() : null;"
    )
    times = []
    try:
        driver.get(f"{url}/ui/#token={token}")  # stores the token for the session
        WebDriverWait(driver, 30, poll_frequency=0.01).until(lambda d: d.execute_script(shown))
        for _ in range(loads):
            driver.get(f"{url}/ui/?load={time.time()}#/")
            times.append(
                WebDriverWait(driver, 30, poll_frequency=0.01).until(
                    lambda d: d.execute_script(shown)
                )
            )
        if screenshot is not None:
            time.sleep(1)
            driver.save_screenshot(str(screenshot))
    finally:
        driver.quit()
    return times


def median_ms(url: str, headers: dict[str, str], params: dict[str, object]) -> float:
    took = []
    with httpx.Client(headers=headers, timeout=30) as http:
        for _ in range(20):
            started = time.perf_counter()
            assert http.get(url, params=params).status_code == 200
            took.append((time.perf_counter() - started) * 1000)
    return statistics.median(took)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--loads", type=int, default=5)
    parser.add_argument("--screenshot", type=Path, default=None, help="save the page as PNG")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="dashboard-scale-"))
    started = time.perf_counter()
    populate(work / "controller" / "state", args.devices)
    print(f"registered {args.devices} devices in {time.perf_counter() - started:.1f} s")
    controller = ControllerProcess(work / "controller", {}).start()
    headers = {"Authorization": f"Bearer {controller.admin_token}"}
    try:
        page = median_ms(f"{controller.url}/api/v1/devices", headers, {"limit": 100})
        summary = median_ms(f"{controller.url}/api/v1/devices/summary", headers, {})
        render = statistics.median(
            first_render_ms(controller.url, controller.admin_token, args.loads, args.screenshot)
        )
    finally:
        controller.stop()
    print(
        f"{args.devices} devices: one page of 100 {page:.1f} ms, summary {summary:.1f} ms "
        f"(medians of 20); fleet page first render {render:.0f} ms (median of {args.loads})"
    )
    checks = [
        (f"fleet page first render {render:.0f} ms (<= 1500)", render <= 1500),
        (f"one page of 100 devices {page:.1f} ms (<= 100)", page <= 100),
    ]
    for text, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {text}")
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    raise SystemExit(main())
