"""A function call run in a separate, low-priority process, collected later: work the run needs only at its end.

The simulation's baselines depend on the configuration alone (``simulations.federation.held_out``), yet pooling the
federation users' logs and training the central model cost several seconds of one core; run after the rounds, they
were the run's last ~10 s. ``BackgroundCall`` starts them beside the rounds in a fresh interpreter (``spawn``: the
parent holds Ray's and Flower's threads, which ``fork`` must not copy) at the lowest CPU priority
(``lowest_priority``), so they run mostly on the core time the rounds leave idle. ``result()`` waits for the value
(or raises the child's error, or says how the child died); ``cancel()`` stops the child.
"""

from __future__ import annotations

import multiprocessing
import os
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from multiprocessing.reduction import ForkingPickler
from typing import Any, Generic, TypeVar

T = TypeVar("T")


def lowest_priority() -> None:
    """Give this process the smallest share of a busy core: Linux's ``SCHED_IDLE`` policy, else the largest niceness.

    Ray runs its workers, which train the rounds, at niceness 15, so a niceness of ours would outrank them; against
    them an idle-policy process still gets a small share (weight 3 to their 36), about 8% of a busy core.
    """
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        os.nice(19)


def _call_and_send(receive: Connection, send: Connection) -> None:
    """The child: take the pickled call at once (the parent's send never waits on an idle-priority reader), lower its
    priority, and only then unpickle it (which imports the function's modules, torch among them: seconds of CPU that
    must not outrank the rounds), make the call and send back its outcome."""
    call = receive.recv_bytes()
    lowest_priority()
    try:
        function, args = ForkingPickler.loads(call)
        outcome = ("value", function(*args))
    except BaseException:  # the parent re-raises it with the child's traceback
        outcome = ("error", traceback.format_exc())
    send.send(outcome)
    send.close()


class BackgroundCall(Generic[T]):
    """``function(*args)`` running in a spawned child process at lower priority (``function`` and ``args`` must
    pickle: a module-level function and plain data)."""

    def __init__(self, function: Callable[..., T], *args: Any) -> None:
        context = multiprocessing.get_context("spawn")
        self._receive, send = context.Pipe(duplex=False)
        call_receive, call_send = context.Pipe(duplex=False)
        self._process = context.Process(target=_call_and_send, args=(call_receive, send), daemon=True,
                                         name=f"background {getattr(function, '__name__', 'call')}")
        self._process.start()
        send.close()  # the child holds the only sending end: if it dies, the pipe reports end of file
        call_receive.close()
        call_send.send((function, args))
        call_send.close()

    def result(self) -> T:
        """The call's value, once the child has computed it.

        Raises:
            RuntimeError: if the call raised (with the child's traceback) or the child died without an answer.
        """
        try:
            wait([self._receive, self._process.sentinel])
            try:
                kind, payload = self._receive.recv()
            except EOFError:
                self._process.join()
                raise RuntimeError(f"the {self._process.name} process ended without a result (exit code "
                                   f"{self._process.exitcode}; a negative code is the signal that killed it, e.g. "
                                   "-9 when the machine ran out of memory)") from None
        finally:
            self.cancel()
        if kind == "error":
            raise RuntimeError(f"the {self._process.name} process failed:\n{payload}")
        return payload

    def cancel(self) -> None:
        """Stop the child if it still runs (a run that ends early need not wait for work it will not report)."""
        if self._process.is_alive():
            self._process.terminate()
        self._process.join()
        self._receive.close()
