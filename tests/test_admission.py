"""The drawing server's bound on work in flight (gpunet/frontends/admission.py): slots, newest first, a bounded queue."""

import threading
import time

import pytest

from gpunet.frontends.admission import Gate


def until(condition, what, limit=30.0):
    """Wait for a state the test brings about (the limit only guards against hanging, never decides)."""
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, f"still waiting for {what}"
        time.sleep(0.005)


class Waiter:
    """A thread that enters the gate; .result is True (admitted) or False (refused) once it returns."""

    def __init__(self, gate):
        self.result = None
        self.thread = threading.Thread(target=lambda: setattr(self, "result", gate.enter()), daemon=True)
        self.thread.start()


def queue_up(gate, count):
    """`count` waiters, entering one after another (each is waiting before the next comes)."""
    waiters = []
    for _ in range(count):
        before = gate.waiting
        waiters.append(Waiter(gate))
        until(lambda: gate.waiting > before or waiters[-1].result is not None, "the waiter to queue")
    return waiters


def test_at_most_slots_at_once():
    gate = Gate(slots=2, queue=10, patience=60)
    assert gate.enter() and gate.enter()
    assert gate.busy == 2
    (waiter,) = queue_up(gate, 1)
    assert waiter.result is None and gate.waiting == 1
    gate.leave()
    waiter.thread.join(30)
    assert waiter.result is True and gate.busy == 2 and gate.waiting == 0
    gate.leave()
    gate.leave()
    assert gate.busy == 0


def test_the_newest_waiter_goes_first():
    gate = Gate(slots=1, queue=10, patience=60)
    assert gate.enter()
    first, second, third = queue_up(gate, 3)
    gate.leave()
    third.thread.join(30)
    assert third.result is True and first.result is None and second.result is None
    gate.leave()
    second.thread.join(30)
    assert second.result is True and first.result is None
    gate.leave()
    first.thread.join(30)
    assert first.result is True


def test_a_full_queue_refuses_the_oldest_at_once():
    gate = Gate(slots=1, queue=2, patience=60)
    assert gate.enter()
    oldest, middle = queue_up(gate, 2)
    newest = Waiter(gate)
    oldest.thread.join(30)
    assert oldest.result is False  # refused without anyone leaving
    until(lambda: gate.waiting == 2, "the newest to wait")
    assert middle.result is None and newest.result is None
    gate.leave()
    newest.thread.join(30)
    assert newest.result is True


def test_no_queue_refuses_at_once_when_full():
    gate = Gate(slots=1, queue=0, patience=60)
    assert gate.enter()
    assert gate.enter() is False
    gate.leave()
    assert gate.enter() is True


def test_a_waiter_out_of_patience_is_refused_and_leaves_the_queue():
    gate = Gate(slots=1, queue=5, patience=0.05)
    assert gate.enter()
    waiter = Waiter(gate)
    waiter.thread.join(30)
    assert waiter.result is False and gate.waiting == 0
    gate.leave()
    assert gate.busy == 0 and gate.enter()


@pytest.mark.parametrize("slots, queue, patience", [(0, 1, 1), (1, -1, 1), (1, 1, -1)])
def test_nonsense_limits_are_refused(slots, queue, patience):
    with pytest.raises(ValueError):
        Gate(slots, queue, patience)


# --- coroutines (the drawing server's event loop): enter_async -------------------------------

import asyncio  # noqa: E402


async def queue_up_async(gate, count):
    """`count` coroutines entering one after another (each waiting before the next comes)."""
    tasks = []
    for _ in range(count):
        before = gate.waiting
        tasks.append(asyncio.create_task(gate.enter_async()))
        while gate.waiting == before and not tasks[-1].done():
            await asyncio.sleep(0)
    return tasks


def test_coroutines_wait_newest_first_without_blocking_the_loop():
    async def scenario():
        gate = Gate(slots=1, queue=10, patience=60)
        assert await gate.enter_async()
        first, second, third = await queue_up_async(gate, 3)
        assert gate.waiting == 3 and not any(task.done() for task in (first, second, third))
        gate.leave()
        assert await third is True
        assert not first.done() and not second.done()
        gate.leave()
        assert await second is True and not first.done()
        gate.leave()
        assert await first is True and gate.busy == 1
        gate.leave()
        assert gate.busy == 0
    asyncio.run(scenario())


def test_a_full_queue_refuses_the_oldest_coroutine_at_once():
    async def scenario():
        gate = Gate(slots=1, queue=1, patience=60)
        assert await gate.enter_async()
        (oldest,) = await queue_up_async(gate, 1)
        newest = asyncio.create_task(gate.enter_async())
        assert await oldest is False  # refused without anyone leaving
        gate.leave()
        assert await newest is True
    asyncio.run(scenario())


def test_a_coroutine_out_of_patience_is_refused_and_leaves_the_queue():
    async def scenario():
        gate = Gate(slots=1, queue=5, patience=0)
        assert await gate.enter_async()
        assert await gate.enter_async() is False and gate.waiting == 0
        gate.leave()
        assert gate.busy == 0 and await gate.enter_async()
    asyncio.run(scenario())


def test_a_cancelled_coroutine_leaves_the_queue_or_gives_its_place_back():
    async def scenario():
        gate = Gate(slots=1, queue=5, patience=60)
        assert await gate.enter_async()
        (waiting,) = await queue_up_async(gate, 1)
        waiting.cancel()  # the server stops while it waits
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert gate.waiting == 0 and gate.busy == 1
        (admitted,) = await queue_up_async(gate, 1)
        gate.leave()  # its place is given to it, and then it is cancelled before it runs
        admitted.cancel()
        with pytest.raises(asyncio.CancelledError):
            await admitted
        assert gate.waiting == 0 and gate.busy == 0
    asyncio.run(scenario())


def test_a_thread_and_a_coroutine_share_one_gate():
    gate = Gate(slots=1, queue=5, patience=60)
    assert gate.enter()

    async def wait_then_check():
        task = asyncio.create_task(gate.enter_async())
        while gate.waiting == 0:
            await asyncio.sleep(0)
        threading.Thread(target=gate.leave).start()  # a thread gives its place to the coroutine
        return await task
    assert asyncio.run(wait_then_check()) is True and gate.busy == 1
