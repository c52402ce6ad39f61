"""Paced HTTP GETs from many clients at once, each request's outcome and cause recorded.

    python3 load.py SPEC

The handoff bench's clients. Standard library only: the bench runs it on the host, and
in a container of the test base image for a client on the default bridge. SPEC (JSON)::

    {"seconds": 120, "lanes": [{"name": "new v4", "host": "127.0.0.1", "port": 8080,
      "count": 4, "interval": 0.02, "keep_alive": false, "retry": false,
      "path": "/", "timeout": 1.0}, ...]}

Each of a lane's ``count`` clients starts a GET every ``interval`` s, or as soon as its
previous one ended when that took longer (a client never has two in flight, and never
makes up for a missed start): the rate is bounded, and the rate reached is what the
server allows. ``keep_alive`` clients reuse one connection until it fails or the server
closes it; the others open one per request (``Connection: close``). A ``retry`` client
sends a GET that failed on a reused connection once more on a new one, as common
clients do for idempotent requests (urllib3, aiohttp). A request fails when it is not
answered 200 within ``timeout`` s; its cause is recorded: what went wrong, at which
phase (connect, send, status, body), on a new or reused connection.

Runs until SIGTERM, at most ``seconds``, then prints one JSON line: ``{"lanes": [name,
...], "samples": [[lane, at, seconds, ok, why, version, port], ...]}``, ``at`` the start in
Unix time (comparable with the deploy's log), ``why`` the failure's cause (for a request
that a retry saved too), else null, ``version`` and ``port`` the ``"version"`` and
``"port"`` of the answer's JSON body (the stand-in's, failed answers' included: which
release answered, and which container: a replica's production or its green), else null.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any

Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]
Answer = tuple[str | None, int | None]
"""What an answer's body names: the release (``version``) and the container (``port``)."""
NO_ANSWER: Answer = (None, None)


@dataclass
class Lane:
    name: str
    host: str
    port: int
    count: int
    interval: float
    keep_alive: bool
    retry: bool
    path: str
    timeout: float


@dataclass
class Client:
    lane: Lane
    index: int
    stream: Stream | None = None
    samples: list[list[Any]] = field(default_factory=list)

    def request(self) -> bytes:
        host = f"[{self.lane.host}]" if ":" in self.lane.host else self.lane.host
        close = "" if self.lane.keep_alive else "Connection: close\r\n"
        head = f"GET {self.lane.path} HTTP/1.1\r\nHost: {host}:{self.lane.port}\r\n{close}\r\n"
        return head.encode()

    def close(self) -> None:
        if self.stream is not None:
            self.stream[1].close()
        self.stream = None

    async def attempt(self) -> tuple[str | None, Answer]:
        """One GET: ``None`` when answered 200, else what went wrong; the version and port
        that answered, if its body names them."""
        reused = self.stream is not None
        phase = "connect"
        try:
            async with asyncio.timeout(self.lane.timeout):
                if self.stream is None:
                    self.stream = await asyncio.open_connection(self.lane.host, self.lane.port)
                reader, writer = self.stream
                phase = "send"
                writer.write(self.request())
                await writer.drain()
                phase = "status"
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").lower()
                phase = "body"
                length = 0
                for line in head.split("\r\n")[1:]:
                    name, _, value = line.partition(":")
                    if name == "content-length":
                        length = int(value)
                body = await reader.readexactly(length)
            status = head.split(" ", 2)[1]
            if not self.lane.keep_alive or "\r\nconnection: close" in head:
                self.close()
            answer = answered_by(body)
            if status == "200":
                return None, answer
            self.close()
            return f"HTTP {status}", answer
        except TimeoutError:
            cause = f"no answer within {self.lane.timeout:g}s"
        except asyncio.IncompleteReadError:
            cause = "closed by the peer"
        except (OSError, asyncio.LimitOverrunError, ValueError, IndexError) as exc:
            cause = type(exc).__name__
        self.close()
        return f"{cause} at {phase} ({'reused' if reused else 'new'} connection)", NO_ANSWER

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        # Spread the clients' starts over one interval, so that they do not move in step.
        next_at = loop.time() + random.uniform(0, self.lane.interval)
        while not stop.is_set():
            delay = next_at - loop.time()
            if delay > 0:
                try:
                    async with asyncio.timeout(delay):
                        await stop.wait()
                    break
                except TimeoutError:
                    pass
            at, began = time.time(), loop.time()
            reused = self.stream is not None
            why, answer = await self.attempt()
            ok = why is None
            if not ok and reused and self.lane.retry:
                again, answer = await self.attempt()
                ok = again is None
                why = f"{why}; retry: {again or 'ok'}"
            took = round(loop.time() - began, 5)
            self.samples.append([self.index, round(at, 4), took, ok, why, *answer])
            next_at = max(next_at + self.lane.interval, loop.time())
        self.close()


def answered_by(body: bytes) -> Answer:
    try:
        found = json.loads(body)
    except ValueError:
        return NO_ANSWER
    if not isinstance(found, dict):
        return NO_ANSWER
    version, port = found.get("version"), found.get("port")
    return (
        version if isinstance(version, str) else None,
        port if isinstance(port, int) else None,
    )


async def main(spec: dict[str, Any]) -> dict[str, Any]:
    lanes = [Lane(**lane) for lane in spec["lanes"]]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    clients = [Client(lane, i) for i, lane in enumerate(lanes) for _ in range(lane.count)]
    # Bounded by ``seconds``; each request by its own timeout.
    loop.call_later(float(spec["seconds"]), stop.set)
    await asyncio.gather(*(client.run(stop) for client in clients))
    return {
        "lanes": [lane.name for lane in lanes],
        "samples": [sample for client in clients for sample in client.samples],
    }


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(json.loads(sys.argv[1])))), flush=True)
