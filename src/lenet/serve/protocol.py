"""uvicorn's HTTP/1.1 protocol (h11) with the deadlines uvicorn lacks: slow clients cannot hold the server.

    config = uvicorn.Config(app, http=guarded_h11(ConnectionLimits()))   # what server.py does

uvicorn bounds neither the time a client may take to send its request head nor its body:
its keep-alive timer is reset by every byte, so a connection sending a byte a second stays
open for ever (slowloris), and a few hundred of them fill any connection limit (issue 11:
100 made every request a 503). Here each connection has one deadline at a time, for what
the server is waiting for from its client:

    head   the request line and headers, from connecting or from the previous answer
    body   the whole body, from the end of the head
    drain  the rest of a body after an early answer (a 413): read and thrown away, up to
           a bound, so that the client can read the answer instead of a "connection reset"

When a deadline passes the connection is closed, with a 408 if a request was begun and not
answered. No deadline runs while the app works on a complete request. With MAX_CONNECTIONS
open, a new connection closes the one that has waited longest for its client: draining
first, then a head begun and not finished (a trickle), then an idle connection, then an
unfinished body; never one the app is answering, nor one that connected under FRESH_SECONDS
ago (its request is surely on its way): if only such are left, the new connection is the
one closed. Request heads over h11's 16 kB are refused by h11 itself.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from http import HTTPStatus

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

HEAD, BODY, DRAIN = "head", "body", "drain"
# A client sends its request as soon as it connects, but a server busy with an attack's
# reconnections may read it late: a connection this young is never closed to make room.
FRESH_SECONDS = 1.0


@dataclass(frozen=True)
class ConnectionLimits:
    """Per-connection deadlines and the connection cap (the defaults are `lenet serve`'s)."""

    head_seconds: float = 10.0  # a browser sends its head at once; ~10 s is uvicorn #157's proposal
    body_seconds: float = 60.0  # a 5 MB photo at 85 kB/s, a slow phone upload
    drain_seconds: float = 10.0
    drain_bytes: int = 32 * 2**20  # a photo several times the 5 MB limit is read to its end
    max_connections: int = 256  # under the usual 1,024 open files; each buffers <= ~80 kB

    def seconds(self, phase: str) -> float:
        return {HEAD: self.head_seconds, BODY: self.body_seconds, DRAIN: self.drain_seconds}[phase]


def guarded_h11(limits: ConnectionLimits) -> type[H11Protocol]:
    """The protocol class to give uvicorn (`http=`), with these limits."""
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {"limits": limits})


def error_bytes(status: int, message: str) -> bytes:
    """A whole HTTP response with a JSON error, written straight to the socket before closing."""
    body = json.dumps({"error": message}).encode()
    head = (f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n")
    return head.encode("ascii") + body


class GuardedH11Protocol(H11Protocol):
    """H11Protocol plus a deadline for the phase the connection is in, and the connection cap."""

    limits = ConnectionLimits()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.phase: str | None = None
        self.phase_since = 0.0
        self.deadline: asyncio.TimerHandle | None = None
        self.received = 0  # bytes received in this phase
        super().connection_made(transport)
        self.follow()
        self.make_room()

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        if self.phase == DRAIN and self.received > self.limits.drain_bytes:
            self.hang_up(None, "")
            return
        super().data_received(data)
        self.follow()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self.follow()

    def connection_lost(self, exc: Exception | None) -> None:
        self.enter(None)
        super().connection_lost(exc)

    def waiting_for(self) -> str | None:
        """The phase: what the server is waiting for from the client, if anything."""
        if self.transport.is_closing():
            return None
        theirs, ours = self.conn.their_state, self.conn.our_state
        if theirs is h11.IDLE:
            return HEAD
        if theirs is h11.SEND_BODY:
            return DRAIN if ours in (h11.DONE, h11.MUST_CLOSE) else BODY
        return None  # the request is complete: the app's turn

    def follow(self) -> None:
        """Start the new phase's deadline when the phase changed."""
        phase = self.waiting_for()
        if phase != self.phase:
            self.enter(phase)

    def enter(self, phase: str | None) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
        self.phase, self.phase_since, self.received = phase, self.loop.time(), 0
        self.deadline = self.loop.call_later(self.limits.seconds(phase), self.expire) if phase else None

    def expire(self) -> None:
        seconds = self.limits.seconds(self.phase) if self.phase else 0
        self.hang_up(408, f"the request's {self.phase} did not arrive within {seconds:g} s")

    def make_room(self) -> None:
        """At the cap, close the connection that has waited longest (this one if none waits)."""
        others = [c for c in self.connections if c is not self and not c.transport.is_closing()]
        if len(others) < self.limits.max_connections:
            return
        now = self.loop.time()
        ranked = [(rank, c.phase_since, c) for c in others if getattr(c, "phase", None)
                  and (rank := c.eviction_rank(now)) is not None]
        if not ranked:  # only fresh connections and ones being answered: no room
            self.hang_up(None, "")
            return
        oldest = min(ranked, key=lambda entry: entry[:2])[2]
        oldest.hang_up(503, "closed to make room: the server is at its connection limit; retry")

    def eviction_rank(self, now: float) -> int | None:
        """Which waiting connections close first for room (lowest); None: never."""
        if self.phase == HEAD and not self.received:
            return 2 if now - self.phase_since > FRESH_SECONDS else None
        return {DRAIN: 0, HEAD: 1, BODY: 3}[self.phase]

    def begun(self) -> bool:
        """A request was begun and is not answered: it deserves an answer before the close."""
        if self.phase == HEAD:
            return self.received > 0  # part of a head is buffered
        return self.phase == BODY and not (self.cycle and self.cycle.response_started)

    def hang_up(self, status: int | None, message: str) -> None:
        """Close the connection, first answering `status` if a request is waiting for one."""
        if status and self.begun() and not self.transport.is_closing():
            self.transport.write(error_bytes(status, message))
        self.enter(None)
        self.transport.close()
