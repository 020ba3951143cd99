"""bf16 is exact where it must be: Lightning's real precision plugins of the trainer presets, driven
over a collated DPO batch and a training step on the tiny model.

- The precomputed reference log-probs reach the loss as the float32 the reference pass wrote, to the
  bit, after the plugin's convert_input (DeepSpeedPrecision casts every floating tensor of a batch
  to bf16: a summed log-prob of -200 would move by up to 0.5 nat).
- The reference pass computes as the policy's training forward does, so the log-ratio at step 0 is
  exactly 0 and the loss exactly ln 2, under every preset (DeepSpeed trains bf16 weights without
  autocast; the gpu/ddp presets autocast).
DeepSpeed's strategy refuses a CPU, so its fit is played here by its pieces: the precision plugin
Lightning gives it, and what DeepSpeed's own engine code does to the module's dtypes at start.
"""

from __future__ import annotations

import json
import types
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from bad_input_dpo import DPO, dpo_pair
from omegaconf import OmegaConf
from PIL import Image
from pytorch_lightning.plugins.precision import DeepSpeedPrecision
from scratch_prompts import Ctx

from csr.core.distributed import fit_strategy
from csr.core.errors import CSRError
from csr.data.image_hash import image_sha256
from csr.dpo.data import PairDataset, collate
from csr.dpo.lora import wrap_lora
from csr.dpo.module import DPOModule, concatenated_logps
from csr.dpo.reference import pair_key
from csr.dpo.stage import reference_pass
from csr.models.checkpoint import load_model
from csr.models.clip import ClipScorer, load_clip
from csr.models.families import get_family

ZERO2 = Path(__file__).resolve().parent.parent / "conf" / "trainer" / "deepspeed_zero2.yaml"
ANSWERS = [" A red square.", " A blue star on the left.", " Two green circles."]
# (strategy, precision, model dtype): conf/trainer's presets (cpu: 32-true; gpu, ddp: bf16-mixed;
# deepspeed_zero2/3/3_offload: DeepSpeed bf16-mixed), the paper models' bfloat16 weights among them,
# and what a user may set: bf16-true (HalfPrecision, or DeepSpeed's plugin under DeepSpeed) and
# DeepSpeed's fp16 (16-mixed; without DeepSpeed, Lightning runs bf16-mixed instead on a CPU).
PRESETS = [
    ("auto", "32-true", "float32"),
    ("auto", "bf16-mixed", "float32"),
    ("auto", "bf16-mixed", "bfloat16"),
    ("auto", "bf16-true", "float32"),
    ("deepspeed", "bf16-mixed", "float32"),
    ("deepspeed", "bf16-mixed", "bfloat16"),
    ("deepspeed", "bf16-true", "float32"),
    ("deepspeed", "16-mixed", "float32"),
]


def _fit_kwargs(strategy: str, precision: str, deepspeed: dict | None = None) -> dict:
    """DPO's trainer arguments under the preset (csr.dpo.stage.run gives a DeepSpeedStrategy object);
    `deepspeed`: keys added to the ZeRO-2 preset's DeepSpeed config."""
    if strategy == "deepspeed":
        config = OmegaConf.merge(OmegaConf.load(ZERO2)["deepspeed"], deepspeed or {})
        strategy = fit_strategy(OmegaConf.create({"strategy": "deepspeed", "deepspeed": config}))
    return {"accelerator": "cpu", "devices": 1, "precision": precision, "strategy": strategy, "enable_progress_bar": False}


def _fit_precision(fit_kwargs: dict):
    """The precision plugin the fit's Trainer gets: Lightning's own choice for the strategy."""
    if not isinstance(fit_kwargs["strategy"], str):  # DeepSpeedStrategy: Lightning gives it this one
        return DeepSpeedPrecision(fit_kwargs["precision"])
    trainer = pl.Trainer(accelerator="cpu", devices=1, precision=fit_kwargs["precision"], logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    return trainer.precision_plugin


def _deepspeed_engine_cast(module: torch.nn.Module, strategy, precision: str) -> None:
    """What DeepSpeedEngine does to a module's dtypes at start (its own code, on a stand-in engine),
    under the config Lightning passes it (bf16 enabled for bf16-mixed and bf16-true)."""
    from deepspeed.runtime.config import DeepSpeedConfig
    from deepspeed.runtime.engine import DeepSpeedEngine
    from deepspeed.runtime.keep_in_fp32 import keep_in_fp32_pattern
    from lightning_fabric.strategies.deepspeed import _format_precision_config

    config = json.loads(json.dumps(strategy.config))
    _format_precision_config(config, precision, 0, 1000, 1, 16, 2)
    config.update(train_micro_batch_size_per_gpu=1, gradient_accumulation_steps=1)
    engine = types.SimpleNamespace(module=module, _config=DeepSpeedConfig(config))
    for name in ("fp16_enabled", "bfloat16_enabled", "_mixed_precision_dtypes", "_cast_module_mixed_precision"):
        setattr(engine, name, types.MethodType(getattr(DeepSpeedEngine, name), engine))
    param_dtype, buffer_dtype = engine._mixed_precision_dtypes()
    keep = keep_in_fp32_pattern(module, engine._config.keep_in_fp32_modules, param_dtype)
    engine._cast_module_mixed_precision(param_dtype, buffer_dtype, False, keep)


def _fit(tmp_path: Path, tiny_models, fit_kwargs: dict, dtype: str):
    """The reference pass as run_dpo runs it, then the fit's setup as Lightning and DeepSpeed do it:
    the DPOModule (converted by the fit's plugin, cast by DeepSpeed's engine code), the plugin, the
    training batch as convert_input leaves it (one batch of all pairs: the reference pass's batch) and
    the reference values as ref_logps.json holds them [pairs, (chosen, rejected)]."""
    ctx = Ctx(tmp_path, tiny_models, "raise")
    pairs = [{**dpo_pair(ctx.images, chosen=ANSWERS[i], rid=f"p{i}"), "rejected": ANSWERS[(i + 1) % 3]} for i in range(3)]
    family = get_family("llava")
    model, processor = load_model(tiny_models.llava, dtype=dtype)
    keys = [pair_key(p, image_sha256(str(ctx.images), p["image"])) for p in pairs]
    ref = reference_pass(model, PairDataset(pairs, processor, str(ctx.images), family), keys, model_path=tiny_models.llava,
                         model_cfg=OmegaConf.create({"dtype": dtype, "attn_implementation": "sdpa"}), batch_size=len(pairs),
                         trainer_kwargs=fit_kwargs, cache_path=tmp_path / "ref_logps.json")
    model.train()
    pl.seed_everything(0, verbose=False)
    policy = wrap_lora(model, 4, 8, 0.0, DPO["lora"]["target_modules"], None)
    module = DPOModule(policy, "precomputed", None, family, beta=0.1, loss="sigmoid", label_smoothing=0.0,
                       ipo_form="mean", lr=1e-3, weight_decay=0.0, scheduler="constant", warmup_ratio=0.0, total_steps=1)
    plugin = _fit_precision(fit_kwargs)
    module = plugin.convert_module(module)
    if not isinstance(fit_kwargs["strategy"], str):
        _deepspeed_engine_cast(module, fit_kwargs["strategy"], fit_kwargs["precision"])
    dataset = PairDataset(pairs, processor, str(ctx.images), family, ref)
    batch = plugin.convert_input(collate([dataset[i] for i in range(len(pairs))], processor.tokenizer.pad_token_id))
    return module, plugin, batch, torch.tensor(ref, dtype=torch.float32)


@pytest.mark.parametrize(("strategy", "precision", "dtype"), PRESETS)
def test_reference_log_probs_are_exact_and_the_step_0_log_ratio_is_0(tmp_path: Path, tiny_models, strategy: str,
                                                                     precision: str, dtype: str) -> None:
    module, plugin, batch, written = _fit(tmp_path, tiny_models, _fit_kwargs(strategy, precision), dtype)
    module.on_train_start()  # the fit left the dtypes the reference was computed with
    with plugin.train_step_context():
        ref_chosen, ref_rejected = module.reference_logps(batch)
        assert ref_chosen.dtype == ref_rejected.dtype == torch.float32
        assert torch.equal(ref_chosen, written[:, 0]) and torch.equal(ref_rejected, written[:, 1])
        policy_chosen, policy_rejected = concatenated_logps(module.policy, batch, module.family)
        assert torch.equal(policy_chosen - ref_chosen, torch.zeros(len(written)))  # the log-ratio, to the bit
        assert torch.equal(policy_rejected - ref_rejected, torch.zeros(len(written)))
        loss = module.training_step(batch, 0)
    assert torch.equal(loss.detach(), -F.logsigmoid(torch.zeros(())))  # ln 2 in float32: margin 0


def test_a_fit_that_casts_the_buffers_is_refused_against_a_precomputed_reference(tmp_path: Path, tiny_models) -> None:
    """DeepSpeed told to cast buffers too (data_types.buffer_dtype; older DeepSpeed releases did so
    always): the rotary frequencies the reference pass used in float32 become bf16 under the policy."""
    fit_kwargs = _fit_kwargs("deepspeed", "bf16-mixed", {"data_types": {"buffer_dtype": "bf16"}})
    module, plugin, batch, _ = _fit(tmp_path, tiny_models, fit_kwargs, "float32")
    with pytest.raises(CSRError, match=r"floating buffers: \['torch.float32'\] -> \['torch.bfloat16'\]"):
        module.on_train_start()
    with plugin.train_step_context():  # what it would have trained against
        policy_chosen, _ = concatenated_logps(module.policy, batch, module.family)
        assert not torch.equal(policy_chosen, module.reference_logps(batch)[0])


# --------------------------------------------------------------------------- CLIP's R_I

TEXTS = [" A red square.", " There is a small blue star in the top left corner of the picture.", " x"]


@pytest.mark.parametrize("precision", ["bf16-mixed", "bf16-true"])
def test_clip_scores_in_float32_inside_the_predict_loops_precision(tiny_models, precision: str) -> None:
    """Search, reward and evaluation score R_I inside a predict loop: bf16-mixed's autocast (also under
    the DeepSpeed presets: predict runs with plain DDP) or bf16-true's module conversion and bf16
    default dtype. R_I must be the float32 computation's, to the bit (bf16 resolves it to ~0.1)."""
    image = Image.new("RGB", (32, 32), (200, 30, 40))
    expected = ClipScorer(load_clip(tiny_models.clip_arch, tiny_models.clip_weights, tiny_models.clip_config)).relevance(
        "img.png", image, TEXTS)
    scorer = ClipScorer(load_clip(tiny_models.clip_arch, tiny_models.clip_weights, tiny_models.clip_config))
    plugin = _fit_precision({"strategy": "auto", "precision": precision})
    holder = plugin.convert_module(torch.nn.ModuleDict({"scorer": scorer}))  # as the stage's LightningModule
    with plugin.predict_step_context():
        assert scorer.text_embeddings(TEXTS).dtype == scorer.image_embedding(image).dtype == torch.float32
        scores = holder["scorer"].relevance("img.png", image, TEXTS)
    assert all(p.dtype == torch.float32 for p in scorer.parameters())
    assert scores == expected
