"""A stand-in for the reference service: its endpoints, port rules and tick loop.

Knobs make it misbehave the ways a real new version can. Each is read from the
environment, else from "knobs" in package.json (a release that is broken by itself):
BOOT_DELAY=s         sleep before binding the port
HEALTH_STATUS=x      status field of /api/brain/health (default "healthy")
FAIL_HEALTH=1        /api/brain/health answers 500
FAIL_ON_PORT=p       report "degraded" when serving on port p
CRASH_AFTER=s        exit with code 3 s seconds after start
CRASH_ON_PORT=p      exit with code 3 at once when told to serve on port p
CRASH_ON_PORT_AFTER=s  with CRASH_ON_PORT: serve healthily for s seconds first, then exit 3
MIGRATE_FAIL=1       "migrate" exits 1
MIGRATE_SLEEP=s      "migrate" takes s seconds; on SIGTERM it says so and exits 42
HEALTH_MODE=m        /api/brain/health answers html (not JSON), huge (2 MB) or hang (never)
TICK_MODE=html       /api/brain/tick/status answers HTML
TICK_INTERVAL=s      seconds between ticks (default 3600); CECELIA_TICK_ENABLED=false: none
TICK_DURATION=s      how long a tick runs (default 1)
SHUTDOWN_DELAY=s     on SIGTERM, wait this long before closing
MEMORY_MB=n          hold n MiB of memory
ECHO_ENV=NAME        print NAME=value at start (to prove logs redact secrets)
REPORT_URL=url       POST a JSON line per event (start, tick, sigterm) there
"""

import json
import os
import signal
import sys
import threading
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "package.json")) as f:
    PACKAGE = json.load(f)
VERSION = PACKAGE["version"]
KNOBS = {k: str(v) for k, v in PACKAGE.get("knobs", {}).items()}


def knob(name, default=None):
    return os.environ.get(name) or KNOBS.get(name) or default


PORT = int(os.environ.get("PORT") or os.environ.get("BRAIN_PORT") or 5221)
STARTED = time.time()
state = {"tick_running": False, "next_tick": None, "ticks": 0}
lock = threading.Lock()


def env_float(name, default):
    value = knob(name)
    return float(value) if value else default


def report(event, **fields):
    url = knob("REPORT_URL")
    print(f"event={event} {fields}", flush=True)
    if not url:
        return
    body = json.dumps(
        {
            "event": event,
            "port": PORT,
            "version": VERSION,
            "pid": os.getpid(),
            "time": time.time(),
            **fields,
        }
    ).encode()
    try:
        urllib.request.urlopen(
            urllib.request.Request(url, data=body, method="POST"), timeout=2
        ).read()
    except OSError as exc:
        print(f"report failed: {exc}", flush=True)


def tick_loop():
    interval = env_float("TICK_INTERVAL", 3600)
    duration = env_float("TICK_DURATION", 1)
    while True:
        due = datetime.now(UTC) + timedelta(seconds=interval)
        with lock:
            state["next_tick"] = due.isoformat()
        time.sleep(interval)
        with lock:
            state["tick_running"] = True
            state["ticks"] += 1
        report("tick_start", n=state["ticks"])
        time.sleep(duration)
        with lock:
            state["tick_running"] = False
        report("tick_end", n=state["ticks"])


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def answer(self, code, body):
        self.raw(code, json.dumps(body).encode(), "application/json")

    def raw(self, code, data, content_type):
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/api/brain/health":
            mode = knob("HEALTH_MODE")
            if mode == "hang":
                time.sleep(3600)
            if mode in ("html", "huge"):
                text = "<html>" + ("x" * 2_000_000 if mode == "huge" else "oops") + "</html>"
                return self.raw(200, text.encode(), "text/html")
            if knob("FAIL_HEALTH") == "1":
                return self.answer(500, {"status": "error"})
            status = knob("HEALTH_STATUS", "healthy")
            if knob("FAIL_ON_PORT") == str(PORT):
                status = "degraded"
            return self.answer(
                200,
                {"status": status, "version": VERSION, "uptime": round(time.time() - STARTED, 3)},
            )
        if self.path == "/api/brain/tick/status":
            if knob("TICK_MODE") == "html":
                return self.raw(200, b"<html>tick?</html>", "text/html")
            with lock:
                return self.answer(
                    200,
                    {
                        "enabled": TICK_ENABLED,
                        "loop_running": TICK_ENABLED,
                        "tick_running": state["tick_running"],
                        "next_tick": state["next_tick"],
                    },
                )
        self.answer(404, {"error": "not found"})


TICK_ENABLED = knob("CECELIA_TICK_ENABLED", "true") != "false"


def serve():
    if knob("ECHO_ENV"):
        name = knob("ECHO_ENV")
        print(f"{name}={os.environ.get(name, '')}", flush=True)
    hold = bytearray(int(env_float("MEMORY_MB", 0)) * 1024 * 1024)
    for i in range(0, len(hold), 4096):
        hold[i] = 1
    if knob("CRASH_ON_PORT") == str(PORT):
        after = env_float("CRASH_ON_PORT_AFTER", 0)

        def crash():
            print(f"crashing on purpose: refusing port {PORT}", flush=True)
            time.sleep(0.1)
            os._exit(3)

        if not after:
            crash()
        threading.Timer(after, crash).start()
    crash_after = knob("CRASH_AFTER")
    if crash_after:
        threading.Timer(
            float(crash_after), lambda: (print("crashing on purpose", flush=True), os._exit(3))
        ).start()
    time.sleep(env_float("BOOT_DELAY", 0))
    server = ThreadingHTTPServer(("0.0.0.0", PORT), Handler)
    server.daemon_threads = True

    def on_sigterm(signum, frame):
        with lock:
            during_tick = state["tick_running"]
        report("sigterm", during_tick=during_tick)
        time.sleep(env_float("SHUTDOWN_DELAY", 0))
        threading.Thread(target=server.shutdown).start()

    signal.signal(signal.SIGTERM, on_sigterm)
    if TICK_ENABLED:
        threading.Thread(target=tick_loop, daemon=True).start()
    print(
        f"brain {VERSION} listening on {PORT} (tick {'on' if TICK_ENABLED else 'off'})", flush=True
    )
    report("start", tick=TICK_ENABLED)
    server.serve_forever(poll_interval=0.05)
    print("bye", flush=True)


def migrate():
    print(f"migrating to {VERSION}", flush=True)
    if knob("ECHO_ENV"):
        print(f"{knob('ECHO_ENV')}={os.environ.get(knob('ECHO_ENV'), '')}", flush=True)

    def on_sigterm(signum, frame):
        print("migration interrupted by SIGTERM: rolled back its transaction", flush=True)
        sys.exit(42)

    signal.signal(signal.SIGTERM, on_sigterm)
    time.sleep(env_float("MIGRATE_SLEEP", 0))
    if knob("MIGRATE_FAIL") == "1":
        print("migration 042 failed: relation already exists", flush=True)
        sys.exit(1)
    print("migrations done", flush=True)


if __name__ == "__main__":
    {"serve": serve, "migrate": migrate}[sys.argv[1] if len(sys.argv) > 1 else "serve"]()
