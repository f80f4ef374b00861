"""Connection guards uvicorn does not have: a deadline for the request head, a cap on connections.

uvicorn times out an idle kept-alive connection (`timeout_keep_alive`), but a connection that
opens and never finishes its request head — or sends nothing at all — is kept forever (slowloris:
~1,100 of them used to stop the server accepting). `GuardedH11Protocol` is uvicorn's own h11
protocol with two additions:

- a timer runs whenever the connection is waiting for a request head (from the moment it opens,
  and again after each reply on a kept-alive connection once new bytes arrive); if the head is not
  complete within `header_timeout_s`, the connection is closed;
- a connection beyond `max_connections` open ones is closed as soon as it is accepted.

The request body's own deadline is the app's (it reads the body: `app.read_json`).
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from .limits import ServerLimits


def guarded_protocol(limits: ServerLimits, on_event: Any = None) -> type:
    """An H11Protocol class bound to `limits` (uvicorn takes a class for `http=`).
    `on_event(kind)` is told "header_timeout" and "too_many_connections" (for the log)."""

    class GuardedH11Protocol(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > limits.max_connections:
                if on_event is not None:
                    on_event("too_many_connections")
                transport.close()
                return
            self._arm_head_timer()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.transport.is_closing():
                self._disarm_head_timer()
            elif self.conn.their_state is h11.IDLE and (self.cycle is None or self.cycle.response_complete):
                self._arm_head_timer()  # bytes of a request head, not complete yet
            else:
                self._disarm_head_timer()  # the head arrived: the app's body deadline takes over

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm_head_timer()
            super().connection_lost(exc)

        def _arm_head_timer(self) -> None:
            if self._head_timer is None:
                self._head_timer = self.loop.call_later(limits.header_timeout_s, self._head_timed_out)

        def _disarm_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timed_out(self) -> None:
            self._head_timer = None
            if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
                return
            if self.cycle is not None and not self.cycle.response_complete:
                return  # a request is being answered: not waiting for a head
            if on_event is not None:
                on_event("header_timeout")
            self._unset_keepalive_if_required()
            self.transport.close()

    return GuardedH11Protocol
