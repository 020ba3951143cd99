"""SIGTERM and SIGINT: the run stops at a safe point, says how to resume, exits 143 / 130, leaves no
MLflow run RUNNING, and the resumed run is the uninterrupted one byte for byte.

The end-to-end cases send the signal from inside a tiny run through the fault harness
(tests/fault_harness.py, fault_inject.py) and compare with its reference run.
"""

from __future__ import annotations

import os
import signal
import sys
import weakref

import fault_harness
import pytest

from csr.core import signals


@pytest.fixture
def handlers():
    saved = {s: signal.getsignal(s) for s in signals.SIGNALS}
    previous = signals.install()
    yield
    signals.restore(previous)
    assert {s: signal.getsignal(s) for s in signals.SIGNALS} == saved


def test_a_signal_inside_a_batch_loop_waits_for_the_batch_boundary(handlers) -> None:
    with pytest.raises(signals.Interrupted) as info, signals.deferred():
        os.kill(os.getpid(), signal.SIGTERM)
        after_signal = True  # the loop body goes on
        signals.check("after batch 3")
    assert after_signal and info.value.signum == signal.SIGTERM and info.value.detail == "after batch 3"


def test_a_signal_outside_a_batch_loop_stops_at_once(handlers) -> None:
    with pytest.raises(signals.Interrupted) as info:
        os.kill(os.getpid(), signal.SIGINT)
        raise AssertionError("the handler did not stop the run")
    assert info.value.signum == signal.SIGINT  # and no KeyboardInterrupt


def test_a_second_signal_does_not_wait(handlers) -> None:
    with pytest.raises(signals.Interrupted) as info, signals.deferred():
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)
        raise AssertionError("the second signal was deferred too")
    assert info.value.signum == signal.SIGTERM  # the first one is the one reported


def test_a_deferred_signal_stops_at_the_end_of_the_loop_and_none_after_closing(handlers) -> None:
    with pytest.raises(signals.Interrupted), signals.deferred():
        os.kill(os.getpid(), signal.SIGTERM)
    assert signals.closing() == signal.SIGTERM
    os.kill(os.getpid(), signal.SIGTERM)  # reported runs only record it
    signals.check()


def test_a_signal_in_a_finaliser_prints_nothing_and_stops_at_the_next_safe_point(monkeypatch) -> None:
    """SIGTERM at the start of the base evaluation came while SQLAlchemy's weakref callbacks ran: Python
    dropped the handler's exception there and printed "Exception ignored in ..." with a traceback."""
    dropped = []

    def printed(unraisable) -> None:  # Python's own hook prints "Exception ignored in ..."
        dropped.append(unraisable.exc_value)

    monkeypatch.setattr(sys, "unraisablehook", printed)
    previous = signals.install()
    try:
        class Resource:
            pass

        resource = Resource()
        ref = weakref.ref(resource, lambda _: os.kill(os.getpid(), signal.SIGTERM))
        del resource  # the callback runs, the signal's handler raises inside it, where Python cannot raise
        assert ref() is None and dropped == []
        with pytest.raises(signals.Interrupted) as info:
            signals.check()  # the next safe point (each batch, each stage, the end of the loop)
        assert info.value.signum == signal.SIGTERM
    finally:
        signals.restore(previous)
    assert sys.unraisablehook is printed


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.getbasetemp() / "fault_matrix"  # shared with tests/test_fault_matrix.py
    out.mkdir(exist_ok=True)
    env, ref = fault_harness.setup(out)
    return out, env, ref


# Issue 13's cases: SIGTERM during DPO exited 0, during search it was ignored, SIGINT during DPO exited 1.
CASES = [
    ("search", "SIGTERM@record:iter_1/search.jsonl.part0:3", 143, "iteration 1, stage search"),
    ("search", "SIGINT@record:iter_1/search.jsonl.part0:5", 130, "iteration 1, stage search"),
    ("dpo", "SIGTERM@dpo_step:iter_1:2", 143, "iteration 1, stage dpo, after DPO step 2"),
    ("dpo", "SIGINT@dpo_step:iter_2:3", 130, "iteration 2, stage dpo, after DPO step 3"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("stage", "fault", "code", "where"), CASES, ids=[c[1].split(":")[0] for c in CASES])
def test_signal_stops_reports_and_resumes_identically(reference, stage, fault, code, where) -> None:
    out, env, ref = reference
    name = fault.split("@")[0]
    run_dir = out / "runs" / f"{name}_{stage}"
    logs = out / "logs"
    logs.mkdir(exist_ok=True)
    outcome = fault_harness.run_fault(ref, run_dir, stage, fault, env, logs)
    log = (logs / f"{run_dir.name}.log").read_text()
    assert outcome.exit_code == code, log[-3000:]
    assert outcome.stop_problems == [], log[-3000:]  # resume line, no traceback, MLflow parent KILLED
    assert f"stopped by {name} in {where}" in log
    assert f"rerun the same command with run_dir={run_dir}" in log
    assert outcome.resumed, log[-3000:]
    assert outcome.differences == []
    assert (outcome.lost, outcome.duplicated) == (0, 0)
