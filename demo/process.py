"""The demo as a separate server process (``python app.py ... --port P``), started and waited for: what the tests
that drive it over HTTP and ``scripts/session_memory.py`` share."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_demo(
    *args: str,
    env: dict | None = None,
    timeout_s: float = 180.0,
    log_dir: Path | None = None,
    launcher: list[str] | None = None,
) -> tuple[subprocess.Popen, str, float]:
    """Run ``python app.py ARGS --port P`` (or ``launcher ARGS --port P``, e.g. ``scripts/rehearse.py app``) and
    wait until the page answers; returns (process, url, seconds). Its output goes to ``log_dir/demo-P.log``
    (default: ``.pytest_cache`` in the checkout)."""
    port = free_port()
    log_dir = log_dir or ROOT / ".pytest_cache"
    log_dir.mkdir(exist_ok=True)
    log = open(log_dir / f"demo-{port}.log", "w")  # noqa: SIM115 (the server outlives this function)
    process = subprocess.Popen(
        [*(launcher or [sys.executable, str(ROOT / "app.py")]), *args, "--port", str(port)],
        cwd=ROOT,
        env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", **(env or {})},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/"
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if process.poll() is not None:
            raise RuntimeError(f"the demo exited with status {process.returncode} (see {log.name})")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return process, url, time.monotonic() - started
        except OSError:
            time.sleep(0.25)
    process.kill()
    raise RuntimeError(f"the demo did not answer on {url} within {timeout_s:.0f} s")
