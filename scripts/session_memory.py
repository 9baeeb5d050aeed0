"""Server memory against the number of demo sessions: ``python scripts/session_memory.py [--sessions 200]``.

Starts the demo (tiny preset) with a short session TTL, opens SESSIONS sessions through ``gradio_client`` (each
uploads an image and parses a caption, then goes idle), and prints one JSON object: the server's resident memory
after every STEP sessions, then after the TTL has passed, for ROUNDS rounds: a round that opens as many sessions
again without growing shows the expired sessions' memory was freed for reuse (the allocator keeps it, so resident
memory does not drop). The sessions never close their page, as a client that vanishes would not: only the TTL
frees them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import psutil
from gradio_client import Client, handle_file

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from demo.process import start_demo  # noqa: E402 (the tests' launcher: same flags, same readiness check)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--step", type=int, default=25)
    parser.add_argument("--ttl", type=float, default=60.0, help="session TTL given to the demo (seconds)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-sessions", type=int, default=None, help="the demo's --max-sessions (default: its own)")
    args = parser.parse_args()
    limit = [] if args.max_sessions is None else ["--max-sessions", str(args.max_sessions)]
    process, url, _ = start_demo("--preset", "tiny", "--session-ttl", str(args.ttl), *limit)
    server = psutil.Process(process.pid)
    image = handle_file(str(ROOT / "assets" / "coffee.png"))
    try:
        Client(url, verbose=False).predict("a cup", "spaCy (offline)", "", "", "", api_name="/parse")  # warm-up
        rounds = [open_sessions(url, server, image, args) for _ in range(args.rounds)]
    finally:
        process.terminate()
        process.wait(30)
    print(
        json.dumps(
            {
                "sessions_per_round": args.sessions,
                "max_sessions": args.max_sessions,
                "ttl_s": args.ttl,
                "threads": os.cpu_count(),
                "rounds": rounds,
            }
        )
    )


def rss_mb(server: psutil.Process) -> float:
    return round(server.memory_info().rss / 2**20, 1)


def open_sessions(url: str, server: psutil.Process, image, args) -> dict:
    curve = [{"sessions": 0, "rss_mb": rss_mb(server)}]
    started = time.monotonic()
    for number in range(1, args.sessions + 1):
        client = Client(url, verbose=False)
        client.predict(image, api_name="/set_image")
        client.predict("a red cup on a saucer", "spaCy (offline)", "", "", "", api_name="/parse")
        if number % args.step == 0:
            curve.append({"sessions": number, "rss_mb": rss_mb(server)})
    seconds = time.monotonic() - started
    time.sleep(args.ttl + 15)  # Gradio sweeps expired state every second
    growth = curve[-1]["rss_mb"] - curve[0]["rss_mb"]
    return {
        "curve": curve,
        "rss_mb_after_ttl": rss_mb(server),
        "mb_per_session": round(growth / args.sessions, 3),
        "seconds": round(seconds, 1),
    }


if __name__ == "__main__":
    main()
