"""DPO as a LightningModule: a LoRA policy against a frozen reference (one of three forms)."""

from __future__ import annotations

import math

import pytorch_lightning as pl
import torch

from csr.core.errors import CSRError
from csr.dpo.data import answer_positions, reference_from_batch, sequence_logps
from csr.dpo.loss import dpo_loss, reward_metrics
from csr.dpo.schedule import lr_factor
from csr.models.compat import logits_at
from csr.models.families.base import Family


def concatenated_logps(model: torch.nn.Module, batch: dict, family: Family) -> tuple[torch.Tensor, torch.Tensor]:
    """Chosen and rejected answers' summed log-probs from one forward over both halves of the batch.

    The vision tower and projector run once per pair's image (its two rows share it) and the LM head
    only at answer positions; both equal the full computation to the bit (tests/test_dpo_memory.py).
    """
    image = family.image_inputs(batch["image"], next(model.parameters()).dtype)
    text = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], **batch["types"]}
    # Chosen rows, then rejected rows, each pair's image serving both (csr/models/compat.py: on transformers
    # without precomputed features the tower runs per row, the values are the same).
    logits = logits_at(model, family, text, image, 2, answer_positions(batch["labels"]))
    logps = sequence_logps(logits, batch["labels"])
    half = logps.shape[0] // 2
    return logps[:half], logps[half:]


def dtype_profile(model: torch.nn.Module) -> dict[str, list[str]]:
    """The dtypes of a model's frozen parameters and floating buffers: what the reference's numerics
    depend on besides the precision plugin (the trainable LoRA weights are 0 in effect at step 0)."""
    return {"frozen parameters": sorted({str(p.dtype) for p in model.parameters() if not p.requires_grad}),
            "floating buffers": sorted({str(b.dtype) for b in model.buffers() if b.is_floating_point()})}


class DPOModule(pl.LightningModule):
    def __init__(self, policy, reference: str, ref_model: torch.nn.Module | None, family: Family, *, beta: float, loss: str,
                 label_smoothing: float, ipo_form: str, lr: float, weight_decay: float, scheduler: str, warmup_ratio: float,
                 total_steps: int):
        super().__init__()
        self.policy, self.reference, self.ref_model, self.family = policy, reference, ref_model, family
        self.beta, self.loss_type, self.label_smoothing, self.ipo_form = beta, loss, label_smoothing, ipo_form
        self.lr, self.weight_decay, self.scheduler = lr, weight_decay, scheduler
        self.warmup_steps = math.ceil(warmup_ratio * total_steps)
        self.total_steps = total_steps
        self._sums: dict[str, torch.Tensor] = {}
        self._pairs = 0
        self.epoch_means: dict[str, float] = {}  # each metric's mean over the last epoch's pairs
        # The dtypes the precomputed reference was computed with (csr.dpo.stage.cast_as_fit gave the
        # model the fit's dtypes before the reference pass): checked once the strategy has set up.
        self.reference_dtypes = dtype_profile(policy) if reference == "precomputed" else None

    def on_train_start(self) -> None:
        """Refuse to train against a precomputed reference computed with other dtypes than the fit's:
        e.g. a DeepSpeed whose engine casts the buffers (rotary frequencies) to bf16 too, or a
        `data_types.buffer_dtype` in trainer.deepspeed. The step-0 log-ratio would not be 0."""
        if self.reference_dtypes is None:
            return
        now = dtype_profile(self.policy)
        if now != self.reference_dtypes:
            changed = "; ".join(f"{k}: {self.reference_dtypes[k]} -> {now[k]}" for k in now if now[k] != self.reference_dtypes[k])
            raise CSRError(f"DPO: the trainer changed the model's dtypes after the reference pass ({changed}), so the "
                           "precomputed reference log-probs are not the policy's at step 0; use dpo.reference="
                           "adapter_disabled, or a trainer config that casts only the parameters (DeepSpeed 0.19, "
                           "no data_types.buffer_dtype)")

    def on_train_epoch_start(self) -> None:
        self._sums, self._pairs = {}, 0

    def on_train_epoch_end(self) -> None:
        """Pair-weighted means over the epoch, over every rank: what the summary reports ("dpo acc"),
        not the last batch's value."""
        keys = sorted(self._sums)
        if not keys:
            return
        totals = torch.stack([self._sums[k] for k in keys] + [torch.tensor(float(self._pairs), device=self._sums[keys[0]].device)])
        gathered = self.all_gather(totals)
        totals = gathered.sum(0) if gathered.dim() > 1 else gathered
        self.epoch_means = {k: (totals[i] / totals[-1]).item() for i, k in enumerate(keys)}

    def reference_logps(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        if self.reference == "precomputed":
            return reference_from_batch(batch)  # float32 to the bit, whatever the precision plugin
        with torch.no_grad():
            if self.reference == "adapter_disabled":
                with self.policy.disable_adapter():
                    return concatenated_logps(self.policy, batch, self.family)
            return concatenated_logps(self.ref_model, batch, self.family)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        policy_chosen, policy_rejected = concatenated_logps(self.policy, batch, self.family)
        ref_chosen, ref_rejected = self.reference_logps(batch)
        losses, chosen_rewards, rejected_rewards = dpo_loss(
            policy_chosen, policy_rejected, ref_chosen.to(policy_chosen), ref_rejected.to(policy_chosen),
            beta=self.beta, loss_type=self.loss_type, label_smoothing=self.label_smoothing, ipo_form=self.ipo_form,
            chosen_lengths=batch["chosen_lengths"], rejected_lengths=batch["rejected_lengths"],
        )
        loss = losses.mean()
        if not torch.isfinite(loss):
            # Stop before the optimizer writes NaN into the weights; the last saved adapter stays good.
            raise CSRError(
                f"DPO loss is {loss.item()} at global step {self.global_step}, batch {batch_idx} "
                f"(pair ids {batch['ids']}); policy logps {policy_chosen.tolist()} / {policy_rejected.tolist()}"
            )
        metrics = {"loss": loss.detach(), **reward_metrics(chosen_rewards, rejected_rewards),
                   "logps/chosen": policy_chosen.detach().mean(), "logps/rejected": policy_rejected.detach().mean()}
        self.log_dict(metrics, on_step=True, on_epoch=False, batch_size=len(batch["ids"]))
        n = len(batch["ids"])
        for key, value in metrics.items():
            self._sums[key] = self._sums.get(key, 0.0) + value.detach().float() * n
        self._pairs += n
        self.log("lr", self.optimizers().param_groups[0]["lr"] if self._trainer else self.lr, on_step=True)
        return loss

    def configure_optimizers(self):
        params = [p for p in self.policy.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_factor(step, self.warmup_steps, self.total_steps, self.scheduler))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
