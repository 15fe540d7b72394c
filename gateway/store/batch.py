"""Calls made within one event-loop turn, sent together: one round trip for many callers.

A metered request asks the store twice (hold its price, then settle); 64
such requests in flight on one worker would be 128 round trips, and on Redis
each round trip costs far more gateway CPU (the client's command packing,
its connection pool, one event-loop wake-up per reply) than the server's
work. `Coalescer` gathers the operations asked for while the loop runs one
turn and hands them to `send` as one batch on the next turn
(`loop.call_soon`), or at once when the batch reaches `most`. A lone call
is never held back by a timer: it waits for one loop turn, no more.

Each caller gets its own reply or its own exception; `send` decides what
one batch means (for Redis, a pipeline of the same scripts, each still
atomic on its own: see gateway/store/redis.py).

Cancellation: a caller cancelled before its batch is sent is left out of
it (as a call cancelled before reaching the server never reaches it);
once sent, the operation runs whatever becomes of its caller, which then
never sees the reply (as a call cancelled mid-flight today).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

Op = TypeVar("Op")
Reply = TypeVar("Reply")

MOST = 128  # operations in one batch at most: a bigger burst is sent as several


class Coalescer(Generic[Op, Reply]):
    """Send the operations asked for within one event-loop turn as one batch.

    `send(ops)` receives the operations in the order they were asked for and
    returns one entry per operation, in that order: its reply, or an
    exception instance that only that operation's caller raises. Should
    `send` raise, every caller of that batch raises that exception. Batches
    run concurrently (a new one need not wait for the last reply).
    """

    def __init__(
        self,
        send: Callable[[list[Op]], Awaitable[Sequence[Reply | BaseException]]],
        *,
        most: int = MOST,
    ) -> None:
        if most < 1:
            raise ValueError(f"most must be at least 1, not {most}")
        self._send = send
        self._most = most
        self._waiting: list[tuple[Op, asyncio.Future[Reply]]] = []
        self._scheduled = False
        self._sending: set[asyncio.Task[None]] = set()  # strong references until done

    async def __call__(self, op: Op) -> Reply:
        """`op`'s reply, sent with the other operations asked for this loop turn."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Reply] = loop.create_future()
        self._waiting.append((op, future))
        if len(self._waiting) >= self._most:
            self._flush()
        elif not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._turn_over)
        return await future

    @property
    def in_flight(self) -> int:
        """Batches sent and not yet answered."""
        return len(self._sending)

    def _turn_over(self) -> None:
        self._scheduled = False
        self._flush()

    def _flush(self) -> None:
        batch = [(op, future) for op, future in self._waiting if not future.cancelled()]
        self._waiting = []
        if not batch:
            return
        task = asyncio.get_running_loop().create_task(self._deliver(batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _deliver(self, batch: list[tuple[Op, asyncio.Future[Reply]]]) -> None:
        try:
            replies = await self._send([op for op, _ in batch])
            if len(replies) != len(batch):
                raise RuntimeError(f"{len(replies)} replies to a batch of {len(batch)}")
        except asyncio.CancelledError:
            # The loop is shutting down: nobody is left to answer.
            for _, future in batch:
                future.cancel()
            raise
        except Exception as failure:
            for _, future in batch:
                if not future.done():
                    future.set_exception(failure)
            return
        for (_, future), reply in zip(batch, replies, strict=True):
            if future.done():  # its caller was cancelled meanwhile
                continue
            if isinstance(reply, BaseException):
                future.set_exception(reply)
            else:
                future.set_result(reply)
