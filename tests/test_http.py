"""Health and tick answers: judged by body, not only by status; garbage never crashes."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from rolling_update._config.settings import HealthConfig
from rolling_update._watch.probe import Answer, TickStatus, judge_health, parse_tick, probe

RULE = HealthConfig(expect_json={"status": "healthy"}, version_field="version")

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=10,
)


def answer(body: Any, status: int = 200) -> Answer:
    return Answer("http://x", status=status, body=body)


def test_degraded_with_200_is_unhealthy() -> None:
    """The reference service answers 200 when degraded; the body decides."""
    assert judge_health(answer({"status": "degraded", "version": "1"}), RULE) == (
        "status is 'degraded', expected 'healthy'"
    )


def test_healthy_body_with_expected_version_passes() -> None:
    """Status 200, the JSON field match and the expected version make a healthy answer."""
    assert judge_health(answer({"status": "healthy", "version": "2.0.0"}), RULE, "2.0.0") is None


def test_wrong_version_is_unhealthy() -> None:
    """Serving the old version counts as a failed verification."""
    verdict = judge_health(answer({"status": "healthy", "version": "1.0.0"}), RULE, "2.0.0")
    assert verdict == "version is '1.0.0', expected '2.0.0'"


def test_bool_does_not_pass_for_int() -> None:
    """A rule expecting 1 is not met by true (bool is an int in Python)."""
    rule = HealthConfig(expect_json={"db.ok": 1})
    assert judge_health(answer({"db": {"ok": True}}), rule) is not None
    assert judge_health(answer({"db": {"ok": 1}}), rule) is None


def test_tick_status_parses_the_reference_shape() -> None:
    """tick_running and a zoned next_tick are read from the reference service's answer."""
    status = parse_tick(
        answer(
            {
                "tick_running": True,
                "next_tick": "2026-01-01T00:00:00Z",
                "loop_running": True,
                "enabled": True,
            }
        )
    )
    assert status.tick_running is True and status.next_tick is not None


@pytest.mark.parametrize(
    "body", [{}, {"tick_running": "no"}, [], "x", {"tick_running": False, "next_tick": "soon"}]
)
def test_unusable_tick_status_is_a_value_error(body: Any) -> None:
    """Missing or mistyped fields are reported as ValueError saying why."""
    with pytest.raises(ValueError, match=r"tick_running|next_tick"):
        parse_tick(answer(body))


# Health and tick answers of the reference shape, some of them wrong in a field or another.
health_bodies = st.fixed_dictionaries(
    {
        "status": st.sampled_from(["healthy", "degraded"]) | st.booleans(),
        "version": st.sampled_from(["1", "2"]) | st.integers(0, 2),
    },
    optional={"uptime": st.integers()},
)
tick_bodies = st.fixed_dictionaries(
    {"tick_running": st.booleans() | st.none() | st.integers(0, 1)},
    optional={
        "next_tick": st.none()
        | st.text(max_size=8)
        | st.datetimes(timezones=st.none() | st.just(UTC)).map(datetime.isoformat),
        "loop_running": st.none() | st.booleans() | st.integers(0, 1),
    },
)


def tick_or_error(got: Answer) -> TickStatus | ValueError:
    try:
        return parse_tick(got)
    except ValueError as exc:
        return exc


@settings(max_examples=500)
@given(json_values | health_bodies | tick_bodies, st.just(200) | st.integers(100, 599))
def test_parsers_never_crash_on_any_json(body: Any, status: int) -> None:
    """Any JSON: no verdict exactly when healthy; a tick status true to it, or a ValueError."""
    verdict = judge_health(answer(body, status), RULE, "1")
    fields = body if isinstance(body, dict) else {}
    healthy = (
        status == 200
        and isinstance(body, dict)
        and fields.get("status") == "healthy"
        and fields.get("version") == "1"
    )
    assert (verdict is None) == healthy
    assert verdict is None or (isinstance(verdict, str) and verdict)
    usable = status == 200 and isinstance(fields.get("tick_running"), bool)
    raw = fields.get("next_tick")
    timed = isinstance(raw, str) and raw != ""
    tick = tick_or_error(answer(body, status))
    if isinstance(tick, ValueError):
        # A usable body fails only on the text of its next_tick.
        assert not usable or (timed and "next_tick" in str(tick)), tick
    else:
        assert usable and tick.tick_running is fields["tick_running"]
        loop = fields.get("loop_running")
        assert tick.loop_running == (loop if isinstance(loop, bool) else None)
        assert (tick.next_tick is not None) == timed
        assert tick.next_tick is None or tick.next_tick.utcoffset() is not None


@pytest.fixture
async def hostile_server() -> Any:
    async def huge(request: web.Request) -> web.Response:
        return web.Response(body=b"[" + b"1," * 100_000 + b"1]", content_type="application/json")

    async def not_json(request: web.Request) -> web.Response:
        return web.Response(text="<html>oops</html>")

    async def slow(request: web.Request) -> web.Response:
        import anyio

        await anyio.sleep(1)
        return web.json_response({})

    app = web.Application()
    app.router.add_get("/huge", huge)
    app.router.add_get("/html", not_json)
    app.router.add_get("/slow", slow)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


@pytest.mark.anyio
async def test_probe_reports_hostile_answers_without_raising(hostile_server: str) -> None:
    """A huge body, HTML, a slow server and a closed port each become an Answer with an error."""
    rule = HealthConfig(request_timeout=0.3, max_body_bytes=1024)
    async with aiohttp.ClientSession() as session:
        huge = await probe(session, f"{hostile_server}/huge", rule)
        html = await probe(session, f"{hostile_server}/html", rule)
        slow = await probe(session, f"{hostile_server}/slow", rule)
        closed = await probe(session, "http://127.0.0.1:1/", rule)
    assert huge.error == "HTTP 200 body larger than 1024 bytes"
    assert html.error == "HTTP 200 body is not JSON"
    assert slow.error == "no answer within 0.3s"
    assert closed.error is not None and "Connect" in closed.error
    assert json.loads(json.dumps(huge.describe()))


@pytest.mark.anyio
async def test_a_body_sent_in_two_writes_is_read_whole() -> None:
    """Regression: a chunked JSON answer written in two parts, 50 ms apart, is judged whole."""
    import anyio
    from anyio.abc import SocketStream

    async def serve(stream: SocketStream) -> None:
        async with stream:
            await stream.receive()
            head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            await stream.send(head + b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
            for part in (b'{"status": "hea', b'lthy", "version": "2"}'):
                await stream.send(f"{len(part):x}\r\n".encode() + part + b"\r\n")
                await anyio.sleep(0.05)
            await stream.send(b"0\r\n\r\n")

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, serve)
        async with aiohttp.ClientSession() as session:
            got = await probe(session, f"http://127.0.0.1:{port}/health", RULE)
        tg.cancel_scope.cancel()
    assert got.error is None and got.body == {"status": "healthy", "version": "2"}


def test_blue_found_degraded_is_restored_when_degraded_again() -> None:
    """The baseline of a degraded blue accepts the same status back, or better; not worse."""
    from rolling_update._watch.probe import HealthBaseline

    rule = HealthConfig(expect_json={"status": "healthy"}, version_field=None)
    degraded = HealthBaseline.of(answer({"status": "degraded"}), rule)
    assert not degraded.healthy
    assert degraded.judge(answer({"status": "degraded", "uptime": 1}), rule) is None
    assert degraded.judge(answer({"status": "healthy"}), rule) is None
    assert degraded.judge(answer({"status": "error"}, status=500), rule) == (
        "HTTP 500, and it answered HTTP 200 before the deploy"
    )
    assert degraded.judge(answer({"status": "starting"}), rule) == (
        "status is 'starting'; it was 'degraded' before the deploy"
    )
    healthy = HealthBaseline.of(answer({"status": "healthy"}), rule)
    assert healthy.judge(answer({"status": "degraded"}), rule) is not None
    silent = HealthBaseline.of(Answer("http://x", error="ConnectionRefused"), rule)
    assert silent.judge(Answer("http://x", error="ConnectionRefused"), rule) is None


def test_an_overdue_tick_is_imminent_until_it_is_stale() -> None:
    """A tick overdue by less than tick.overdue may start any moment; past it, it is stale."""
    from datetime import UTC, datetime, timedelta

    from rolling_update._watch.probe import TickStatus, tick_state

    now = datetime.now(UTC)
    for late in (0.5, 1.5, 29):
        assert (
            tick_state(TickStatus(False, now - timedelta(seconds=late)), now, 5, 30) == "imminent"
        )
    for late in (31, 3600 * 5):
        assert tick_state(TickStatus(False, now - timedelta(seconds=late)), now, 5, 30) == "stale"
    assert tick_state(TickStatus(True, now - timedelta(seconds=3600)), now, 5, 30) == "running"
    assert tick_state(TickStatus(False, now + timedelta(seconds=60)), now, 5, 30) == "idle"
    assert tick_state(TickStatus(True, None), now, 5, 30) == "running"
    # A loop that says it is not running starts no tick, whatever next_tick says.
    stale = TickStatus(False, now - timedelta(seconds=10), loop_running=False)
    assert tick_state(stale, now, 5, 30) == "idle"
