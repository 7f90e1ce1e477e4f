"""The trainer's lock (recon.training.fair_lock.FairLock): arrival-order hand-over, so a viewer that
asks between training steps is served after at most the step under way. Fairness is counted in the
other thread's loop iterations, never in wall-clock time."""

from __future__ import annotations

import threading
import time

import pytest

from recon.training.fair_lock import FairLock


def wait_until(condition, what: str, limit: float = 60.0) -> None:
    """Poll ``condition`` (a hang guard only: the assertions below never depend on timing)."""
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.001)


class Looper:
    """A thread that takes and releases ``lock`` back to back, like the training loop. For every
    hold it notes whether another thread was waiting at that moment."""

    def __init__(self, lock: FairLock) -> None:
        self.lock = lock
        self.iterations = 0
        self.holds_seen_waiting = 0  # holds during which someone else waited
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            with self.lock:
                self.iterations += 1
                if self.lock.waiting():
                    self.holds_seen_waiting += 1

    def __enter__(self) -> "Looper":
        self.thread.start()
        wait_until(lambda: self.iterations >= 100, "the loop to run")
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(timeout=60)
        assert not self.thread.is_alive()


def test_a_waiting_thread_gets_the_lock_after_the_hold_under_way():
    """While another thread loops acquire/release, each request is granted before the looping thread
    completes a second hold: the looper sees a waiter in at most one hold per request."""
    lock = FairLock()
    requests = 50
    with Looper(lock) as looper:
        for _ in range(requests):
            seen_before = looper.holds_seen_waiting
            start = looper.iterations
            with lock:
                assert lock.waiting() <= 1  # only the looper can be queued behind us
                assert looper.holds_seen_waiting - seen_before <= 1, "the looper kept the lock while we waited"
            # the looper keeps going between our requests (we do not just interleave with an idle thread)
            wait_until(lambda: looper.iterations >= start + 5, "the loop to go on")
        assert looper.holds_seen_waiting <= requests


def test_waiters_are_served_in_arrival_order():
    lock = FairLock()
    order: list[int] = []
    lock.acquire()
    threads = []
    for k in range(6):
        t = threading.Thread(target=lambda k=k: (lock.acquire(), order.append(k), lock.release()), daemon=True)
        t.start()
        threads.append(t)
        wait_until(lambda n=k + 1: lock.waiting() == n, f"{k + 1} waiters")
    # a late non-blocking request does not jump the queue
    late: list[bool] = []
    asker = threading.Thread(target=lambda: late.append(lock.acquire(blocking=False)))
    asker.start()
    asker.join(timeout=60)
    assert late == [False]
    lock.release()
    for t in threads:
        t.join(timeout=60)
    assert order == [0, 1, 2, 3, 4, 5]
    assert not lock.locked() and lock.waiting() == 0


def test_release_and_reacquire_goes_to_the_back_of_the_queue():
    """The pattern of the training loop: release, then ask again at once. The waiter goes first."""
    lock = FairLock()
    got: list[str] = []
    lock.acquire()
    waiter = threading.Thread(target=lambda: (lock.acquire(), got.append("waiter"), lock.release()), daemon=True)
    waiter.start()
    wait_until(lambda: lock.waiting() == 1, "the waiter to queue")
    lock.release()
    lock.acquire()
    got.append("loop")
    lock.release()
    waiter.join(timeout=60)
    assert got == ["waiter", "loop"]


def test_reentrant_and_owner_checked():
    lock = FairLock()
    with lock:
        with lock:  # the owner may take it again
            assert lock.locked()
        assert lock.locked()  # still held once
        other: list[bool] = []
        t = threading.Thread(target=lambda: other.append(lock.acquire(blocking=False)))
        t.start()
        t.join()
        assert other == [False]
    assert not lock.locked()
    with pytest.raises(RuntimeError, match="does not hold"):
        lock.release()
    lock.acquire()
    t = threading.Thread(target=lambda: other.append(_release_raises(lock)))
    t.start()
    t.join()
    assert other[-1] is True and lock.locked()  # another thread cannot release it
    lock.release()


def _release_raises(lock: FairLock) -> bool:
    try:
        lock.release()
    except RuntimeError:
        return True
    return False


def test_a_timed_out_waiter_leaves_the_queue_and_passes_the_turn_on():
    lock = FairLock()
    lock.acquire()
    results: dict[str, bool] = {}

    def ask(name: str, timeout: float) -> None:
        results[name] = lock.acquire(timeout=timeout)
        if results[name]:
            lock.release()

    first = threading.Thread(target=ask, args=("first", 0.05), daemon=True)
    first.start()
    wait_until(lambda: lock.waiting() == 1, "the first waiter")
    second = threading.Thread(target=ask, args=("second", -1), daemon=True)
    second.start()
    wait_until(lambda: lock.waiting() == 2, "the second waiter")
    first.join(timeout=60)  # times out while we hold the lock
    assert results == {"first": False} and lock.waiting() == 1
    lock.release()
    second.join(timeout=60)
    assert results == {"first": False, "second": True}
    assert not lock.locked() and lock.waiting() == 0
    assert lock.acquire(timeout=0.01) and (lock.release() is None)


def test_a_timed_out_head_of_the_queue_wakes_the_next_waiter():
    """The head times out in the instant the lock is free (no owner): the next waiter must still be woken."""
    lock = FairLock()
    lock.acquire()
    got: list[str] = []
    head = threading.Thread(
        target=lambda: got.append("head" if lock.acquire(timeout=0.2) else "head timed out"), daemon=True
    )
    head.start()
    wait_until(lambda: lock.waiting() == 1, "the head")
    behind = threading.Thread(target=lambda: (lock.acquire(), got.append("behind"), lock.release()), daemon=True)
    behind.start()
    wait_until(lambda: lock.waiting() == 2, "the second waiter")
    head.join(timeout=60)
    lock.release()
    behind.join(timeout=60)
    assert got == ["head timed out", "behind"]


@pytest.mark.slow
def test_the_trainer_serves_a_waiting_viewer_after_the_step_under_way(tmp_path, monkeypatch):
    """A tiny CPU run in a thread; another thread repeatedly asks for ``trainer.lock`` (what a viewer
    render does). Each request is granted after at most the step under way: the hook, called after
    every step outside the lock, sees a waiter after at most one step per request."""
    from recon.config import TrainConfig
    from recon.strategy import DefaultStrategy
    from recon.training.trainer import TrainHook, Trainer

    class CountWaiting(TrainHook):
        steps_with_a_waiter = 0

        def on_step(self, trainer, stats) -> None:
            if trainer.lock.waiting():
                self.steps_with_a_waiter += 1

    monkeypatch.setenv("RECON_CACHE", str(tmp_path / "cache"))
    hook = CountWaiting()
    cfg = TrainConfig(data="demo", output=tmp_path / "run", steps=12, downscale=4, random_init_points=200,
                      progress=False,
                      save_eval_renders=False, holdout_every=0, compress_schedules=False,
                      strategy=DefaultStrategy(refine_start=1000, refine_stop=1000))
    trainer = Trainer(cfg, hooks=[hook])
    trainer.setup()
    assert isinstance(trainer.lock, FairLock)
    errors: list[BaseException] = []

    def train() -> None:
        try:
            trainer.train()
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    thread = threading.Thread(target=train, daemon=True)
    thread.start()
    requests = 0
    while thread.is_alive():
        before = hook.steps_with_a_waiter
        with trainer.lock:
            requests += 1
            assert hook.steps_with_a_waiter - before <= 1, "training went on while a render waited for the lock"
        wait_until(lambda s=trainer.step: trainer.step > s or not thread.is_alive(), "the next step")
    thread.join()
    assert not errors, errors
    assert trainer.step == cfg.steps and requests >= cfg.steps // 4
    assert hook.steps_with_a_waiter <= requests
