"""A fast subset of experiments/fault_matrix through its harness (tests/fault_harness.py): SIGKILL
inside three stages and a SIGTERM outside the batch loops, rerun, compare (tests/test_signals.py has
SIGTERM and SIGINT inside search and DPO)."""

from __future__ import annotations

import random

import fault_harness
import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.getbasetemp() / "fault_matrix"  # shared with tests/test_signals.py
    out.mkdir(exist_ok=True)
    env, reference = fault_harness.setup(out)
    return out, env, reference


def test_kills_inside_stages_resume_to_identical_output(reference):
    out, env, ref = reference
    rng = random.Random(1)
    faults = [
        ("search", "torn:iter_1/search.jsonl.part0:3"),  # half a record on disk
        ("dpo", f"dpo_step:iter_1:{rng.randint(2, 8)}"),
        ("pairs", "replace:iter_2/pairs.jsonl:1"),  # whole-file write cut before its rename
        ("merge", "SIGTERM@save_dir:iter_1/merged:1"),  # stops on the spot: exit 143, MLflow KILLED
    ]
    outcomes = fault_harness.run_matrix(out, faults, env, ref)
    for o in outcomes:
        assert o.killed, f"{o.fault}: the fault never fired, or stopped wrongly: exit {o.exit_code} {o.stop_problems}"
        assert o.resumed, f"{o.fault}: the rerun failed (see {out / 'logs'})"
        assert o.differences == [], o.fault
        assert (o.lost, o.duplicated) == (0, 0), o.fault


def test_compare_sees_a_lost_record_and_a_changed_tensor(reference, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    _, _, ref = reference
    run = tmp_path / "run"
    shutil.copytree(ref, run)
    search = run / "iter_1" / "search.jsonl"
    lines = search.read_text().splitlines(keepends=True)
    search.write_text("".join(lines[1:]) + lines[2])  # first record lost, another duplicated
    adapter = run / "iter_2" / "adapter" / "adapter_model.safetensors"
    tensors = load_file(adapter)
    first = next(iter(tensors))
    tensors[first] = tensors[first] + 1e-6
    save_file(tensors, adapter)
    differences, lost, duplicated = fault_harness.compare(ref, run)
    assert (lost, duplicated) == (1, 1)
    assert "content differs in iter_1/search.jsonl" in differences
    assert "tensors differ in iter_2/adapter/adapter_model.safetensors" in differences
