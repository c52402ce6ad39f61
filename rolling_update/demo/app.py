"""The demo's own service: a tick loop and a health body shaped like the reference service's.

Runs on any image with python3 (standard library only). Its version comes from
package.json beside it; "broken": true in there makes a release that is healthy
on green's port but degrades once it serves production's (DEMO_PRODUCTION_PORT),
the kind of failure only a check after the switch catches.
"""

import json
import os
import signal
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HERE = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(HERE, "package.json")) as f:
    PACKAGE = json.load(f)
PORT = int(os.environ.get("PORT", "8080"))
BROKEN = bool(PACKAGE.get("broken")) and os.environ.get("DEMO_PRODUCTION_PORT") == str(PORT)
TICK_SECONDS = float(os.environ.get("DEMO_TICK_SECONDS", "3"))
state = {"tick_running": False, "next_tick": None, "draining": False}


def tick_loop():
    while True:
        due = datetime.now(UTC) + timedelta(seconds=TICK_SECONDS)
        state["next_tick"] = due.isoformat()
        time.sleep(TICK_SECONDS)
        state["tick_running"] = True
        time.sleep(0.3)
        state["tick_running"] = False


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, body, code=200):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/api/brain/health":
            return self.answer({"status": "degraded" if BROKEN else "healthy"})
        if self.path == "/api/brain/hardening/status":
            return self.answer({"version": PACKAGE["version"]})
        if self.path == "/api/brain/tick/status":
            return self.answer({**state, "loop_running": True})
        self.answer({"error": "not found"}, 404)

    def do_POST(self):
        if self.path in ("/api/brain/tick/drain", "/api/brain/tick/drain-cancel"):
            state["draining"] = self.path.endswith("/drain")
            return self.answer({"draining": state["draining"]})
        self.answer({"error": "not found"}, 404)


def main():
    server = ThreadingHTTPServer(("127.0.0.1", PORT), Handler)
    server.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    threading.Thread(target=tick_loop, daemon=True).start()
    print(f"demo {PACKAGE['version']} serving on {PORT}", flush=True)
    server.serve_forever(poll_interval=0.05)
    sys.exit(0)


if __name__ == "__main__":
    main()
