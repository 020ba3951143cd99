"""Ranks agree on the work, whoever starts them: the launcher's environment as Lightning reads it,
rank 0's to-do list on every rank, completeness before a stage is done, and 2 processes started at
once (torchrun, or plain RANK/WORLD_SIZE/... env vars) on a half-finished output."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch.distributed as dist
from pytorch_lightning.utilities.rank_zero import rank_zero_only
from ranks_worker import Squares, items

from csr.core.distributed import _launcher, check_ranks, start_ranks
from csr.core.errors import CSRError
from csr.core.io import read_jsonl
from csr.run.predict import missing_message, part_path, pending, predict_to_jsonl

WORKER = Path(__file__).resolve().parent / "ranks_worker.py"
BIN = Path(sys.executable).parent
LAUNCH_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "GROUP_RANK", "LOCAL_WORLD_SIZE", "TORCHELASTIC_RUN_ID",
               "SLURM_NTASKS", "SLURM_NTASKS_PER_NODE", "SLURM_PROCID", "SLURM_LOCALID", "SLURM_NODEID",
               "SLURM_JOB_NAME", "SLURM_JOB_ID", "SLURM_NODELIST", "MASTER_ADDR", "MASTER_PORT", "NODE_RANK")


@pytest.fixture
def bare_env(monkeypatch):
    """No launcher variables; what a test sets is undone after it (also MASTER_* that Lightning sets, and
    the process-wide rank LightningEnvironment.set_global_rank writes, which would make later tests'
    predict calls act as rank 1)."""
    for name in LAUNCH_VARS:
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    monkeypatch.setattr(rank_zero_only, "rank", rank_zero_only.rank)
    return monkeypatch


# -- the to-do list and the completeness check ------------------------------------------------------


def test_pending_batches_are_those_not_wholly_written():
    keys = [["a", "b"], ["c", "d"], ["e"]]
    assert pending({"a", "b", "c", "x"}, keys) == [1, 2]
    assert pending(set(), keys) == [0, 1, 2]
    assert pending({"a", "b", "c", "d", "e"}, keys) == []


def test_missing_records_are_named():
    keys = [[f"p{i:02d}" for i in range(j, j + 2)] for j in range(0, 24, 2)]
    assert missing_message(Path("out.jsonl"), {k for b in keys for k in b}, keys) is None
    message = missing_message(Path("out.jsonl"), {"p00", "p01", "p05"}, keys)
    assert message == ("out.jsonl: 21 of 24 records missing after every rank finished (p02, p03, p04, p06, p07, "
                       "p08, p09, p10, p11, p12 and 11 more); the stage is not marked done: rerun to do them")


class _DropsOne(Squares):
    """A predict step that loses an item's record (as a rank whose batches no one took would)."""

    def predict_step(self, batch: list[dict], batch_idx: int = 0) -> list[dict]:
        return [r for r in super().predict_step(batch, batch_idx) if r["id"] != "p03"]


def test_an_item_without_its_record_fails_the_stage_naming_it(tmp_path):
    out = tmp_path / "rewards.jsonl"
    kwargs = {"accelerator": "cpu", "devices": 1, "enable_progress_bar": False}
    with pytest.raises(CSRError, match=r"rewards.jsonl: 2 of 6 records missing after every rank finished \(p02, p03\)"):
        predict_to_jsonl(_DropsOne(), items(6), out, batch_size=2, trainer_kwargs=kwargs)
    assert [r["id"] for r in read_jsonl(out)] == ["p00", "p01", "p04", "p05"]  # a batch is redone whole


# -- launchers --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("variables", "environment", "expected"), [
    ({"TORCHELASTIC_RUN_ID": "r1", "RANK": "3", "LOCAL_RANK": "1", "GROUP_RANK": "1", "LOCAL_WORLD_SIZE": "2",
      "WORLD_SIZE": "4", "MASTER_ADDR": "10.0.0.7", "MASTER_PORT": "29511"},
     "TorchElasticEnvironment", (3, 4, "10.0.0.7", 29511)),
    # srun: the first node of the list; port 15000 + the job id's last 4 digits, as Lightning derives them
    ({"SLURM_NTASKS": "4", "SLURM_NTASKS_PER_NODE": "2", "SLURM_PROCID": "3", "SLURM_LOCALID": "1",
      "SLURM_NODEID": "1", "SLURM_JOB_NAME": "csr", "SLURM_JOB_ID": "812345", "SLURM_NODELIST": "gpu[07-08]"},
     "SLURMEnvironment", (3, 4, "gpu07", 17345)),
], ids=["torchrun", "srun"])
def test_launcher_environment(bare_env, variables, environment, expected):
    for name, value in variables.items():
        bare_env.setenv(name, value)
    env = _launcher()
    assert type(env).__name__ == environment
    assert (env.global_rank(), env.world_size(), env.main_address, env.main_port) == expected


def test_plain_env_vars_and_lightnings_own_launcher(bare_env):
    for name, value in {"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                        "MASTER_PORT": "29400"}.items():
        bare_env.setenv(name, value)
    env = _launcher()
    assert (type(env).__name__, env.global_rank(), env.world_size(), env.main_port) == ("LightningEnvironment", 1, 2,
                                                                                         29400)
    bare_env.delenv("RANK")  # what Lightning's launcher gives the ranks it starts: LOCAL_RANK, WORLD_SIZE, no RANK
    assert _launcher() is None


def test_several_nodes_need_a_launcher_that_starts_every_rank(bare_env):
    with pytest.raises(CSRError, match="'trainer.num_nodes': 2 nodes need their ranks started together"):
        start_ranks(SimpleNamespace(accelerator="cpu", devices=2, num_nodes=2))
    start_ranks(SimpleNamespace(accelerator="cpu", devices=2, num_nodes=1))  # one node: Lightning's launcher
    assert not dist.is_initialized()


def test_lightnings_rank_must_be_the_process_groups(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        check_ranks(SimpleNamespace(global_rank=0, world_size=1))
        with pytest.raises(CSRError, match="Lightning counts this process rank 1 of 2, the launcher rank 0 of 1"):
            check_ranks(SimpleNamespace(global_rank=1, world_size=2))
    finally:
        dist.destroy_process_group()


# -- 2 processes started at once on a half-finished output --------------------------------------------


def _record(i: int, batch: list[int]) -> dict:
    """What tests/ranks_worker.py's module writes for item i."""
    return {"id": f"p{i:02d}", "square": i * i, "batch": [f"p{j:02d}" for j in batch]}


def _lines(records: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(launcher: str, out: Path, n: int, batch_size: int) -> list[dict]:
    """Start the 2 ranks together; each one's {"rank", "written"}."""
    args = [str(WORKER), str(out), str(n), str(batch_size)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    if launcher == "torchrun":
        procs = [subprocess.Popen([str(BIN / "torchrun"), "--standalone", "--nproc-per-node=2", *args], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)]
    else:
        port = str(_free_port())
        procs = [subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  env={**env, "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": "2",
                                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port})
                 for r in (0, 1)]
    results = []
    try:
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=240)  # a rank left out of a collective would hang here
            assert proc.returncode == 0, stderr[-3000:]
            results += [json.loads(line) for line in stdout.splitlines() if line.startswith('{"rank"')]
    finally:
        for proc in procs:
            proc.kill()
    return sorted(results, key=lambda r: r["rank"])


@pytest.mark.parametrize("launcher", ["env", "torchrun"])
def test_two_ranks_resume_a_crashed_output_without_loss_or_duplicates(tmp_path, launcher):
    # 12 items in batches of 2. A first start finished batches 0 and 1; a 2-rank start was killed with
    # rank 0 having written batch 2 and half of batch 5, rank 1 half a record. (Before ranks agreed, a
    # rank 1 that read the output before rank 0 merged the parts saw batches 2-5 to do, took 3 and 5,
    # and batch 4 was done by no one: p08 and p09 lost in 2 of 6 such starts, the stage marked done.)
    out = tmp_path / "search.jsonl"
    out.write_text(_lines([_record(i, [i - i % 2, i - i % 2 + 1]) for i in range(4)]))
    part_path(out, 0).write_text(_lines([_record(4, [4, 5]), _record(5, [4, 5]), _record(10, [10, 11])]))
    part_path(out, 1).write_text('{"id": "p06", "squ')
    results = _launch(launcher, out, 12, 2)
    # batches 3, 4 and 5 were left: dealt out once each (rank 0: 3 and 5, rank 1: 4), none twice
    assert results == [{"rank": 0, "written": 4}, {"rank": 1, "written": 2}]
    expected = [_record(i, [i - i % 2, i - i % 2 + 1]) for i in range(12)]
    assert read_jsonl(out) == expected  # every item once, in item order
    assert not list(tmp_path.glob("*.part*"))


def test_a_rank_with_no_batch_left_still_takes_part(tmp_path):
    out = tmp_path / "rewards.jsonl"
    out.write_text(_lines([_record(i, [i - i % 2, i - i % 2 + 1]) for i in range(10)]))
    results = _launch("env", out, 12, 2)  # one batch left for two ranks
    assert results == [{"rank": 0, "written": 2}, {"rank": 1, "written": 0}]
    assert [r["id"] for r in read_jsonl(out)] == [f"p{i:02d}" for i in range(12)]


# -- the csr command under torchrun, resuming a search a crash of 2 ranks left ------------------------


@pytest.mark.slow
def test_csr_under_torchrun_completes_a_crashed_search(tiny_models, tmp_path_factory, tmp_path):
    import shutil

    from csr_runs import ddp_run, tiny_env

    env = tiny_env(tiny_models)
    ddp = ddp_run(tmp_path_factory, env)
    run_dir = tmp_path / "run"
    shutil.copytree(ddp, run_dir)
    d = run_dir / "iter_1"
    search = d / "search.jsonl"
    lines = search.read_text().splitlines(keepends=True)  # 8 prompts in 4 batches of 2
    assert len(lines) == 8
    (d / "search.done.json").unlink()
    # Batch 0 merged by an earlier start; then rank 0 wrote batch 1 and half of batch 3, rank 1 half of
    # batch 2 and a torn line, and both were killed, leaving a temp file of an atomic write.
    search.write_text("".join(lines[:2]))
    part_path(search, 0).write_text("".join(lines[2:4] + lines[6:7]))
    part_path(search, 1).write_text(lines[4] + lines[5][:40])
    stale = d / ".pairs.jsonl.csr-tmp-4242-abcdefgh"
    stale.write_text("half")
    log_path = run_dir / "cli.log"  # Hydra's job log: both ranks append to it
    before = len(log_path.read_text())
    proc = subprocess.run([str(BIN / "torchrun"), "--standalone", "--nproc-per-node=2", "--no-python", str(BIN / "csr"),
                           f"run_dir={run_dir}", "stage=search", "iteration=1"], env=env, cwd=run_dir,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert search.read_bytes() == (ddp / "iter_1" / "search.jsonl").read_bytes()  # nothing lost, nothing twice
    assert (d / "search.done.json").exists() and not list(d.glob("*.part*")) and not stale.exists()
    log = log_path.read_text()[before:]  # only rank 0 cleaned and merged
    assert log.count("removed 1 temp file(s)") == 1
    assert log.count("4 records already written, 2 batches to go") == 1
