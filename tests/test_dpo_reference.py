"""The reference pass goes through csr.run.predict: under the policy's precision (so the log-ratio is 0
at step 0), sharded over ranks (2 gloo processes write the file one process writes), resumable from
its pending file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from bad_input_dpo import DPO, dpo_pair, logged_reference_pass
from omegaconf import OmegaConf
from scratch_prompts import Ctx

from csr.core.io import read_json
from csr.data.image_hash import image_sha256
from csr.dpo.data import PairDataset, collate
from csr.dpo.module import concatenated_logps
from csr.dpo.reference import pair_key, pending_key, reference_settings
from csr.dpo.stage import run_dpo
from csr.models.checkpoint import load_model
from csr.models.families import get_family

TESTS = Path(__file__).resolve().parent
ANSWERS = [" A red square.", " A blue star on the left.", " Two green circles.", " A cross at the top right."]


@pytest.fixture
def ctx(tmp_path: Path, tiny_models) -> Ctx:
    return Ctx(tmp_path, tiny_models, "raise")


def _pairs(ctx: Ctx, n: int) -> list[dict]:
    return [{**dpo_pair(ctx.images, chosen=ANSWERS[i], rid=f"p{i}"), "rejected": ANSWERS[(i + 1) % 4]} for i in range(n)]


def _dpo(ctx: Ctx, pairs: list[dict], precision: str) -> dict:
    iteration = ctx.tmp / "iter_1"
    iteration.mkdir(exist_ok=True)
    (iteration / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    # One step over both pairs: the logged metrics are step 0's, before any update.
    dpo = OmegaConf.create({**DPO, "batch_size": len(pairs)})
    return run_dpo(model_path=ctx.tiny.llava, family=get_family("llava"), pairs_path=iteration / "pairs.jsonl", adapter_dir=iteration / "adapter",
                   image_root=str(ctx.images), model_cfg=OmegaConf.create({"family": "llava", "dtype": "float32", "attn_implementation": "sdpa"}),
                   dpo_cfg=dpo, trainer_kwargs={"accelerator": "cpu", "devices": 1, "precision": precision,
                                                "enable_progress_bar": False}, logger=None)


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_policy_and_reference_log_probs_agree_at_step_0(ctx: Ctx, precision: str) -> None:
    pairs = _pairs(ctx, 2)
    stats = _dpo(ctx, pairs, precision)
    # At step 0 the LoRA policy is the reference (B = 0): beta * (log pi - log ref) must be 0 for
    # chosen and rejected alike, so the loss is ln 2. Tolerance 1e-6 on the log-ratio (0 measured).
    assert stats["steps"] == 1
    assert abs(stats["rewards/chosen"]) / DPO["beta"] < 1e-6 and abs(stats["rewards/rejected"]) / DPO["beta"] < 1e-6
    assert stats["loss"] == pytest.approx(torch.log(torch.tensor(2.0)).item(), abs=1e-6)
    cache = read_json(ctx.tmp / "iter_1" / "ref_logps.json")
    assert cache["settings"]["precision"] == precision
    # The logged mean is float32 (one ulp at 50 is 4e-6).
    assert stats["logps/chosen"] == pytest.approx(sum(e["chosen"] for e in cache["pairs"]) / 2, abs=1e-5)
    if precision == "bf16-mixed":
        # The reference as it was computed before (plain float32, no autocast) is off by ~8e-4 on this
        # tiny model, hundreds of times the tolerance (more on a real one, whose logits are far from flat).
        model, processor = load_model(ctx.tiny.llava)
        batch = collate([PairDataset(pairs, processor, str(ctx.images), get_family("llava"))[i] for i in range(2)], processor.tokenizer.pad_token_id)
        with torch.inference_mode():
            plain, _ = concatenated_logps(model, batch, get_family("llava"))
        assert (plain - torch.tensor([e["chosen"] for e in cache["pairs"]])).abs().max() > 1e-4


def _ranks(ctx: Ctx, name: str, pairs: list[dict], devices: int) -> Path:
    iteration = ctx.tmp / name / "iter_1"
    iteration.mkdir(parents=True)
    (iteration / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}  # one thread: ranks equal to the bit
    proc = subprocess.run([sys.executable, str(TESTS / "dpo_reference_ranks.py"), ctx.tiny.llava, str(iteration),
                           str(ctx.images), str(devices)], env=env, capture_output=True, text=True, timeout=600, cwd=TESTS)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert ("MEMBER: 2/2" in proc.stderr) == (devices == 2)  # Lightning started the second rank
    return iteration


def test_two_gloo_ranks_write_the_reference_file_one_process_writes(ctx: Ctx) -> None:
    pairs = _pairs(ctx, 4)
    one, two = _ranks(ctx, "one", pairs, 1), _ranks(ctx, "two", pairs, 2)
    assert (two / "ref_logps.json").read_bytes() == (one / "ref_logps.json").read_bytes()
    assert [e["id"] for e in read_json(two / "ref_logps.json")["pairs"]] == ["p0", "p1", "p2", "p3"]
    assert sorted(p.name for p in two.iterdir()) == ["adapter", "pairs.jsonl", "ref_logps.json"]  # no pending, no parts


def test_a_stopped_pass_resumes_from_its_pending_file(ctx: Ctx) -> None:
    pairs = _pairs(ctx, 3)
    settings = reference_settings(ctx.tiny.llava, "float32", "sdpa", "32-true")
    keys = [pair_key(p, image_sha256(str(ctx.images), p["image"])) for p in pairs]
    # What a pass stopped after its first batch (of one pair) left; a marker value, to see it reused.
    first = {"key": pending_key(settings, keys[0]), "id": "p0", "chosen": -1.5, "rejected": -2.5}
    # ... and a record computed under other settings for the second pair: never reused.
    other = {"key": pending_key({**settings, "dtype": "bfloat16"}, keys[1]), "id": "p1", "chosen": -9.0, "rejected": -9.0}
    (ctx.tmp / "ref_logps.pending.jsonl").write_text(json.dumps(first) + "\n" + json.dumps(other) + "\n")
    assert logged_reference_pass(ctx, pairs) == f"3 reference log-probs computed into {ctx.tmp / 'ref_logps.json'}"
    values = [(e["chosen"], e["rejected"]) for e in read_json(ctx.tmp / "ref_logps.json")["pairs"]]
    assert values[0] == (-1.5, -2.5)
    assert values[1][0] != -9.0 and values[1][0] < 0
    assert not list(ctx.tmp.glob("ref_logps.pending*"))  # folded into ref_logps.json

