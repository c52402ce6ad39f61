"""A stand-in for the reference service ("Brain"): its endpoints, port rules, tick loop and drain.

It follows the real Brain's public source where the tool depends on it:
- GET /api/brain/health answers 200 {"status": "healthy"} only while the tick
  loop runs; otherwise 200 {"status": "degraded"}; it is "degraded" for about
  70 ms after the port opens; on an error, 500 {"status": "error"}. No version.
- GET /api/brain/hardening/status carries the version.
- Tick enablement: CECELIA_TICK_ENABLED=true enables the loop; any other value
  defers to the shared state (TICK_STATE_FILE, a file in a shared volume
  standing in for the database; "enabled" unless it says "disabled").
- GET /api/brain/tick/status: tick_running, next_tick, loop_running, enabled,
  draining. Each tick dispatches one task (unless draining), which stays in
  progress for TASK_SECONDS.
- Drain, per process: POST /api/brain/tick/drain (no new dispatch; running
  tasks finish), GET /api/brain/tick/drain-status, POST .../drain-cancel.
- Port: PORT, else BRAIN_PORT, else 5221. SIGTERM is handled.

Knobs make it misbehave the ways a real new version can. Each is read from the
environment, else from "knobs" in package.json (a release that is broken by itself):
BOOT_DELAY=s         sleep before binding the port
HEALTH_STATUS=x      status field of /api/brain/health when the loop runs (default "healthy")
FAIL_HEALTH=1        /api/brain/health answers 500 {"status": "error"}
FAIL_ON_PORT=p       report "degraded" when serving on port p
CRASH_AFTER=s        exit with code 3 s seconds after start
CRASH_ON_PORT=p      exit with code 3 at once when told to serve on port p
CRASH_ON_PORT_AFTER=s  with CRASH_ON_PORT: serve healthily for s seconds first, then exit 3
MIGRATE_FAIL=1       "migrate" exits 1
MIGRATE_SLEEP=s      "migrate" takes s seconds; on SIGTERM it says so and exits 42
HEALTH_MODE=m        /api/brain/health answers html (not JSON), huge (2 MB) or hang (never)
TICK_MODE=html       /api/brain/tick/status answers HTML
TICK_INTERVAL=s      seconds between ticks (default 3600)
TICK_DURATION=s      how long a tick runs (default 1)
TASK_SECONDS=s       how long a dispatched task stays in progress (default 0)
TICK_STATE_FILE=f    the shared tick enablement ("enabled"/"disabled"); default: enabled
SHUTDOWN_DELAY=s     on SIGTERM, wait this long before closing
MEMORY_MB=n          hold n MiB of memory
ECHO_ENV=NAME        print NAME=value at start (to prove logs redact secrets)
REPORT_URL=url       POST a JSON line per event (start, tick, dispatch, drain, sigterm) there
"""

import json
import os
import signal
import socket
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
state = {
    "tick_running": False,
    "next_tick": None,
    "ticks": 0,
    "loop_running": False,
    "draining": False,
    "in_progress": 0,
    "listening_since": None,
    "stopping": False,
    "connections": 0,
}
lock = threading.Lock()


def env_float(name, default):
    value = knob(name)
    return float(value) if value else default


def tick_enabled():
    """CECELIA_TICK_ENABLED=true enables; anything else defers to the shared state."""
    if knob("CECELIA_TICK_ENABLED") == "true":
        return True
    path = knob("TICK_STATE_FILE")
    if not path:
        return True
    try:
        with open(path) as f:
            return f.read().strip() != "disabled"
    except OSError:
        return True


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


def finish_task(n):
    time.sleep(env_float("TASK_SECONDS", 0))
    with lock:
        state["in_progress"] -= 1
    report("task_done", n=n)


def tick_loop():
    interval = env_float("TICK_INTERVAL", 3600)
    duration = env_float("TICK_DURATION", 1)
    with lock:
        state["loop_running"] = True
    while True:
        due = datetime.now(UTC) + timedelta(seconds=interval)
        with lock:
            state["next_tick"] = due.isoformat()
        time.sleep(interval)
        with lock:
            state["tick_running"] = True
            state["ticks"] += 1
            n = state["ticks"]
            dispatch = not state["draining"]
            if dispatch:
                state["in_progress"] += 1
        report("tick_start", n=n)
        if dispatch:
            report("dispatch", n=n)
            threading.Thread(target=finish_task, args=(n,), daemon=True).start()
        time.sleep(duration)
        with lock:
            state["tick_running"] = False
        report("tick_end", n=n)


class Handler(BaseHTTPRequestHandler):
    # Keep-alive, as Node's server does; after SIGTERM each answer closes its connection,
    # so that keep-alive clients reconnect (and reach whatever serves the port then).
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def setup(self):
        super().setup()
        with lock:
            state["connections"] += 1

    def finish(self):
        try:
            super().finish()
        finally:
            with lock:
                state["connections"] -= 1

    def answer(self, code, body):
        self.raw(code, json.dumps(body).encode(), "application/json")

    def raw(self, code, data, content_type):
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        if state["stopping"]:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(data)

    def health(self):
        mode = knob("HEALTH_MODE")
        if mode == "hang":
            time.sleep(3600)
        if mode in ("html", "huge"):
            text = "<html>" + ("x" * 2_000_000 if mode == "huge" else "oops") + "</html>"
            return self.raw(200, text.encode(), "text/html")
        if knob("FAIL_HEALTH") == "1":
            return self.answer(500, {"status": "error"})
        with lock:
            loop = state["loop_running"]
            fresh = time.time() - (state["listening_since"] or 0) < 0.07
        status = knob("HEALTH_STATUS", "healthy") if loop and not fresh else "degraded"
        if knob("FAIL_ON_PORT") == str(PORT):
            status = "degraded"
        return self.answer(200, {"status": status, "uptime": round(time.time() - STARTED, 3)})

    def tick_status(self):
        if knob("TICK_MODE") == "html":
            return self.raw(200, b"<html>tick?</html>", "text/html")
        with lock:
            return self.answer(
                200,
                {
                    "enabled": tick_enabled(),
                    "loop_running": state["loop_running"],
                    "tick_running": state["tick_running"],
                    "next_tick": state["next_tick"],
                    "draining": state["draining"],
                },
            )

    def do_GET(self):
        if self.path == "/api/brain/health":
            return self.health()
        if self.path == "/api/brain/hardening/status":
            # "port" is the stand-in's own: it shows which container answered.
            return self.answer(200, {"version": VERSION, "checks": [], "port": PORT})
        if self.path == "/api/brain/tick/status":
            return self.tick_status()
        if self.path == "/api/brain/tick/drain-status":
            with lock:
                body = {"draining": state["draining"], "in_progress": state["in_progress"]}
            return self.answer(200, body)
        self.answer(404, {"error": "not found"})

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        if self.path in ("/api/brain/tick/drain", "/api/brain/tick/drain-cancel"):
            draining = self.path.endswith("/drain")
            with lock:
                state["draining"] = draining
                in_progress = state["in_progress"]
            report("drain" if draining else "drain_cancel")
            return self.answer(200, {"draining": draining, "in_progress": in_progress})
        self.answer(404, {"error": "not found"})


class DualStackServer(ThreadingHTTPServer):
    """IPv6 and IPv4 (mapped) on one socket, so that ::1 and 127.0.0.1 both reach it."""

    address_family = socket.AF_INET6

    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


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
    try:
        server = DualStackServer(("::", PORT), Handler)
    except OSError:  # a container without IPv6
        server = ThreadingHTTPServer(("0.0.0.0", PORT), Handler)
    server.daemon_threads = True
    with lock:
        state["listening_since"] = time.time()

    def on_sigterm(signum, frame):
        with lock:
            during_tick = state["tick_running"]
            draining = state["draining"]
        state["stopping"] = True
        report("sigterm", during_tick=during_tick, draining=draining)
        time.sleep(env_float("SHUTDOWN_DELAY", 0))
        threading.Thread(target=server.shutdown).start()

    signal.signal(signal.SIGTERM, on_sigterm)
    enabled = tick_enabled()
    if enabled:
        print("Tick is enabled, starting loop on startup", flush=True)
        threading.Thread(target=tick_loop, daemon=True).start()
    print(f"brain {VERSION} listening on {PORT} (tick {'on' if enabled else 'off'})", flush=True)
    report("start", tick=enabled)
    server.serve_forever(poll_interval=0.05)
    # Requests in flight finish (bounded), as a Node server's close() lets them.
    deadline = time.time() + 2
    while state["connections"] and time.time() < deadline:
        time.sleep(0.01)
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
