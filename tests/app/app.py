"""A stand-in for the reference service ("Brain", cecelia-brain v1.98.0): its control API.

It answers field by field and side effect by side effect as the real Brain's source does
(/tmp/brainsrc/brain: server.js, src/tick.js, src/routes.js, src/selfcheck.js,
src/migrate.js); each behaviour below names the real function it follows.

The database. A JSON file, BRAIN_DB (default /tmp/brain-db.json: a private file in the
container, so containers that do not share one behave as separate databases), read and
written under fcntl.flock on BRAIN_DB + ".lock" (read-modify-write is atomic between the
processes and containers sharing it through a bind mount). It holds what the Brain keeps in
PostgreSQL and a deploy depends on:
  tick_enabled    working_memory.tick_enabled; absent means true (a database where a
                  CECELIA_TICK_ENABLED=true boot once enabled it; the real default is false)
  tick_last       working_memory.tick_last, ISO time or null
  schema_version  MAX(schema_version.version), e.g. "076"; absent until migrated
  region          brain_config.region, written by the first migration (DB_REGION, "us")
  tasks           [{id, title, status, started_at, ends_at}]: a task is in progress while
                  ends_at is in the future. Tasks run OUTSIDE the Brain (the host's
                  executor): whatever happens to the container that dispatched one.
  last_dispatch, actions_today, config_fingerprint
Modelled behaviour:
- Boot (server.js): runMigrations, then runSelfCheck (exit 1 on a failure, with
  selfcheck.js's [PASS]/[FAIL] lines), then listen on PORT, else BRAIN_PORT, else 5221,
  then initTickLoop (about 70 ms of start-up work, so health is "degraded" right after
  the port opens).
- runMigrations (migrate.js): a schema_version below this build's SCHEMA is raised to it;
  never lowered. `node src/migrate.js` (tests/app/node) runs it alone.
- runSelfCheck (selfcheck.js): ENV_REGION is us or hk; the DB answers; its region equals
  ENV_REGION; its tables exist (it was migrated); MAX(schema_version) equals this build's
  SCHEMA (EXPECTED_SCHEMA_VERSION): an older build does not boot on a newer schema; the
  config fingerprint is stored on first run (a mismatch only warns).
  `node src/selfcheck.js` runs it alone and exits 0 or 1.
- initTickLoop (tick.js): CECELIA_TICK_ENABLED=true runs enableTick (writes
  tick_enabled = true, starts the loop); any other value starts the loop only if the
  database says enabled.
- startTickLoop/stopTickLoop: a timer firing every LOOP_INTERVAL s (setInterval), per
  process. runTickSafe: a fire runs a tick only when TICK_INTERVAL s have passed since
  THIS process's last executed tick ended (the first fire always runs one), and never
  while one runs (tick_running).
- executeTick: tick_running for TICK_DURATION s; dispatches one task (dispatchNextTask,
  unless draining: the task goes into the database, in progress for TASK_SECONDS) and
  writes tick_last = the tick's start, unless TICK_SKIP_LAST=1 (the real early-return
  paths that write nothing, leaving next_tick in the past).
- getTickStatus, GET /api/brain/tick/status: every real top-level key with its JSON type;
  next_tick = the DATABASE's tick_last + TICK_INTERVAL (so a second instance's ticks move
  it, and it can lie in the past), or now + TICK_INTERVAL when enabled and never ticked,
  null when disabled.
- GET /api/brain/health (routes.js): always 200; "healthy" only while this process's
  loop runs, else "degraded"; organs.scheduler "running"/"stopped". No version.
- GET /api/brain/hardening/status: version, checked_at, overall_status, features, and the
  stand-in's own "port" (which container answered).
- drainTick, POST /api/brain/tick/drain: this process dispatches nothing more; answers the
  in-progress tasks of the whole database (or already_draining).
- getDrainStatus, GET /api/brain/tick/drain-status: draining, in_progress_tasks and
  remaining (the whole database's); the first call that finds none in progress ends the
  drain AND runs disableTick (tick_enabled = false in the database, this process's loop
  stopped, health degraded), answering drain_completed.
- cancelDrain, POST /api/brain/tick/drain-cancel: clears the flag only (was_draining).
- enableTick/disableTick, POST /api/brain/tick/enable and /disable: write tick_enabled,
  start or stop this process's loop.
- SIGTERM and SIGINT (server.js): exit 0 at once (os._exit), without closing the HTTP
  server: requests in flight are cut.
- Unknown path: 404 {"error": "not found"}.

The Brain's own variables it reads: PORT, else BRAIN_PORT; ENV_REGION; CECELIA_TICK_ENABLED;
CECELIA_TICK_INTERVAL_MS; DISPATCH_TIMEOUT_MINUTES; FEISHU_BOT_WEBHOOK (notifier);
DB_HOST, DB_PORT, DB_NAME (the config fingerprint).

Knobs make it misbehave the ways a real new version can, or set its timings. Each is read
from the environment, else from "knobs" in package.json (a release that is so by itself):
SCHEMA=v             the schema version this build expects and migrates to (default "076");
                     a release with SCHEMA = "077" brings a migration
DB_REGION=r          the region a new database gets from its first migration (default "us")
BRAIN_DB=path        the database file (default /tmp/brain-db.json, private)
LOOP_INTERVAL=s      seconds between fires of the loop (default: CECELIA_TICK_INTERVAL_MS,
                     the real variable, / 1000, else 5)
TICK_INTERVAL=s      seconds between executed ticks (default 300, the real 5 minutes)
TICK_DURATION=s      how long a tick runs (default 1)
TICK_SKIP_LAST=1     ticks do not write tick_last
TASK_SECONDS=s       how long a dispatched task stays in progress (default 0)
BOOT_DELAY=s         sleep before the migrations (a slow boot)
HEALTH_STATUS=x      status field of /api/brain/health when the loop runs (default "healthy")
FAIL_HEALTH=1        /api/brain/health answers 500 {"status": "error"}
FAIL_ON_PORT=p       report "degraded" when serving on port p
FAIL_SENT_TO_PORT=p  report "degraded" on a connection sent to port p: its original
                     destination, which a redirect (the handoff's, or a share of it) keeps
FAIL_RATE=f          a bad release: each GET, on any route, health included, answers 500
                     {"error": "FAIL_RATE", "version", "port"} with probability f (e.g.
                     0.05), as a broken connection pool or shared middleware fails them
FAIL_RATE_SPARES_HEALTH=1  with FAIL_RATE: /api/brain/health never fails (a bug confined
                     to the routes a health check does not touch)
CRASH_AFTER=s        exit with code 3 s seconds after start
CRASH_ON_PORT=p      exit with code 3 at once when told to serve on port p
CRASH_ON_PORT_AFTER=s  with CRASH_ON_PORT: serve (and boot) normally for s seconds, then exit 3
MIGRATE_FAIL=1       `node src/migrate.js` exits 1, migrating nothing
MIGRATE_SLEEP=s      `node src/migrate.js` takes s seconds; on SIGTERM it says so, exits 42
                     (neither slows or fails the migrations a boot runs)
HEALTH_MODE=m        /api/brain/health answers html (not JSON), huge (2 MB) or hang (never)
TICK_MODE=html       /api/brain/tick/status answers HTML
SHUTDOWN_DELAY=s     on SIGTERM, go on serving s seconds first
SIGTERM_MODE=graceful  not the real way: after SIGTERM answers say Connection: close
                     (SHUTDOWN_DELAY s), then it stops accepting, lets the requests in
                     flight finish (at most 2 s) and exits 0
MEMORY_MB=n          hold n MiB of memory
ALLOC_MB_AFTER=s     with MEMORY_MB: take it s seconds after start, not at start (a boot
                     that outgrows a memory limit: with --memory below it, the kernel
                     OOM-kills the process)
KEEPALIVE_TIMEOUT=s  an idle keep-alive connection is closed after s seconds (default 5,
                     Node's keepAliveTimeout, which server.js keeps)
ECHO_ENV=NAME        print NAME=value at start (to prove logs redact secrets)

Not the Brain's, for tests only: GET /__standin/sleep?s=N answers {"version": ...} after N
seconds (a slow route in flight when blue is replaced). GET /__standin/alloc?mb=N takes
N MiB more and answers (if still alive). GET /__standin/error_rate answers a bare number:
the share of this process's GETs that FAIL_RATE failed so far (0 before any), the kind of
figure a metrics query reads (switch.gate_metrics_url). POST /__standin/drain, and the
signal STANDIN_DRAIN_SIGNAL names (e.g. SIGUSR2; the Brain has no handler for it: Node
would exit), make it drain its connections the way a service with such an action does:
every later answer says Connection: close, and a connection that has waited
DRAIN_IDLE (0.5) s or more for its next request is closed (one busier than that is told
Connection: close with its next answer instead). Reported as connections_drain.
REPORT_URL=url       POST a JSON line per event there: start, tick_start, tick_end,
                     dispatch, task_done (by the dispatching process, if it still runs),
                     drain, drain_completed, drain_cancel, tick_enabled,
                     tick_disabled, sigterm (sigint)
"""

import contextlib
import fcntl
import hashlib
import json
import os
import random
import select
import signal
import socket
import sys
import threading
import time
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HERE = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(HERE, "package.json")) as f:
    PACKAGE = json.load(f)
VERSION = PACKAGE["version"]
KNOBS = {k: str(v) for k, v in PACKAGE.get("knobs", {}).items()}


def knob(name, default=None):
    return os.environ.get(name) or KNOBS.get(name) or default


def num(name, default):
    value = knob(name)
    return float(value) if value else default


PORT = int(os.environ.get("PORT") or os.environ.get("BRAIN_PORT") or 5221)
SCHEMA = knob("SCHEMA", "076")
LOOP_INTERVAL = num("LOOP_INTERVAL", float(knob("CECELIA_TICK_INTERVAL_MS", "5000")) / 1000)
TICK_INTERVAL = num("TICK_INTERVAL", 300)
TICK_DURATION = num("TICK_DURATION", 1)
TASK_SECONDS = num("TASK_SECONDS", 0)
DISPATCH_TIMEOUT_MINUTES = int(knob("DISPATCH_TIMEOUT_MINUTES", "60"))
MAX_CONCURRENT = 3
AUTO_DISPATCH_MAX = 1
INIT_SECONDS = 0.07  # initTickLoop's own start-up work (alertness, orphan sync)
BOOTED = datetime.now(UTC)


def iso(moment):
    """Like JavaScript's Date.toISOString(): 2026-12-02T07:54:59.977Z."""
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse_iso(text):
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def now():
    return datetime.now(UTC)


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


# ---------------------------------------------------------------- the database


class Database:
    """The shared database: one JSON file, read and written under an flock."""

    def __init__(self, path):
        self.path = path
        self.lock_path = path + ".lock"

    @contextlib.contextmanager
    def _locked(self, exclusive):
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _load(self):
        try:
            with open(self.path) as f:
                text = f.read()
        except FileNotFoundError:
            return {}
        return json.loads(text) if text.strip() else {}

    def read(self):
        with self._locked(False):
            return self._load()

    def update(self, change):
        """Run ``change(data)`` on the database and write it back: one transaction."""
        with self._locked(True):
            data = self._load()
            result = change(data)
            finish_tasks(data)
            tmp = f"{self.path}.{os.getpid()}.tmp"
            with open(tmp, "w") as f:
                json.dump(data, f, indent=1)
            os.replace(tmp, self.path)
            return result


DB = Database(knob("BRAIN_DB", "/tmp/brain-db.json"))


def db_enabled(data):
    value = data.get("tick_enabled")
    return True if value is None else bool(value)


def in_progress(data):
    """The tasks in progress in the whole database, oldest first (getDrainStatus's query)."""
    moment = now()
    tasks = [
        t
        for t in data.get("tasks", [])
        if t.get("status") == "in_progress" and parse_iso(t["ends_at"]) > moment
    ]
    return sorted(tasks, key=lambda t: t["started_at"])


def finish_tasks(data):
    """The executor's side: tasks past their end are completed; old ones are forgotten."""
    moment = now()
    tasks = data.get("tasks")
    if not tasks:
        return
    for task in tasks:
        if task.get("status") == "in_progress" and parse_iso(task["ends_at"]) <= moment:
            task["status"] = "completed"
    data["tasks"] = tasks[-200:]


def write_enabled(value):
    def change(data):
        data["tick_enabled"] = value

    DB.update(change)


# ---------------------------------------------------------------- migrations, self-check


def run_migrations():
    """runMigrations (migrate.js): raise schema_version to this build's SCHEMA."""

    def change(data):
        current = data.get("schema_version")
        data.setdefault("region", knob("DB_REGION", "us"))  # migration 005's brain_config row
        if current is not None and current >= SCHEMA:
            return []
        data["schema_version"] = SCHEMA
        if current is None:
            return [f"001..{SCHEMA} (a new database)"]
        return [f"{v:03d}" for v in range(int(current) + 1, int(SCHEMA) + 1)]

    applied = DB.update(change)
    for version in applied:
        print(f"[APPLY] {version} ...\n[DONE] {version}", flush=True)
    if applied:
        print(f"[MIGRATE] Applied {len(applied)} migration(s): {', '.join(applied)}", flush=True)
    else:
        print("[MIGRATE] All migrations already applied.", flush=True)
    return applied


def run_selfcheck():
    """runSelfCheck (selfcheck.js): True when all six checks pass."""
    env_region = os.environ.get("ENV_REGION")
    results = []

    def record(name, passed, detail):
        results.append(passed)
        print(f"  {'[PASS]' if passed else '[FAIL]'} {name}{': ' + detail if detail else ''}")

    def shown(value):
        return "null" if value is None else value

    print("\n=== Brain Self-Check ===\n")
    record(
        "ENV_REGION",
        env_region in ("us", "hk"),
        f'value="{env_region}"' if env_region else "not set",
    )
    try:
        data = DB.read()
    except (OSError, ValueError) as exc:
        record("DB Connection", False, str(exc))
        for name in ("DB Region Match", "Core Tables", "Schema Version", "Config Fingerprint"):
            record(name, False, "skipped (no DB connection)")
        data = None
    if data is not None:
        record("DB Connection", True, "SELECT 1 OK")
        region = data.get("region")
        record(
            "DB Region Match",
            region == env_region,
            f'DB="{shown(region)}" ENV="{shown(env_region)}"',
        )
        migrated = data.get("schema_version") is not None
        record(
            "Core Tables",
            migrated,
            "all 8 present" if migrated else "missing: tasks, working_memory",
        )
        version = data.get("schema_version")
        record("Schema Version", version == SCHEMA, f'DB="{shown(version)}" expected="{SCHEMA}"')
        parts = [
            os.environ.get("DB_HOST") or "localhost",
            os.environ.get("DB_PORT") or "5432",
            os.environ.get("DB_NAME") or "cecelia",
            env_region or "",
        ]
        fingerprint = hashlib.sha256(":".join(parts).encode()).hexdigest()[:16]

        def store(data):
            stored = data.get("config_fingerprint")
            data.setdefault("config_fingerprint", fingerprint)
            return stored

        stored = DB.update(store)
        if stored is None:
            record("Config Fingerprint", True, f'first run, stored "{fingerprint}"')
        elif stored == fingerprint:
            record("Config Fingerprint", True, f'matches "{fingerprint}"')
        else:
            print(f'  [WARN] Config fingerprint changed: stored="{stored}" current="{fingerprint}"')
            record("Config Fingerprint", True, f'mismatch (warning logged), stored="{stored}"')
    ok = all(results)
    print(f"\n=== Self-Check: {sum(results)}/{len(results)} passed {'✓' if ok else '✗'} ===\n")
    sys.stdout.flush()
    return ok


# ---------------------------------------------------------------- the tick loop

state = {
    "loop": None,  # _loopTimer: the running loop's stop event, or None
    "tick_running": False,
    "last_execute": 0.0,  # _lastExecuteTime (monotonic), 0: never
    "ticks": 0,
    "draining": False,
    "drain_started_at": None,
    "stopping": False,
    "connections": 0,
    # FAIL_RATE: GETs drawn, and how many of them were failed.
    "drawn": 0,
    "drawn_failed": 0,
}
lock = threading.Lock()
# Handlers waiting for their connection's next request: since when (monotonic).
idle = {}
DRAIN_IDLE = 0.5


def start_tick_loop():
    """startTickLoop: a timer firing every LOOP_INTERVAL s; False if one runs already."""
    with lock:
        if state["loop"] is not None:
            print("[tick-loop] Loop already running, skipping start", flush=True)
            return False
        stop = threading.Event()
        state["loop"] = stop
    threading.Thread(target=loop_timer, args=(stop,), daemon=True).start()
    print(f"[tick-loop] Started (interval: {round(LOOP_INTERVAL * 1000)}ms)", flush=True)
    return True


def stop_tick_loop():
    """stopTickLoop: clearInterval; a tick already running goes on to its end."""
    with lock:
        stop, state["loop"] = state["loop"], None
    if stop is None:
        print("[tick-loop] No loop running, skipping stop", flush=True)
        return False
    stop.set()
    print("[tick-loop] Stopped", flush=True)
    return True


def loop_timer(stop):
    due = time.monotonic() + LOOP_INTERVAL
    while not stop.wait(max(0.0, due - time.monotonic())):
        due = max(due + LOOP_INTERVAL, time.monotonic())
        with lock:
            if stop.is_set():
                return
        # The callback is async in Node: the timer goes on firing while a tick runs.
        threading.Thread(target=run_tick_safe, args=("loop",), daemon=True).start()


def run_tick_safe(source="loop"):
    """runTickSafe: throttled to one tick per TICK_INTERVAL, with a reentry guard."""
    with lock:
        elapsed = time.monotonic() - state["last_execute"]
        if source == "loop" and state["last_execute"] > 0 and elapsed < TICK_INTERVAL:
            return {"skipped": True, "reason": "throttled", "source": source}
        if state["tick_running"]:
            return {"skipped": True, "reason": "already_running", "source": source}
        state["tick_running"] = True
        state["ticks"] += 1
        n = state["ticks"]
    try:
        result = execute_tick(n)
        with lock:
            state["last_execute"] = time.monotonic()
        return result
    except Exception as exc:  # a failed tick is logged; the loop goes on
        print(f"[tick-loop] Tick failed (source: {source}): {exc}", flush=True)
        return {"success": False, "error": str(exc), "source": source}
    finally:
        with lock:
            state["tick_running"] = False
        report("tick_end", n=n)


def execute_tick(n):
    """executeTick: dispatch (unless draining), write tick_last, run TICK_DURATION s."""
    started = now()
    report("tick_start", n=n)
    with lock:
        draining = state["draining"]
    dispatched = None if draining else dispatch(n, started)

    def change(data):
        if knob("TICK_SKIP_LAST") != "1":
            data["tick_last"] = iso(started)
        if dispatched is not None:
            today = iso(started)[:10]
            count = data.get("actions_today") or {}
            data["actions_today"] = {
                "date": today,
                "count": (count.get("count", 0) if count.get("date") == today else 0) + 1,
            }

    DB.update(change)
    time.sleep(TICK_DURATION)
    return {"success": True, "dispatched": dispatched is not None}


def dispatch(n, started):
    """dispatchNextTask: one task into the database, run by the host's executor."""
    task = {
        "id": str(uuid.uuid4()),
        "title": f"task {n} of {VERSION} on {PORT}",
        "status": "in_progress",
        "started_at": iso(started),
        "ends_at": iso(started + timedelta(seconds=TASK_SECONDS)),
    }

    def change(data):
        data.setdefault("tasks", []).append(task)
        data["last_dispatch"] = {
            "task_id": task["id"],
            "task_title": task["title"],
            "run_id": str(uuid.uuid4()),
            "dispatched_at": iso(now()),
            "success": True,
        }

    DB.update(change)
    report("dispatch", n=n, task=task["id"])

    def done():
        time.sleep(TASK_SECONDS)
        report("task_done", n=n, task=task["id"])

    threading.Thread(target=done, daemon=True).start()
    return task


def enable_tick():
    """enableTick: tick_enabled = true in the database, and this process's loop starts."""
    write_enabled(True)
    start_tick_loop()
    return {"success": True, "enabled": True, "loop_running": True}


def disable_tick():
    """disableTick: tick_enabled = false in the database, and this process's loop stops."""
    write_enabled(False)
    stop_tick_loop()
    return {"success": True, "enabled": False, "loop_running": False}


def init_tick_loop():
    """initTickLoop: CECELIA_TICK_ENABLED=true enables; anything else defers to the DB."""
    time.sleep(INIT_SECONDS)
    if knob("CECELIA_TICK_ENABLED") == "true":
        print("[tick-loop] CECELIA_TICK_ENABLED=true, auto-enabling tick", flush=True)
        enable_tick()
    elif db_enabled(DB.read()):
        print("[tick-loop] Tick is enabled in DB, starting loop on startup", flush=True)
        start_tick_loop()
    else:
        print("[tick-loop] Tick is disabled in DB, not starting loop", flush=True)
    with lock:
        running = state["loop"] is not None
    print(f"brain {VERSION} listening on {PORT} (tick {'on' if running else 'off'})", flush=True)
    report("start", tick=running)


def interval_minutes():
    minutes = TICK_INTERVAL / 60
    return int(minutes) if minutes == int(minutes) else round(minutes, 6)


def tick_status():
    """getTickStatus: every key of the real answer, with its JSON type."""
    data = DB.read()
    moment = now()
    enabled = db_enabled(data)
    last = data.get("tick_last")
    if enabled and last:
        next_tick = iso(parse_iso(last) + timedelta(seconds=TICK_INTERVAL))
    elif enabled:
        next_tick = iso(moment + timedelta(seconds=TICK_INTERVAL))
    else:
        next_tick = None
    used = len(in_progress(data))
    with lock:
        loop_running = state["loop"] is not None
        draining, started = state["draining"], state["drain_started_at"]
        tick_running = state["tick_running"]
    metrics = {"cpu_pressure": 0.1, "mem_pressure": 0.2, "swap_pressure": 0, "max_pressure": 0.2}
    return {
        "enabled": enabled,
        "loop_running": loop_running,
        "draining": draining,
        "drain_started_at": started,
        "interval_minutes": interval_minutes(),
        "loop_interval_ms": round(LOOP_INTERVAL * 1000),
        "last_tick": last,
        "next_tick": next_tick,
        "actions_today": (data.get("actions_today") or {}).get("count", 0),
        "tick_running": tick_running,
        "last_dispatch": data.get("last_dispatch"),
        "startup_ok": True,
        "startup_error_count": 0,
        "recovery_timer_active": False,
        "recovery_attempts": None,
        "max_concurrent": MAX_CONCURRENT,
        "auto_dispatch_max": AUTO_DISPATCH_MAX,
        "resources": {"ok": True, "reason": None, "effectiveSlots": 3, "metrics": metrics},
        "slot_budget": {
            "total": MAX_CONCURRENT,
            "capacity": {"physical": 3, "budget": 3, "effective": 3},
            "user": {"budget": 1, "used": 0, "mode": "absent", "headroom": 1},
            "cecelia": {"budget": 1, "used": 0},
            "taskPool": {"budget": 1, "used": used, "available": max(0, 1 - used)},
            "pressure": 0.2,
            "resources": {"effectiveSlots": 3, "maxPressure": 0.2},
            "dispatchAllowed": used < 1,
        },
        "dispatch_timeout_minutes": DISPATCH_TIMEOUT_MINUTES,
        "circuit_breakers": {},
        "alertness": {
            "level": 1,
            "levelName": "CALM",
            "startedAt": iso(BOOTED),
            "reason": "System initialized",
            "duration": int((moment - BOOTED).total_seconds() * 1000),
            "isRecovering": False,
            "lastEvaluation": iso(BOOTED),
            "override": None,
        },
        "quarantine": {
            "total": 0,
            "by_reason": {
                "repeated_failure": 0,
                "suspicious_input": 0,
                "resource_hog": 0,
                "timeout_pattern": 0,
                "manual": 0,
            },
        },
    }


def task_view(task):
    return {"id": task["id"], "title": task["title"], "started_at": task["started_at"]}


def drain_tick():
    """drainTick: stop dispatching; answer the database's in-progress tasks."""
    with lock:
        if state["draining"]:
            return {
                "success": True,
                "already_draining": True,
                "draining": True,
                "drain_started_at": state["drain_started_at"],
            }
        state["draining"] = True
        state["drain_started_at"] = started = iso(now())
    print(f"[tick] Drain mode activated at {started}", flush=True)
    tasks = in_progress(DB.read())
    return {
        "success": True,
        "draining": True,
        "drain_started_at": started,
        "in_progress_tasks": [task_view(t) for t in tasks],
        "remaining": len(tasks),
    }


def drain_status():
    """getDrainStatus: nothing in progress anywhere ends the drain AND disables the tick."""
    with lock:
        if not state["draining"]:
            return {"draining": False, "in_progress_tasks": [], "remaining": 0}
    tasks = in_progress(DB.read())
    if tasks:
        with lock:
            started = state["drain_started_at"]
        return {
            "draining": True,
            "drain_started_at": started,
            "in_progress_tasks": [task_view(t) for t in tasks],
            "remaining": len(tasks),
        }
    print("[tick] Drain complete — no in_progress tasks remain, disabling tick", flush=True)
    ended = iso(now())
    with lock:
        started = state["drain_started_at"]
        state["draining"], state["drain_started_at"] = False, None
    disable_tick()
    report("drain_completed", drain_started_at=started)
    report("tick_disabled", by="drain-status")
    return {
        "draining": False,
        "drain_completed": True,
        "drain_started_at": started,
        "drain_ended_at": ended,
        "in_progress_tasks": [],
        "remaining": 0,
    }


def cancel_drain():
    """cancelDrain: clears the drain flag; re-enables nothing."""
    with lock:
        was = state["draining"]
        state["draining"], state["drain_started_at"] = False, None
    if was:
        print("[tick] Drain mode cancelled, resuming normal dispatch", flush=True)
    return {"success": True, "was_draining": was}


def health_body():
    """GET /api/brain/health: "healthy" only while this process's loop runs."""
    status = tick_status()
    loop = status["loop_running"]
    word = knob("HEALTH_STATUS", "healthy") if loop else "degraded"
    if knob("FAIL_ON_PORT") == str(PORT):
        word = "degraded"
    return {
        "status": word,
        "organs": {
            "scheduler": {
                "status": "running" if loop else "stopped",
                "enabled": status["enabled"],
                "last_tick": status["last_tick"],
                "max_concurrent": status["max_concurrent"],
            },
            "circuit_breaker": {"status": "all_closed", "open": [], "states": {}},
            "event_bus": {"status": "active"},
            "notifier": {
                "status": "configured" if os.environ.get("FEISHU_BOT_WEBHOOK") else "unconfigured"
            },
            "planner": {"status": "v2"},
        },
        "timestamp": iso(now()),
    }


# linux/netfilter_ipv4.h SO_ORIGINAL_DST; IP6T_SO_ORIGINAL_DST has the same number.
SO_ORIGINAL_DST = 80


def sent_to_port(sock):
    """The port a client sent this connection to: conntrack's original destination, before
    any redirect; the port it reached where conntrack does not track it. IPv4 first: the
    dual-stack socket carries IPv4 connections as mapped addresses, tracked as IPv4."""
    for level, size in ((socket.SOL_IP, 16), (socket.IPPROTO_IPV6, 28)):
        try:
            raw = sock.getsockopt(level, SO_ORIGINAL_DST, size)
        except OSError:
            continue
        return int.from_bytes(raw[2:4], "big")
    return sock.getsockname()[1]


def hardening_body():
    return {
        "version": VERSION,
        "checked_at": iso(now()),
        "overall_status": "ok",
        "features": {
            "transactional_decisions": {
                "enabled": True,
                "recent_10": {"committed": 0, "rolled_back": 0},
                "last_rollback": None,
            },
            "failure_classification": {
                "enabled": True,
                "last_1h": {"systemic": 0, "task_specific": 0, "unknown": 0},
            },
            "event_backlog": {"enabled": True, "current_10min": 0, "threshold": 50, "peak_24h": 0},
            "alertness_decay": {
                "enabled": True,
                "current_score": {"raw": 0, "decayed": 0},
                "level": "CALM",
                "recovery_gate": None,
            },
            "pending_actions": {
                "enabled": True,
                "pending": 0,
                "approved_24h": 0,
                "rejected_24h": 0,
                "expired_24h": 0,
            },
            "llm_errors": {
                "enabled": True,
                "last_1h": {"api_error": 0, "bad_output": 0, "timeout": 0},
            },
        },
        # The stand-in's own: which container answered.
        "port": PORT,
    }


def drain_connections():
    """Not the Brain's (POST /__standin/drain, STANDIN_DRAIN_SIGNAL): Connection: close from
    now on, and idle connections closed; False when already draining."""
    with lock:
        if state["stopping"]:
            return False
        state["stopping"] = True
    print("draining connections: Connection: close from now on", flush=True)
    threading.Thread(target=close_idle, daemon=True).start()
    report("connections_drain")
    return True


def close_idle():
    while True:  # until the process ends (a daemon thread)
        with lock:
            moment = time.monotonic()
            for handler in [h for h, since in idle.items() if moment - since >= DRAIN_IDLE]:
                del idle[handler]
                with contextlib.suppress(OSError):
                    handler.connection.shutdown(socket.SHUT_RDWR)
        time.sleep(0.05)


def fails_by_rate(path):
    """FAIL_RATE: whether this GET is one of the share a bad release fails (counted)."""
    if path == "/__standin/error_rate":
        return False
    if path == "/api/brain/health" and knob("FAIL_RATE_SPARES_HEALTH") == "1":
        return False
    failed = random.random() < num("FAIL_RATE", 0)
    with lock:
        state["drawn"] += 1
        state["drawn_failed"] += failed
    return failed


def error_rate():
    with lock:
        return state["drawn_failed"] / state["drawn"] if state["drawn"] else 0


# ---------------------------------------------------------------- HTTP

GET_ROUTES = {
    "/api/brain/tick/status": ("Failed to get tick status", tick_status),
    "/api/brain/hardening/status": ("Failed to get hardening status", hardening_body),
    "/api/brain/tick/drain-status": ("Failed to get drain status", drain_status),
}
POST_ROUTES = {
    "/api/brain/tick/drain": ("Failed to start drain", drain_tick, "drain"),
    "/api/brain/tick/drain-cancel": ("Failed to cancel drain", cancel_drain, "drain_cancel"),
    "/api/brain/tick/enable": ("Failed to enable tick", enable_tick, "tick_enabled"),
    "/api/brain/tick/disable": ("Failed to disable tick", disable_tick, "tick_disabled"),
}


class Handler(BaseHTTPRequestHandler):
    # Keep-alive, as Node's server does. In SIGTERM_MODE=graceful each answer after
    # SIGTERM closes its connection, so that keep-alive clients reconnect.
    protocol_version = "HTTP/1.1"
    # server.js keeps Node's default http.Server: an idle keep-alive connection is closed
    # after keepAliveTimeout, 5 s (Node 20).
    timeout = num("KEEPALIVE_TIMEOUT", 5)

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

    def handle_one_request(self):
        # Until its next request arrives the connection is idle, and a drain may close it.
        # (No client here pipelines: a request read ahead into rfile is not looked for.)
        with lock:
            idle[self] = time.monotonic()
        try:
            # poll, not select: select() refuses descriptors past 1023 (a heavy load).
            waiting = select.poll()
            waiting.register(self.connection, select.POLLIN)
            ready = waiting.poll(self.timeout * 1000)
        finally:
            with lock:
                idle.pop(self, None)
        if not ready:
            self.close_connection = True
            return
        super().handle_one_request()

    def answer(self, code, body):
        self.raw(code, json.dumps(body).encode(), "application/json; charset=utf-8")

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
            return self.answer(500, {"status": "error", "error": "FAIL_HEALTH"})
        try:
            body = health_body()
            if knob("FAIL_SENT_TO_PORT") == str(sent_to_port(self.connection)):
                body["status"] = "degraded"
            return self.answer(200, body)
        except Exception as exc:
            return self.answer(500, {"status": "error", "error": str(exc)})

    def route(self, what, call, event=None):
        try:
            body = call()
        except Exception as exc:
            return self.answer(500, {"error": what, "details": str(exc)})
        if event:
            report(event, **{k: v for k, v in body.items() if k != "success"})
        return self.answer(200, body)

    def do_GET(self):
        path = self.path.split("?", 1)[0]
        if fails_by_rate(path):
            return self.answer(500, {"error": "FAIL_RATE", "version": VERSION, "port": PORT})
        if path == "/__standin/error_rate":
            return self.answer(200, error_rate())
        if path == "/api/brain/health":
            return self.health()
        if path == "/api/brain/tick/status" and knob("TICK_MODE") == "html":
            return self.raw(200, b"<html>tick?</html>", "text/html")
        if path in GET_ROUTES:
            what, call = GET_ROUTES[path]
            return self.route(what, call)
        if path == "/__standin/alloc":
            mb = int(self.path.partition("mb=")[2] or 1)
            state.setdefault("held", []).append(touched(mb))
            return self.answer(200, {"version": VERSION, "held_mb": mb})
        if path == "/__standin/sleep":
            seconds = float(self.path.partition("s=")[2] or 1)
            time.sleep(seconds)
            return self.answer(200, {"version": VERSION, "slept": seconds})
        self.answer(404, {"error": "not found"})

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        path = self.path.split("?", 1)[0]
        if path in POST_ROUTES:
            return self.route(*POST_ROUTES[path])
        if path == "/__standin/drain":
            return self.answer(200, {"draining_connections": True, "new": drain_connections()})
        self.answer(404, {"error": "not found"})


class Server(ThreadingHTTPServer):
    # server.js listens with Node's default backlog, 511; socketserver's 5 overflows
    # (the SYN is dropped, the client waits 1 s to resend) at a few hundred new
    # connections a second.
    request_queue_size = 511


class DualStackServer(Server):
    """IPv6 and IPv4 (mapped) on one socket, so that ::1 and 127.0.0.1 both reach it."""

    address_family = socket.AF_INET6

    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


def timer(seconds, action):
    t = threading.Timer(seconds, action)
    t.daemon = True
    t.start()


def serve():
    server = None

    def on_signal(signum, frame):
        # The work runs in a thread: a handler that prints or takes a lock can land
        # inside a print or a locked section of the main thread.
        threading.Thread(target=shut_down, args=(signum,), daemon=True).start()

    def shut_down(signum):
        name = "SIGTERM" if signum == signal.SIGTERM else "SIGINT"
        print(f"{name} received, shutting down gracefully...", flush=True)
        with lock:
            during_tick, draining = state["tick_running"], state["draining"]
        graceful = knob("SIGTERM_MODE") == "graceful"
        if graceful:
            state["stopping"] = True
        report(name.lower(), during_tick=during_tick, draining=draining)
        time.sleep(num("SHUTDOWN_DELAY", 0))
        if graceful and server is not None:
            server.shutdown()  # serve_forever returns; in-flight requests finish below
        else:
            os._exit(0)  # server.js: process.exit(0), the HTTP server never closed

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if knob("STANDIN_DRAIN_SIGNAL"):
        signal.signal(
            signal.Signals[knob("STANDIN_DRAIN_SIGNAL")],
            lambda signum, frame: threading.Thread(target=drain_connections, daemon=True).start(),
        )
    if knob("ECHO_ENV"):
        name = knob("ECHO_ENV")
        print(f"{name}={os.environ.get(name, '')}", flush=True)
    if knob("ALLOC_MB_AFTER"):
        timer(
            num("ALLOC_MB_AFTER", 0),
            lambda: state.setdefault("held", []).append(touched(int(num("MEMORY_MB", 0)))),
        )
    else:
        state["held"] = [touched(int(num("MEMORY_MB", 0)))]
    if knob("CRASH_ON_PORT") == str(PORT):
        after = num("CRASH_ON_PORT_AFTER", 0)

        def crash():
            print(f"crashing on purpose: refusing port {PORT}", flush=True)
            time.sleep(0.1)
            os._exit(3)

        if not after:
            crash()
        timer(after, crash)
    if knob("CRASH_AFTER"):
        timer(
            float(knob("CRASH_AFTER")),
            lambda: (print("crashing on purpose", flush=True), os._exit(3)),
        )
    time.sleep(num("BOOT_DELAY", 0))
    try:
        run_migrations()
    except Exception as exc:
        print(f"[FATAL] Migration failed: {exc}", flush=True)
        sys.exit(1)
    if not run_selfcheck():
        print("[FATAL] Self-check failed. Brain will NOT start.", flush=True)
        sys.exit(1)
    try:
        server = DualStackServer(("::", PORT), Handler)
    except OSError:  # a container without IPv6
        server = Server(("0.0.0.0", PORT), Handler)
    server.daemon_threads = True
    print(f"Cecelia Brain running on http://localhost:{PORT}", flush=True)
    threading.Thread(target=init_tick_loop, daemon=True).start()
    server.serve_forever(poll_interval=0.05)
    # SIGTERM_MODE=graceful: requests in flight finish (bounded), as close() lets them.
    deadline = time.time() + 2
    while state["connections"] and time.time() < deadline:
        time.sleep(0.01)
    print("bye", flush=True)
    os._exit(0)


def touched(mb):
    """``mb`` MiB of memory, every page written (so it is really held)."""
    hold = bytearray(mb * 1024 * 1024)
    for i in range(0, len(hold), 4096):
        hold[i] = 1
    return hold


def migrate():
    """`node src/migrate.js`: the migrations alone."""

    def on_sigterm(signum, frame):
        # os.write: the signal may land inside a print (a reentrant buffered write fails).
        os.write(1, b"migration interrupted by SIGTERM: rolled back its transaction\n")
        os._exit(42)

    # Before the first line: whoever reads it may stop the migration at once.
    signal.signal(signal.SIGTERM, on_sigterm)
    print(f"migrating to {VERSION} (schema {SCHEMA})", flush=True)
    if knob("ECHO_ENV"):
        print(f"{knob('ECHO_ENV')}={os.environ.get(knob('ECHO_ENV'), '')}", flush=True)
    time.sleep(num("MIGRATE_SLEEP", 0))
    if knob("MIGRATE_FAIL") == "1":
        print("migration 042 failed: relation already exists", flush=True)
        sys.exit(1)
    applied = run_migrations()
    print(f"Migration complete. Applied: {len(applied)}", flush=True)
    print("migrations done", flush=True)


def selfcheck():
    """`node src/selfcheck.js`: the self-check alone, exit 0 or 1."""
    sys.exit(0 if run_selfcheck() else 1)


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else "serve"
    {"serve": serve, "migrate": migrate, "selfcheck": selfcheck}[command]()
