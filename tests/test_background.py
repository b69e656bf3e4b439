"""``BackgroundCall`` returns the child's value, reads its call only at idle priority, raises its error with its
traceback, says how a dead child died, and stops a child that is no longer wanted."""

import os
import signal
import time

import pytest

from simulations.federation.background import BackgroundCall


def _value_and_policy(x: int) -> tuple[int, int]:
    return x * 2, os.sched_getscheduler(0)


def _raise(message: str) -> None:
    raise ValueError(message)


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _sleep(seconds: float) -> None:
    time.sleep(seconds)


def test_the_value_comes_back_from_a_child_that_runs_only_on_idle_cores():
    value, policy = BackgroundCall(_value_and_policy, 21).result()
    assert value == 42 and policy == os.SCHED_IDLE


class _PolicyWhenUnpickled:
    """Unpickles to the scheduling policy of the process unpickling it (what importing the call's modules runs at)."""

    def __reduce__(self):
        return os.sched_getscheduler, (0,)


def _identity(x: int) -> int:
    return x


def test_the_child_reads_its_call_at_idle_priority():
    """Unpickling the call imports its modules (torch: seconds of CPU); that must not outrank the rounds either."""
    assert BackgroundCall(_identity, _PolicyWhenUnpickled()).result() == os.SCHED_IDLE


def test_an_error_in_the_child_is_raised_with_its_traceback():
    with pytest.raises(RuntimeError, match=r"(?s)failed:.*ValueError: the pooled logs are gone"):
        BackgroundCall(_raise, "the pooled logs are gone").result()


def test_a_child_killed_without_an_answer_is_reported_with_its_exit_code():
    with pytest.raises(RuntimeError, match=r"ended without a result \(exit code -9"):
        BackgroundCall(_die).result()


def test_cancel_stops_the_child_at_once():
    call = BackgroundCall(_sleep, 60.0)
    started = time.perf_counter()
    call.cancel()
    assert time.perf_counter() - started < 10 and not call._process.is_alive()
