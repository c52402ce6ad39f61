"""Log output: console reads like a deploy script, JSON is one object per line, secrets blanked."""

from __future__ import annotations

import io
import json

import structlog

from rolling_update._logging import LogFormat, Redactor, configure, register_secrets


def emit(fmt: LogFormat) -> str:
    stream = io.StringIO()
    configure(fmt, stream=stream)
    log = structlog.get_logger()
    with structlog.contextvars.bound_contextvars(deploy_id="d1", step="build"):
        log.info("deploy.step.started", index=1, total=6, title="Building new image")
        log.info("deploy.step.done", index=1, total=6, title="Building new image", seconds=1.25)
        log.info("container.log", container="green", line="listening")
    return stream.getvalue()


def test_console_reads_like_the_prd() -> None:
    """Steps render as "[1/6] Building new image..." and "✅ Building new image (1.2s)"."""
    lines = emit("console").splitlines()
    assert lines[0] == "[1/6] Building new image..."
    assert lines[1] == "✅ Building new image (1.2s)"
    assert lines[2] == "   │ green: listening"


def test_json_is_one_object_per_line_with_context() -> None:
    """--log-format json writes one JSON object per line with timestamp, level, event, ids."""
    records = [json.loads(line) for line in emit("json").splitlines()]
    assert len(records) == 3
    for record in records:
        assert {"timestamp", "level", "event", "deploy_id", "step"} <= set(record)
    assert records[0]["event"] == "deploy.step.started" and records[0]["deploy_id"] == "d1"


def test_registered_secrets_are_blanked_everywhere() -> None:
    """A registered value is replaced by *** in strings, nested dicts and lists."""
    redactor = Redactor()
    redactor.add(["hunter2-secret", "ab"])
    scrubbed = redactor.scrub({"a": "x hunter2-secret y", "b": ["hunter2-secret"], "c": "ab"})
    assert scrubbed == {"a": "x *** y", "b": ["***"], "c": "ab"}


def test_secret_in_a_container_log_line_never_reaches_json_output() -> None:
    """A container printing its own secret env value is logged with the value blanked."""
    register_secrets(["tok-9f8e7d6c"])
    stream = io.StringIO()
    configure("json", stream=stream)
    structlog.get_logger().info("container.log", container="green", line="TOKEN=tok-9f8e7d6c")
    assert "tok-9f8e7d6c" not in stream.getvalue()
    assert json.loads(stream.getvalue())["line"] == "TOKEN=***"
