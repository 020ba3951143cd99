"""A rank of tests/test_merge.py's two-process wait: rank 0 finishes a stage only it runs after the
process group's own timeout, and rank 1 must wait for it (csr.core.distributed.rank_zero_done)."""

from __future__ import annotations

import datetime
import os
import time
from pathlib import Path

import torch.distributed as dist

from csr.core.distributed import barrier, rank_zero_done

GROUP_TIMEOUT_S = 10  # also how long the first rank up waits for the other to join
STAGE_S = 14  # "the merge": longer than any collective of this group may wait


def rank_after_a_long_stage(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=datetime.timedelta(seconds=GROUP_TIMEOUT_S))
    if rank == 0:
        time.sleep(STAGE_S)
    rank_zero_done("iteration 1 merge")  # a plain barrier() here times out
    barrier()
    Path(out, f"rank{rank}").write_text("done")
    dist.destroy_process_group()
