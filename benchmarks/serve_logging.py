"""What does the prediction log cost a served photo? Upload latency with the log on and off.

Starts two real ``ferops serve`` processes on 127.0.0.1, one with the prediction log (SQLite,
the default) and one with ``--no-log``, and sends both the same real photos in alternating rounds
(the machine's speed drifts; alternating keeps that out of the comparison). Prints the median
upload-to-answer latency of each and the log's share of it (target: under 5 %), and the log's
own count of what it wrote.

    python benchmarks/serve_logging.py [--model models/model.keras] [--rounds 5] [--per-round 40]

The photos are the 640x480 two-face JPEG of ``inference.py``'s latency test and the real photos of
``benchmarks/detection_set``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(command: list[str], log: Path) -> subprocess.Popen:
    import httpx

    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    port = command[command.index("--port") + 1]
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
            return process
        except httpx.HTTPError:
            time.sleep(0.5)
    process.terminate()
    raise SystemExit(f"{' '.join(command)} did not come up:\n{log.read_text()[-2000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "models/model.keras")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--per-round", type=int, default=40, help="uploads per server per round")
    args = parser.parse_args()
    import httpx

    ferops = shutil.which("ferops", path=str(Path(sys.executable).parent)) or "ferops"
    photos = [p.read_bytes() for p in sorted((ROOT / "benchmarks/detection_set").iterdir())
              if p.suffix in (".jpg", ".png")]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        env_note = os.environ.get("FEROPS_LOG_URI")
        servers = {}
        for name, extra in (("log on", ["--log-uri", f"sqlite:///{folder / 'predictions.db'}"]),
                            ("log off", ["--no-log"])):
            port = free_port()
            command = [ferops, "serve", "--model", str(args.model), "--port", str(port), *extra]
            servers[name] = (start(command, folder / f"{port}.log"), f"http://127.0.0.1:{port}")
        try:
            latencies: dict[str, list[float]] = {name: [] for name in servers}
            for _, url in servers.values():  # warm-up
                for photo in photos[:5]:
                    httpx.post(f"{url}/predict", files={"file": ("p.jpg", photo)}, timeout=60)
            for round_ in range(args.rounds):
                order = list(servers) if round_ % 2 == 0 else list(reversed(servers))
                for name in order:
                    url = servers[name][1]
                    for index in range(args.per_round):
                        photo = photos[index % len(photos)]
                        started = time.perf_counter()
                        response = httpx.post(f"{url}/predict", files={"file": ("p.jpg", photo)}, timeout=60)
                        latencies[name].append(1000 * (time.perf_counter() - started))
                        response.raise_for_status()
            health = httpx.get(f"{servers['log on'][1]}/health").json()["prediction_log"]
        finally:
            for process, _ in servers.values():
                process.terminate()
                process.wait(timeout=30)
    on, off = (statistics.median(latencies[name]) for name in ("log on", "log off"))
    print(f"{len(photos)} real photos, {args.rounds} alternating rounds of {args.per_round} uploads per "
          f"server; model {args.model}{' (FEROPS_LOG_URI is set but not used)' if env_note else ''}")
    print(f"median upload-to-answer latency: log on {on:.1f} ms, log off {off:.1f} ms; "
          f"the log's share {100 * (on - off) / off:+.1f} % (target < 5 %)")
    print(f"the log wrote {health['logged']} face(s), {health['failed']} failed, {health['dropped']} dropped")


if __name__ == "__main__":
    main()
