"""Log output: console reads like a deploy script, JSON is one object per line, secrets blanked."""

from __future__ import annotations

import io
import json
from pathlib import Path

import structlog

from rolling_update._observe.logs import LogFormat, Redactor, configure, register_secrets


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


def test_console_says_which_host_each_line_is_about() -> None:
    """With several hosts each console line starts with [HOST], and a rollout ends in one line."""
    stream = io.StringIO()
    configure("console", stream=stream)
    log = structlog.get_logger()
    with structlog.contextvars.bound_contextvars(host="hk"):
        log.info("deploy.step.started", index=2, total=9, title="Waiting for green")
        log.info("image.copying", image="brain:2", mb=12.5, mb_per_s=6.2)
        log.info("rollout.host", result="rolled-back", reason="green died")
    log.info("rollout.summary", hosts=[{"host": "us", "result": "deployed"}])
    assert stream.getvalue().splitlines() == [
        "[hk] [2/9] Waiting for green...",
        "[hk]    ⇢ image brain:2: 12.5 MB sent (6.2 MB/s)",
        "[hk] ❌ rolled-back: green died",
        "🏁 us: deployed",
    ]


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


def test_a_traceback_from_log_exception_is_blanked_too() -> None:
    """Regression: exc_info is formatted after the redactor ran; the rendered line is scrubbed."""
    register_secrets(["s3cr3t-in-traceback"])
    for fmt in ("json", "console"):
        stream = io.StringIO()
        configure(fmt, stream=stream)
        try:
            raise ValueError("cannot connect with s3cr3t-in-traceback")
        except ValueError:
            structlog.get_logger().exception("deploy.crashed")
        assert "cannot connect with ***" in stream.getvalue()
        assert "s3cr3t-in-traceback" not in stream.getvalue()


def test_secrets_are_chosen_by_key_and_names_are_never_blanked() -> None:
    """DB_PASSWORD, apiToken, [secrets] keys and URL userinfo are secret; DB_NAME is not."""
    from rolling_update._observe.logs import looks_secret, secret_values

    env = {
        "DB_NAME": "cecelia",
        "DB_USER": "cecelia",
        "DB_PASSWORD": "pw-123456",
        "apiToken": "tok-123456",
        "SIGNING": "sig-123456",
        "DATABASE_URL": "postgres://cecelia:url-pass-99@db:5432/cecelia",
        "STRIPE_KEY_PUBLIC": "pk-123456",
        "TZ": "Asia/Shanghai",
    }
    found = secret_values(env, extra=["SIGNING"], public=["STRIPE_KEY_PUBLIC"])
    assert sorted(found) == sorted(
        ["pw-123456", "tok-123456", "sig-123456", "url-pass-99", "cecelia:url-pass-99"]
    )
    assert not looks_secret("DB_NAME") and not looks_secret("MONKEY_COUNT")
    assert looks_secret("GITHUB_TOKEN") and looks_secret("aws_secret_access_key")


def test_a_password_equal_to_an_ordinary_value_is_not_blanked_but_warned() -> None:
    """DB_PASSWORD=cecelia beside DB_USER=cecelia: not registered (it would blank names)."""
    from structlog.testing import capture_logs

    from rolling_update._observe.logs import secret_values

    env = {"DB_USER": "cecelia", "DB_PASSWORD": "cecelia", "API_KEY": "k-123456"}
    with capture_logs() as logs:
        assert secret_values(env) == ["k-123456"]
    warned = [e for e in logs if e["event"] == "secrets.not_secret"]
    assert [(e["key"], e["same_as"]) for e in warned] == [("DB_PASSWORD", "DB_USER")]
    assert all("cecelia" not in str(e) for e in warned)


def test_build_args_that_look_secret_are_registered(tmp_path: Path) -> None:
    """Regression: a secret build arg (NPM_TOKEN) is blanked; an ordinary one (BASE) is not."""
    from rolling_update import prepare
    from rolling_update._config.settings import parse_config
    from rolling_update._observe.logs import redactor

    (tmp_path / "p.json").write_text('{"version": "1.0.0"}')
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    cfg = parse_config(
        {
            "service": {"name": "app", "green_name": "app-g", "port": 1, "green_port": 2},
            "image": {"name": "app:{version}", "version_file": "p.json"},
            "build": {"context": ".", "args": {"NPM_TOKEN": "npm-tok-777", "BASE": "debian:12"}},
        },
        base_dir=tmp_path,
        environ={},
        source="t.toml",
    )
    prepare(cfg)
    assert redactor.scrub("npm-tok-777 on debian:12") == "*** on debian:12"


def test_build_and_migration_lines_show_how_long_they_have_run() -> None:
    """Console progress: a build line with elapsed reads "   │ [ 12.3s] Step 3/7 : RUN make"."""
    stream = io.StringIO()
    configure("console", stream=stream)
    structlog.get_logger().info("build.log", line="Step 3/7 : RUN make", elapsed=12.3)
    structlog.get_logger().info("container.log", container="m", line="001 done", elapsed=0.4)
    assert stream.getvalue().splitlines() == [
        "   │ [ 12.3s] Step 3/7 : RUN make",
        "   │ [  0.4s] m: 001 done",
    ]


def test_a_wait_says_what_it_waits_for_in_a_plain_line_and_a_live_footer() -> None:
    """Every wait logs wait.started; on a terminal the footer shows it with the time left."""
    import io

    from rich.console import Console
    from structlog.testing import capture_logs

    from rolling_update._observe.progress import footer, use_terminal, waiting

    with capture_logs() as logs, waiting("green to be healthy", 60) as wait:
        assert footer.waits == [wait] and footer.live is None
    assert [(e["event"], e["what"], e["limit_s"]) for e in logs] == [
        ("wait.started", "green to be healthy", 60)
    ]
    screen = io.StringIO()
    use_terminal(Console(file=screen, force_terminal=True, width=80))
    try:
        with waiting("blue's tick boundary", 30) as wait:
            wait.detail = "idle"
            assert footer.live is not None
            footer.live.refresh()
        assert footer.live is None and footer.waits == []
    finally:
        use_terminal(None)
    drawn = screen.getvalue()
    assert "⏳ blue's tick boundary: " in drawn and " s left (idle)" in drawn
