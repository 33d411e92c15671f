"""nginx on a free port running deploy/nginx/lepton-controller.conf, for tests and benches.

The shipped server block is used as it is, with only the controller's address, the listen port
and the artifact directory put in; the main config around it keeps everything in a temp dir.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from tests.mosquitto import free_port, wait_for_port

SHIPPED = Path(__file__).resolve().parents[1] / "deploy" / "nginx" / "lepton-controller.conf"


class Nginx:
    def __init__(self, workdir: Path, controller_port: int, artifact_dir: Path) -> None:
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        if not Path(binary).exists():
            raise RuntimeError("nginx is not installed: apt-get install nginx-light")
        self.binary = binary
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        server = SHIPPED.read_text()
        for shipped, here in (
            ("server 127.0.0.1:8080;", f"server 127.0.0.1:{controller_port};"),
            ("listen 80;", f"listen 127.0.0.1:{self.port};"),
            ("/var/lib/lepton-controller/artifacts/", f"{artifact_dir}/"),
        ):
            assert shipped in server, f"{SHIPPED.name} no longer has {shipped!r}"
            server = server.replace(shipped, here)
        (workdir / "lepton-controller.conf").write_text(server)
        # As root, workers would run as nobody, who cannot read pytest's 0700 temp dirs.
        user = "user root;\n" if os.geteuid() == 0 else ""
        self.config = workdir / "nginx.conf"
        self.config.write_text(
            f"{user}worker_processes 1;\npid {workdir}/nginx.pid;\nerror_log {workdir}/error.log;\n"
            "events { worker_connections 1024; }\n"
            f"http {{\n  access_log off;\n  client_body_temp_path {workdir}/body;\n"
            f"  proxy_temp_path {workdir}/proxy;\n  include {workdir}/lepton-controller.conf;\n}}\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Nginx:
        self.proc = subprocess.Popen(
            [self.binary, "-c", str(self.config), "-p", str(self.workdir), "-g", "daemon off;"],
            stderr=subprocess.PIPE,
        )
        try:
            wait_for_port(self.port)
        except TimeoutError:
            assert self.proc.stderr is not None
            failed = self.proc.poll() is not None and self.proc.stderr.read().decode()
            self.stop()
            raise RuntimeError(f"nginx did not start: {failed or 'no answer'}") from None
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None
