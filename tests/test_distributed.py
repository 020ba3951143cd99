"""Scale-out on CPU: the part-file merge of sharded prediction, the trainer presets (DeepSpeed composes
and validates; it only runs on GPUs), and a 2-process DDP run (gloo) equal to the single-process one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from csr_runs import ddp_run, sweep, tiny_env
from hydra import compose, initialize_config_dir
from safetensors.torch import load_file

from csr.cli import CONF_DIR
from csr.config.schema import validate
from csr.core.distributed import check_trainer, fit_strategy, predict_strategy
from csr.core.errors import CSRError
from csr.core.io import read_json, read_jsonl
from csr.run.predict import consolidate, part_path

# -- merging the ranks' part files ------------------------------------------------------------------


def _write(path: Path, ids: list[str], torn: bool = False) -> None:
    text = "".join(json.dumps({"id": i, "v": i * 2}) + "\n" for i in ids)
    path.write_text(text + ('{"id": "x", "v' if torn else ""))


def test_parts_merge_in_item_order_and_half_batches_are_dropped(tmp_path):
    out = tmp_path / "search.jsonl"
    batches = [["a", "b"], ["c", "d"], ["e", "f"], ["g", "h"]]
    _write(out, ["a", "b"])  # a finished single-process start
    # A crashed 2-rank resume: rank 0 had batches c,d and g (half), rank 1 had e,f then a torn line.
    _write(part_path(out, 0), ["c", "d", "g"])
    _write(part_path(out, 1), ["f", "e"], torn=True)
    consolidate(out, batches, "id")
    assert [r["id"] for r in read_jsonl(out)] == ["a", "b", "c", "d", "e", "f"]  # g's batch is redone whole
    assert not list(tmp_path.glob("*.part*"))
    stamp = out.stat().st_mtime_ns
    consolidate(out, batches, "id")  # nothing to merge: the file is left alone
    assert out.stat().st_mtime_ns == stamp


# -- trainer presets --------------------------------------------------------------------------------

PATHS = ["run_dir=/tmp/x", "logger.tracking_uri=null", "model.path=/m", "reward.clip.weights=/w",
         "data.prompt_file=/p.json", "data.image_root=/i"]
SHAPESWORLD = ["data.shapesworld.root=/sw", "eval.shapesworld.root=/sw"]


def _trainer(*overrides: str, paths: tuple[str, ...] = (*PATHS, *SHAPESWORLD)):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return validate(compose("config", overrides=[*paths, *overrides])).trainer


def test_ddp_preset_shards_prediction_and_trains_with_ddp():
    t = _trainer("trainer=ddp")
    assert (t.accelerator, t.devices, t.precision, fit_strategy(t)) == ("gpu", -1, "bf16-mixed", "ddp")
    assert predict_strategy(t) == "ddp"
    assert predict_strategy(_trainer("trainer=cpu")) == "auto"
    check_trainer(t)


@pytest.mark.parametrize(("preset", "stage"), [("deepspeed_zero2", 2), ("deepspeed_zero3", 3),
                                               ("deepspeed_zero3_offload", 3)])
def test_deepspeed_presets_validate_and_build_lightnings_strategy(preset, stage):
    pytest.importorskip("deepspeed", reason="DeepSpeed is the optional extra .[deepspeed] (in .[dev])")
    from pytorch_lightning.strategies import DeepSpeedStrategy

    t = _trainer(f"trainer={preset}")
    check_trainer(t)  # DeepSpeed's own schema accepts the ZeRO section
    strategy = fit_strategy(t)
    assert isinstance(strategy, DeepSpeedStrategy) and t.precision == "bf16-mixed"
    assert strategy.config["zero_optimization"]["stage"] == stage
    assert ("offload_optimizer" in strategy.config["zero_optimization"]) == preset.endswith("offload")
    with pytest.raises(CSRError, match="CUDA GPUs only"):
        check_trainer(_trainer(f"trainer={preset}", "trainer.accelerator=cpu"))


def test_paper_preset_trains_with_the_reference_zero2_settings():
    pytest.importorskip("deepspeed")
    t = _trainer("experiment=paper_llava15_7b", paths=tuple(PATHS))
    zero = fit_strategy(t).config["zero_optimization"]
    assert (zero["stage"], zero["overlap_comm"], zero["contiguous_gradients"]) == (2, True, True)


@pytest.mark.parametrize(("override", "message"), [
    ("trainer.strategy=fsdp", "'trainer.strategy'"),
    ("+trainer.deepspeed.zero_optimization.overlapcomm=true", "overlapcomm"),
    ("+trainer.deepspeed.gradient_accumulation_steps=4", "dpo.grad_accumulation"),
])
def test_bad_strategy_settings_fail_at_start(override, message):
    pytest.importorskip("deepspeed")
    with pytest.raises(CSRError, match=message):
        check_trainer(_trainer("trainer=deepspeed_zero2", override))


# -- 2-process DDP ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(tiny_models, tmp_path_factory) -> tuple[Path, Path]:
    """The single-process run (DPO batch 2) and the same run on 2 CPU processes (DPO batch 1 each)."""
    env = tiny_env(tiny_models)
    return sweep(tmp_path_factory, env) / "sweep" / "1", ddp_run(tmp_path_factory, env)


@pytest.mark.slow
def test_sharded_search_reward_and_eval_equal_the_single_process_files(runs):
    single, ddp = runs
    for name in ("iter_0/eval/generate/answers.jsonl", "iter_1/search.jsonl", "iter_1/rewards.jsonl",
                 "iter_1/pairs.jsonl"):
        assert (ddp / name).read_bytes() == (single / name).read_bytes(), name
    assert not list(ddp.rglob("*.part*"))


@pytest.mark.slow
def test_ddp_dpo_steps_equal_the_single_process_steps(runs):
    single, ddp = runs
    a = load_file(single / "iter_1" / "adapter" / "adapter_model.safetensors")
    b = load_file(ddp / "iter_1" / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for key in a:  # the same pairs per step; only the float summation order differs
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5)
    s, d = read_json(single / "iter_1" / "metrics.json")["dpo"], read_json(ddp / "iter_1" / "metrics.json")["dpo"]
    assert d["steps"] == s["steps"] == 4 and d["last/lr"] == pytest.approx(s["last/lr"])
    # the epoch's means are over every rank's pairs: the single process's
    for key in ("loss", "rewards/accuracies", "rewards/margins"):
        assert d[key] == pytest.approx(s[key], rel=1e-4, abs=1e-6), key


@pytest.mark.slow
def test_only_rank_zero_writes_and_logs(runs):
    from mlflow.tracking import MlflowClient

    _, ddp = runs
    client = MlflowClient(tracking_uri=f"sqlite:///{ddp / 'mlflow.db'}")
    runs_ = client.search_runs([client.get_experiment_by_name("csr").experiment_id])
    assert sorted(r.info.run_name for r in runs_) == sorted([ddp.name, "iter_1"])
    assert [p.name for p in ddp.glob("config*.yaml")] == ["config.yaml"]
    assert read_json(ddp / "run_info.json")["overrides"][-1] == "trainer.deterministic=true"
