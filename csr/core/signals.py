"""SIGTERM and SIGINT: stop the run at a safe point; the CLI then says how to resume and exits 128 + signum.

Every file csr writes is appended one fsynced record at a time or written to a temp file and renamed,
so a run may stop between any two statements and resume to the same output (the fault matrix
SIGKILLs it anywhere). Only inside Lightning's loops is an exception at an arbitrary point unwelcome
(a prediction batch half written, ranks parted in the middle of a gradient all-reduce): there the
signal is deferred to the next batch boundary (`deferred()` + `check()` for predict loops,
`StopOnSignal` for DPO); anywhere else it stops the run at once. A second signal stops it at once
everywhere, for a user who does not want to wait for the batch.

Lightning registers its own SIGTERM handler while it fits or predicts, composed with the one it
finds (ours), and reacts to SIGTERM by raising `SIGTERMException` (a SystemExit with code 0) after
the batch. `StopOnSignal` acts one hook earlier; and whatever a signal led to, the CLI asks
`received()` and reports the signal, never exit status 0.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytorch_lightning as pl

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(Exception):  # noqa: N818 - a stop the user asked for, not an error
    """Raised at the point where a signal stops the run."""

    def __init__(self, signum: int, detail: str = ""):
        self.signum, self.detail = signum, detail
        super().__init__(f"{signal.Signals(signum).name}{f' ({detail})' if detail else ''}")


class _State:
    received: int | None = None  # the first signal's number
    depth = 0  # > 0 inside a loop that stops at its next batch boundary
    closing = False  # the CLI is reporting: later signals are only recorded
    unraisable_hook = None  # sys.unraisablehook before install()


_state = _State()


def _handle(signum: int, frame) -> None:
    first = _state.received is None
    if first:
        _state.received = signum
    if _state.closing or (first and _state.depth):
        return
    raise Interrupted(_state.received)


def _unraisable(unraisable) -> None:
    """A signal that came while Python ran a finaliser or a weakref callback (the garbage collector, e.g.
    in SQLAlchemy's registries) raised where Python drops the exception and prints "Exception ignored in
    ..." with a traceback. Nothing to print: the signal stays recorded, and the run stops at its next safe
    point (`check()`: each batch, each stage, the end of the loop)."""
    if isinstance(unraisable.exc_value, Interrupted):
        return
    (_state.unraisable_hook or sys.__unraisablehook__)(unraisable)


def install() -> dict:
    """Route SIGTERM and SIGINT to csr (SIGINT then raises no KeyboardInterrupt); returns the handlers
    they had, for `restore`. Main thread only, as Python allows; elsewhere (a launcher's worker
    thread) the defaults stay."""
    _state.received, _state.depth, _state.closing = None, 0, False
    if threading.current_thread() is not threading.main_thread():
        return {}
    if sys.unraisablehook is not _unraisable:
        _state.unraisable_hook, sys.unraisablehook = sys.unraisablehook, _unraisable
    return {signum: signal.signal(signum, _handle) for signum in SIGNALS}


def restore(previous: dict) -> None:
    """The handlers from before `install` (a caller running csr in-process gets its Ctrl+C back)."""
    _state.closing = True
    for signum, handler in previous.items():
        signal.signal(signum, handler)
    if sys.unraisablehook is _unraisable:
        sys.unraisablehook = _state.unraisable_hook or sys.__unraisablehook__


def received() -> int | None:
    return _state.received


def closing() -> int | None:
    """The run is over: record later signals but raise nothing; returns the signal that stopped it, if any."""
    _state.closing = True
    return _state.received


def check(detail: str = "") -> None:
    """A safe point: stop here if a signal came."""
    if _state.received is not None and not _state.closing:
        raise Interrupted(_state.received, detail)


@contextmanager
def deferred() -> Iterator[None]:
    """A signal inside waits for the next `check()` (or the end of the block)."""
    _state.depth += 1
    try:
        yield
    finally:
        _state.depth -= 1
    check()


class StopOnSignal(pl.Callback):
    """DPO stops after the batch a signal came in; all ranks agree, so none is left in an all-reduce.
    The adapter is not saved: a resumed DPO starts again from its seed and trains the same one."""

    def __init__(self) -> None:
        self._inside = False

    def _leave(self) -> None:
        if self._inside:
            self._inside = False
            _state.depth -= 1

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._inside = True
        _state.depth += 1

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx: int) -> None:
        stop = trainer.strategy.reduce_boolean_decision(_state.received is not None, all=False)
        if stop:
            self._leave()
            raise Interrupted(_state.received or signal.SIGTERM, f"after DPO step {trainer.global_step}")

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._leave()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._leave()
