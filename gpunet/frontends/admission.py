"""A bound on work in flight for the drawing server: a few slots, a short queue, newest first.

``Gate(slots, queue, patience)``: at most ``slots`` holders at once. A request that finds
them taken waits, at most ``patience`` seconds; at most ``queue`` wait, and one more
pushes the oldest waiter out. A request that is pushed out or runs out of patience is
refused (the server answers 503), so memory and threads stay bounded under any burst.

Waiters are admitted newest first (a stack, as in "adaptive LIFO"): under a burst, a
request that has just arrived waits about one job, while the oldest, whose clients are
the likeliest to have given up, wait longest and are the ones refused. Without a burst
there is no queue, and the order does not arise.

Threads wait with ``enter()``; coroutines of an asyncio event loop with ``await enter_async()``
(the drawing server's). Both kinds share one gate and one queue.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque


class _Ticket:
    """One waiter: set once, admitted or refused."""
    __slots__ = ("event", "admitted")

    def __init__(self, event=None):
        self.event = event or threading.Event()
        self.admitted = False


class _LoopEvent:
    """A threading.Event's set()/is_set() for a coroutine: set() (from any thread) wakes its event loop."""
    __slots__ = ("loop", "future", "flag")

    def __init__(self):
        self.loop = asyncio.get_running_loop()
        self.future = self.loop.create_future()
        self.flag = False

    def set(self) -> None:
        self.flag = True
        self.loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        if not self.future.done():
            self.future.set_result(None)

    def is_set(self) -> bool:
        return self.flag


class Gate:
    """``enter()`` -> True (a slot is yours: ``leave()`` when done) or False (refused)."""

    def __init__(self, slots: int, queue: int, patience: float):
        if slots < 1 or queue < 0 or patience < 0:
            raise ValueError(f"Gate needs slots >= 1, queue >= 0, patience >= 0; got {slots}, {queue}, {patience}")
        self.slots, self.queue, self.patience = slots, queue, patience
        self._lock = threading.Lock()
        self._free = slots
        self._waiting: deque[_Ticket] = deque()  # oldest on the left, newest on the right

    def enter(self) -> bool:
        """Take a slot, waiting (newest first) at most ``patience`` seconds; False when refused."""
        with self._lock:
            if self._free > 0 and not self._waiting:
                self._free -= 1
                return True
            ticket = _Ticket()
            self._waiting.append(ticket)
            if len(self._waiting) > self.queue:
                self._waiting.popleft().event.set()  # the oldest is refused (maybe this one, when queue is 0)
        if ticket.event.wait(self.patience):
            return ticket.admitted
        with self._lock:
            if ticket.event.is_set():  # admitted or refused just as the wait ran out
                return ticket.admitted
            self._waiting.remove(ticket)
            return False

    async def enter_async(self) -> bool:
        """``enter()`` for a coroutine: waits without blocking its event loop."""
        with self._lock:
            if self._free > 0 and not self._waiting:
                self._free -= 1
                return True
            ticket = _Ticket(_LoopEvent())
            self._waiting.append(ticket)
            if len(self._waiting) > self.queue:
                self._waiting.popleft().event.set()
        try:
            await asyncio.wait({ticket.event.future}, timeout=self.patience)
        except asyncio.CancelledError:  # the server stops: a place given meanwhile is given back
            with self._lock:
                if not ticket.event.is_set():
                    self._waiting.remove(ticket)
            if ticket.admitted:
                self.leave()
            raise
        with self._lock:
            if ticket.event.is_set():
                return ticket.admitted
            self._waiting.remove(ticket)
            return False

    def leave(self) -> None:
        """Give the slot back: to the newest waiter, if any."""
        with self._lock:
            if self._waiting:
                ticket = self._waiting.pop()
                ticket.admitted = True
                ticket.event.set()
            else:
                self._free += 1

    @property
    def busy(self) -> int:
        """Slots taken now."""
        return self.slots - self._free

    @property
    def waiting(self) -> int:
        """Requests waiting for a slot now."""
        return len(self._waiting)
