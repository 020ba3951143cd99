"""One rank of tests/test_ranks.py's 2-process prediction, started by an external launcher (torchrun,
or RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT set by the test): joins the ranks, runs a toy
predict module over `n` items into OUT, and prints how many records this rank wrote.

    python tests/ranks_worker.py OUT N BATCH_SIZE
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import torch.distributed as dist

from csr.core.distributed import start_ranks
from csr.run.predict import RecordPredictor, predict_to_jsonl

TRAINER = SimpleNamespace(accelerator="cpu", devices=2, num_nodes=1)


class Squares(RecordPredictor):
    """Each item's square, and the ids of the batch it came in (a batch is done whole or not at all)."""

    def predict_step(self, batch: list[dict], batch_idx: int = 0) -> list[dict]:
        return [{"id": it["id"], "square": it["n"] ** 2, "batch": [b["id"] for b in batch]} for it in batch]


def items(n: int) -> list[dict]:
    return [{"id": f"p{i:02d}", "n": i} for i in range(n)]


def main() -> None:
    out, n, batch_size = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    start_ranks(TRAINER)
    kwargs = {"accelerator": "cpu", "devices": 2, "num_nodes": 1, "strategy": "ddp", "precision": "32-true",
              "enable_progress_bar": False}
    written = predict_to_jsonl(Squares(), items(n), out, batch_size=batch_size, trainer_kwargs=kwargs)
    # One write of the whole line: under torchrun both ranks share one stdout pipe, and print() writes
    # the text and its newline separately, so two ranks' lines could interleave.
    sys.stdout.write(json.dumps({"rank": dist.get_rank(), "written": written}) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
