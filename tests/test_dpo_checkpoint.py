"""The adapter is saved inside the fit (on_train_end), before Lightning's teardown, and trainable
parameters are counted at full size when ZeRO-3 has partitioned them (DeepSpeed itself needs CUDA:
experiments/gpu_check runs the real thing)."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file
from torch.utils.data import DataLoader, TensorDataset

from csr.dpo import checkpoint
from csr.dpo.checkpoint import SaveAdapter, trainable_params


def test_trainable_params_counts_partitioned_parameters_by_ds_numel():
    model = torch.nn.Module()
    model.frozen = torch.nn.Parameter(torch.zeros(3, 5), requires_grad=False)
    model.whole = torch.nn.Parameter(torch.zeros(2, 4))
    model.partitioned = torch.nn.Parameter(torch.empty(0))  # what ZeRO-3 leaves on a rank
    model.partitioned.ds_numel = 128 * 4096
    assert model.partitioned.numel() == 0
    assert trainable_params(model) == 8 + 128 * 4096


class Regression(pl.LightningModule):
    def __init__(self, policy: torch.nn.Module):
        super().__init__()
        self.policy = policy

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self.policy(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD([p for p in self.policy.parameters() if p.requires_grad], lr=0.1)


def test_adapter_is_saved_in_the_training_hook_before_teardown(tmp_path: Path, monkeypatch):
    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Linear(4, 4))
    policy = get_peft_model(base, LoraConfig(r=2, lora_alpha=4, target_modules=["0"]))
    assert trainable_params(policy) == 2 * 4 + 4 * 2
    data = TensorDataset(torch.randn(8, 4), torch.randn(8, 4))
    adapter = tmp_path / "adapter"
    events = []
    save = checkpoint.save_adapter
    monkeypatch.setattr(checkpoint, "save_adapter", lambda p, d: (events.append("save"), save(p, d)))
    trainer = pl.Trainer(accelerator="cpu", max_epochs=2, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[SaveAdapter(policy, adapter)])
    teardown = trainer.strategy.teardown
    monkeypatch.setattr(trainer.strategy, "teardown", lambda: (events.append("teardown"), teardown()))
    trainer.fit(Regression(policy), DataLoader(data, batch_size=4))
    assert events == ["save", "teardown"] and trainer.global_step == 4
    # What was saved is what was trained, and a fresh base with it loaded computes the same outputs.
    saved = load_file(adapter / "adapter_model.safetensors")
    trained = {k: v for k, v in policy.state_dict().items() if "lora_" in k}
    assert len(saved) == len(trained) == 2
    assert all(torch.equal(saved[k.replace(".default", "")], v) for k, v in trained.items())
    assert not torch.equal(trained["base_model.model.0.lora_B.default.weight"], torch.zeros(4, 2))  # it trained
    torch.manual_seed(0)
    reloaded = PeftModel.from_pretrained(torch.nn.Sequential(torch.nn.Linear(4, 4)), str(adapter))
    x = torch.randn(3, 4)
    assert torch.equal(reloaded(x), policy(x))
