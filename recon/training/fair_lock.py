"""A re-entrant lock that hands over in arrival order: the trainer's lock.

The training loop takes its lock for every step and asks for it again a moment after releasing it.
CPython's ``threading.Lock``/``RLock`` make no promise about who gets a released lock; in practice
the thread that just released it usually takes it straight back, so a viewer thread that wants to
render between two steps can wait through many steps. :class:`FairLock` queues the threads that
wait and gives the lock to the longest-waiting one on release; a thread that releases and asks
again joins the back of the queue. So whoever asks while the trainer is mid-step gets the lock
right after that step, and the trainer needs no knowledge of who is waiting.

Each waiter sleeps on its own condition (all sharing one mutex), so a release wakes exactly the
thread whose turn it is. Re-entrant like ``RLock``: the owner may acquire again and must release as
often.
"""

from __future__ import annotations

import threading
import time
from collections import deque


class FairLock:
    """A re-entrant FIFO lock (``with lock: ...``, or ``acquire``/``release``)."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._queue: deque[threading.Condition] = deque()  # one per waiting thread, in arrival order
        self._owner: int | None = None  # thread ident
        self._depth = 0

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        """Take the lock, after every thread that asked earlier and still waits; False when
        ``blocking`` is False and the lock is taken or others wait, or when ``timeout`` runs out."""
        me = threading.get_ident()
        with self._mutex:
            if self._owner == me:
                self._depth += 1
                return True
            if self._owner is None and not self._queue:
                self._owner, self._depth = me, 1
                return True
            if not blocking or timeout == 0:
                return False
            deadline = None if timeout is None or timeout < 0 else time.monotonic() + timeout
            turn = threading.Condition(self._mutex)
            self._queue.append(turn)
            granted = False
            try:
                while self._owner is not None or self._queue[0] is not turn:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return False
                    turn.wait(remaining)
                self._queue.popleft()
                self._owner, self._depth = me, 1
                granted = True
                return True
            finally:
                if not granted:  # timed out or interrupted: leave the queue, pass the turn on if it was ours
                    was_first = self._queue[0] is turn
                    self._queue.remove(turn)
                    if was_first and self._owner is None and self._queue:
                        self._queue[0].notify()

    def release(self) -> None:
        with self._mutex:
            if self._owner != threading.get_ident():
                raise RuntimeError("cannot release a FairLock this thread does not hold")
            self._depth -= 1
            if self._depth == 0:
                self._owner = None
                if self._queue:
                    self._queue[0].notify()

    def __enter__(self) -> "FairLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def locked(self) -> bool:
        with self._mutex:
            return self._owner is not None

    def waiting(self) -> int:
        """How many threads wait for the lock now."""
        with self._mutex:
            return len(self._queue)

    def __repr__(self) -> str:
        with self._mutex:
            state = "unlocked" if self._owner is None else f"held (depth {self._depth})"
            return f"<FairLock {state}, {len(self._queue)} waiting>"


__all__ = ["FairLock"]
