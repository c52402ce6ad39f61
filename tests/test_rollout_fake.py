"""A whole two-host rollout on in-memory engines: canary, image copy, handoff, rollback-all.

The engines are FakeEngines; HTTP is real, on loopback. Each host's
stand-in answers on a port while a running container of its engine was given
that port (``PORT``), and keeps the nftables tables its remote handoff's nft
helper writes (one-off runs on the fake engine), following their redirects as
the kernel would. The same rollout on real engines is ``test_hosts_e2e.py``.
"""

from __future__ import annotations

import re
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from structlog.testing import capture_logs

from rolling_update import Config, ContainerSpec, EngineError, RolloutFailed, rollout
from rolling_update._config.settings import bypass_of, parse_config
from rolling_update._deploy.outcome import Outcome
from rolling_update._engine.model import LABEL_ROLE, LABEL_VERSION
from rolling_update.testing import FakeContainer, FakeEngine

pytestmark = pytest.mark.anyio


# The config every rollout here shares: quick probes, no tick, no drain, a short soak.
QUICK: dict[str, Any] = {
    "health": {"path": "/health", "interval": 0.05, "attempts": 4},
    "tick": {"enabled": False},
    "switch": {"drain": 0},
    "verify": {"timeout": 2, "soak": 0.1, "soak_interval": 0.05},
    "state": {"dir": "state"},
}


class ServingEngine(FakeEngine):
    """A FakeEngine whose host answers HTTP for its running containers and keeps the
    nftables tables its nft helper runs write; ``sick`` versions answer 503."""

    def __init__(self, images: set[str], registry: dict[str, str]) -> None:
        super().__init__(images, registry=registry)
        self.tables: dict[str, str] = {}
        self.scripts: list[str] = []
        """Every nft script the helper applied (a redirect, or a table removed), in order."""
        self.sick: set[str] = set()
        self.run_answer = self._nft
        self._sites: dict[int, web.TCPSite] = {}
        app = web.Application()
        app.router.add_get("/health", self._health)
        self._runner = web.AppRunner(app)

    def _nft(self, spec: ContainerSpec) -> tuple[int, str]:
        args = list(spec.command or [])
        if "conntrack" in (spec.base.get("Entrypoint") or []):
            # The host's conntrack, finding no connection reset: it exits 1 on none.
            return 1, "conntrack v1.4.7 (conntrack-tools): 0 flow entries have been deleted.\n"
        if args == ["list", "tables"]:
            return 0, "".join(f"table inet {t}\n" for t in self.tables)
        if args[:3] == ["list", "table", "inet"]:
            found = self.tables.get(args[3])
            return (0, found) if found is not None else (1, "Error: No such file or directory")
        # EngineFirewall's one transaction: declare the table, delete it, then the new one.
        (script,) = args
        table = script.split("\n", 1)[0].removeprefix("table inet ")
        ruleset = script.split("\n", 2)[2]
        self.scripts.append(script)
        if ruleset.strip():
            self.tables[table] = ruleset
        else:
            self.tables.pop(table, None)
        return 0, ""

    def _redirects(self) -> dict[int, int]:
        return {
            int(m.group(1)): int(m.group(2))
            for text in self.tables.values()
            for m in re.finditer(r"dport (\d+) redirect to :(\d+)", text)
        }

    def _serving(self, port: int) -> FakeContainer | None:
        found = [
            c for c in self.containers.values() if c.running and c.spec.env.get("PORT") == str(port)
        ]
        return max(found, key=lambda c: c.created) if found else None

    async def _health(self, request: web.Request) -> web.Response:
        port = request.transport.get_extra_info("sockname")[1] if request.transport else 0
        # A connection is translated once, by the first rule it meets.
        container = self._serving(self._redirects().get(port, port))
        if container is None:
            return web.Response(status=502)
        version = container.spec.image.rpartition(":")[2]
        if version in self.sick:
            return web.json_response({"status": "starting", "version": version}, status=503)
        return web.json_response({"status": "healthy", "version": version})

    async def serve(self) -> None:
        """Listen where a running container or a redirect makes a port answer; only there."""
        if self._runner.server is None:
            await self._runner.setup()
        wanted = set(self._redirects())
        wanted |= {int(c.spec.env["PORT"]) for c in self.containers.values() if c.running}
        for port in wanted - set(self._sites):
            site = web.TCPSite(self._runner, "127.0.0.1", port)
            await site.start()
            self._sites[port] = site
        for port in set(self._sites) - wanted:
            await self._sites.pop(port).stop()

    async def close(self) -> None:
        await self._runner.cleanup()

    async def start(self, container_id: str) -> None:
        await super().start(container_id)
        await self.serve()

    async def stop(self, container_id: str, *, grace: int) -> None:
        await super().stop(container_id, grace=grace)
        await self.serve()

    async def remove(self, container_id: str) -> None:
        await super().remove(container_id)
        await self.serve()

    async def run_once(self, spec: ContainerSpec, *, limit: float = 15.0) -> tuple[int, str]:
        answer = await super().run_once(spec, limit=limit)
        await self.serve()
        return answer


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports (held together while they are picked)."""
    held = [socket.socket() for _ in range(count)]
    try:
        for s in held:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in held]
    finally:
        for s in held:
            s.close()


class Hosts:
    """Two hosts, ``a`` (the canary, which has the new image) and ``b``, blue v1 on both;
    ``rollout`` is the config's rollout section, ``repo`` the image's repository."""

    def __init__(self, tmp_path: Path, rollout: dict[str, str], repo: str = "app") -> None:
        self.registry: dict[str, str] = {}
        self.image = f"{repo}:2"
        self.a = ServingEngine({f"{repo}:1", self.image}, self.registry)
        self.b = ServingEngine({f"{repo}:1"}, self.registry)
        ports = free_ports(6)
        self.port = {"a": ports[0], "b": ports[1]}
        self.green_port = {"a": ports[2], "b": ports[3]}
        self.blue = {
            name: engine.add(
                ContainerSpec(name="app", image=f"{repo}:1", env={"PORT": str(self.port[name])})
            )
            for name, engine in self.engines.items()
        }
        (tmp_path / "version.json").write_text('{"version": "2"}')
        data: dict[str, Any] = {
            "service": {"name": "app", "green_name": "app-green", "port": 1, "green_port": 2},
            "image": {"name": repo + ":{version}", "version_file": "version.json"},
            **QUICK,
            "rollout": rollout,
            "hosts": [
                {
                    # tcp://: a remote host, so the handoff runs its nft helper on the engine.
                    "name": name,
                    "engine": f"tcp://{name}.invalid:2376",
                    "address": "127.0.0.1",
                    "port": self.port[name],
                    "green_port": self.green_port[name],
                    "bypass_port": bypass,
                }
                for name, bypass in (("a", ports[4]), ("b", ports[5]))
            ],
        }
        self.cfg: Config = parse_config(data, base_dir=tmp_path, environ={}, source="t.toml")

    @property
    def engines(self) -> dict[str, ServingEngine]:
        return {"a": self.a, "b": self.b}


@pytest.fixture
async def hosts(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Hosts]:
    """The two hosts (``Hosts``' arguments as the test's parameter), blue answering on each."""
    made = Hosts(tmp_path, **getattr(request, "param", {"rollout": {}}))
    for engine in made.engines.values():
        await engine.serve()
    yield made
    for engine in made.engines.values():
        await engine.close()


@pytest.fixture
async def http() -> AsyncIterator[tuple[aiohttp.ClientSession, list[str]]]:
    """A client of the test's own, given to the rollout; the URLs it was asked for."""
    asked: list[str] = []

    async def on_start(_: Any, __: Any, params: aiohttp.TraceRequestStartParams) -> None:
        asked.append(str(params.url))

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(on_start)
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector, trace_configs=[trace]) as client:
        yield client, asked


def production(engine: FakeEngine) -> FakeContainer:
    """The one container left on ``engine``, which must be its running production."""
    assert engine.names() == ["app"], engine.names()
    (container,) = engine.containers.values()
    assert container.running
    return container


async def test_two_hosts_end_on_the_new_version(
    hosts: Hosts, http: tuple[aiohttp.ClientSession, list[str]]
) -> None:
    """Both hosts end with production on v2, green and blue gone, the image copied to b."""
    client, asked = http
    result = await rollout(hosts.cfg, engines=hosts.engines, http=client)
    assert [(o.host, o.result) for o in result.outcomes] == [
        ("a", Outcome.DEPLOYED),
        ("b", Outcome.DEPLOYED),
    ]
    for name, engine in hosts.engines.items():
        new = production(engine)
        assert new.spec.image == "app:2" and new.spec.labels[LABEL_ROLE] == "production"
        assert new.spec.labels[LABEL_VERSION] == "2" and new.id != hosts.blue[name].id
        # The remote handoff ran on the engine: port to green, then back, no table left.
        redirect = f"dport {hosts.port[name]} redirect to :{hosts.green_port[name]}"
        assert [redirect in s for s in engine.scripts] == [True, False]
        assert engine.tables == {}
    # Streamed from the canary (save into load): the same image on b.
    assert "export app:2" in hosts.a.calls and "load app:2" in hosts.b.calls
    copied = await hosts.b.image_id("app:2")
    assert copied is not None and copied == await hosts.a.image_id("app:2")
    assert result.outcomes[1].measured["copied_bytes"] > 0
    # The deploys probed through the client given (green's port on each host), left open.
    assert not client.closed
    assert all(f":{hosts.green_port[n]}/health" in " ".join(asked) for n in "ab")


@pytest.mark.parametrize(
    "hosts", [{"rollout": {"on_failure": "rollback-all"}}], indirect=True, ids=["rollback-all"]
)
async def test_a_failing_second_host_takes_the_canary_back(
    hosts: Hosts, http: tuple[aiohttp.ClientSession, list[str]]
) -> None:
    """v2 never healthy on b: b rolls itself back, rollback-all puts v1 back on the canary."""
    hosts.b.sick.add("2")
    with pytest.raises(RolloutFailed) as failed:
        await rollout(hosts.cfg, engines=hosts.engines, http=http[0])
    assert [(o.host, o.result) for o in failed.value.outcomes] == [
        ("a", Outcome.REVERTED),
        ("b", Outcome.ROLLED_BACK),
    ]
    reverted = production(hosts.a)
    assert reverted.spec.image == "app:1" and reverted.spec.labels[LABEL_VERSION] == "1"
    # b kept its own blue throughout: never stopped, never replaced.
    assert production(hosts.b).id == hosts.blue["b"].id
    assert "load app:2" in hosts.b.calls
    assert hosts.a.tables == hosts.b.tables == {}


async def test_a_host_whose_engine_refuses_the_nft_helper_is_rolled_back_untouched(
    hosts: Hosts, http: tuple[aiohttp.ClientSession, list[str]]
) -> None:
    """b's engine refuses to make any helper container from its redirect on (its disk full):
    the redirect never ran, so b is rolled back without the undo that would need one
    (rolled-back, not rollback-incomplete), its blue untouched and no table left."""
    refused = EngineError(
        "create", "rolling-update-nft-0", 500, "mkdir /x-init: no space left on device"
    )
    nft = hosts.b.run_answer
    tried: list[str] = []

    def answer(spec: ContainerSpec) -> tuple[int, str]:
        if tried or "redirect to" in " ".join(spec.command or []):
            tried.append(" ".join(spec.command or []))
            raise refused
        return nft(spec)

    hosts.b.run_answer = answer
    with pytest.raises(RolloutFailed) as failed:
        await rollout(hosts.cfg, engines=hosts.engines, http=http[0])
    (a, b) = failed.value.outcomes
    assert (a.result, b.result) == (Outcome.DEPLOYED, Outcome.ROLLED_BACK), b.reason
    assert b.reason is not None and "the nft helper could not run" in b.reason, b.reason
    assert production(hosts.b).id == hosts.blue["b"].id
    # The one helper tried was the redirect's: no undo asked for another.
    assert len(tried) == 1 and "redirect to" in tried[0], tried
    assert hosts.b.tables == {} and hosts.b.scripts == []


async def test_running_a_stopped_rollout_again_finishes_the_hosts_left_behind(
    hosts: Hosts, http: tuple[aiohttp.ClientSession, list[str]]
) -> None:
    """A rollout that stopped at b (v2 sick there) is finished by running it again once b is
    fixed: the canary, already on v2, is left as it is (not rebuilt, not switched) and is
    still where b's image comes from; a third run, every host on v2, refuses."""
    hosts.b.sick.add("2")
    with pytest.raises(RolloutFailed):
        await rollout(hosts.cfg, engines=hosts.engines, http=http[0])
    canary = production(hosts.a)
    assert canary.spec.image == "app:2" and production(hosts.b).id == hosts.blue["b"].id
    hosts.b.sick.clear()
    await hosts.b.remove_image("app:2")
    calls = len(hosts.a.calls)
    result = await rollout(hosts.cfg, engines=hosts.engines, http=http[0])
    assert [(o.host, o.result) for o in result.outcomes] == [
        ("a", Outcome.DEPLOYED),
        ("b", Outcome.DEPLOYED),
    ]
    assert result.outcomes[0].reason == "already runs 2: left as it is"
    assert production(hosts.a).id == canary.id
    assert not [c for c in hosts.a.calls[calls:] if c.startswith(("build", "create", "stop"))]
    assert "load app:2" in hosts.b.calls and production(hosts.b).spec.image == "app:2"
    with pytest.raises(RolloutFailed) as again:
        await rollout(hosts.cfg, engines=hosts.engines, http=http[0])
    assert [o.result for o in again.value.outcomes] == [Outcome.REFUSED, Outcome.NOT_STARTED]


@pytest.mark.parametrize(
    "hosts",
    [{"rollout": {"distribute": "registry"}, "repo": "registry.invalid:5000/app"}],
    indirect=True,
    ids=["registry"],
)
async def test_with_a_registry_the_canary_pushes_and_the_next_host_pulls(
    hosts: Hosts, http: tuple[aiohttp.ClientSession, list[str]], tmp_path: Path
) -> None:
    """distribute = registry: the canary pushes the image once, b pulls that same image."""
    environ = {"DOCKER_CONFIG": str(tmp_path / "no-docker-config")}  # anonymous
    result = await rollout(hosts.cfg, environ=environ, engines=hosts.engines, http=http[0])
    assert result.outcomes[1].measured["pulled"] is True
    assert hosts.a.calls.count(f"push {hosts.image}") == 1 and hosts.image in hosts.registry
    assert f"pull {hosts.image}" in hosts.b.calls and "load" not in " ".join(hosts.b.calls)
    assert await hosts.b.image_id(hosts.image) == await hosts.a.image_id(hosts.image)
    assert production(hosts.b).spec.image == hosts.image


def free_with_bypasses() -> tuple[list[int], list[int]]:
    """Two ports and two green ports, distinct and free, the ports' bypass ports free too
    (the stand-in listens there while a handoff's redirect is in place)."""
    for _ in range(100):
        ports = free_ports(4)
        bypasses = [bypass_of(p) for p in ports[:2]]
        if set(bypasses) & set(ports):
            continue
        try:
            for bypass in bypasses:
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", bypass))
        except OSError:
            continue
        return ports[:2], ports[2:]
    raise AssertionError("no free ports with free bypass ports in 100 tries")


async def test_replicas_on_the_canarys_engine_push_nothing_to_the_registry(
    tmp_path: Path, http: tuple[aiohttp.ClientSession, list[str]]
) -> None:
    """distribute = registry, both replicas on one engine: nothing is pushed, pulled or
    copied (the engine built the image), said once; both replicas end on v2."""
    repo = "registry.invalid:5000/app"
    engine = ServingEngine({f"{repo}:1", f"{repo}:2"}, {})
    ports, greens = free_with_bypasses()
    replicas = [
        {"name": f"app-{n}", "port": port, "green_port": green}
        for n, port, green in zip("ab", ports, greens, strict=True)
    ]
    for n, port in zip("ab", ports, strict=True):
        engine.add(ContainerSpec(name=f"app-{n}", image=f"{repo}:1", env={"PORT": str(port)}))
    (tmp_path / "version.json").write_text('{"version": "2"}')
    data: dict[str, Any] = {
        "service": {
            "name": "app",
            "green_name": "app-green",
            "port": 1,
            "green_port": 2,
            "replica": replicas,
        },
        "image": {"name": repo + ":{version}", "version_file": "version.json"},
        **QUICK,
        "rollout": {"distribute": "registry"},
        "hosts": [{"name": "a", "engine": "tcp://a.invalid:2376", "address": "127.0.0.1"}],
    }
    cfg = parse_config(data, base_dir=tmp_path, environ={}, source="t.toml")
    environ = {"DOCKER_CONFIG": str(tmp_path / "no-docker-config")}
    await engine.serve()
    try:
        with capture_logs() as logs:
            result = await rollout(cfg, environ=environ, engines={"a": engine}, http=http[0])
    finally:
        await engine.close()
    assert [(o.host, o.result) for o in result.outcomes] == [
        ("a/app-a", Outcome.DEPLOYED),
        ("a/app-b", Outcome.DEPLOYED),
    ]
    moved = [c for c in engine.calls if c.split()[0] in ("push", "pull", "export", "load")]
    assert moved == []
    assert [e["event"] for e in logs].count("image.push.skipped") == 1
    assert all(c.spec.image == f"{repo}:2" for c in engine.containers.values())
