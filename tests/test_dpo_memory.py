"""DPO's forward in bounded memory gives what the full computation gives, to the bit: the LM head and
log-softmax only at answer positions, the vision tower once per pair's image; gradient checkpointing
changes no loss or gradient."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from bad_input_dpo import DPO

from csr.data.tiny import write_tiny_prompts
from csr.dpo.data import PairDataset, collate
from csr.dpo.lora import wrap_lora
from csr.dpo.module import concatenated_logps
from csr.models.chat import IGNORE
from csr.models.checkpoint import load_model
from csr.models.families import get_family


def full_logps(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    """What csr computed before: the image once per row, logits and a float32 log-softmax everywhere."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                pixel_values=torch.cat([batch["image"]["pixel_values"]] * 2), use_cache=False)
    logits, labels = out.logits[:, :-1].float(), batch["labels"][:, 1:]
    mask = labels != IGNORE
    token = torch.gather(logits.log_softmax(-1), 2, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (token * mask).sum(-1)


@pytest.fixture
def setup(tiny_models, tmp_path: Path):
    data = tmp_path / "data"
    prompts = json.loads(write_tiny_prompts(data, n=3).read_text())
    answers = [" A red square.", " A blue star on the left of a green circle.", " Two circles."]
    pairs = [{"id": str(i), "image": p["image"], "prompt": "Describe the image.", "chosen": answers[i],
              "rejected": answers[(i + 1) % 3]} for i, p in enumerate(prompts)]
    model, processor = load_model(tiny_models.llava)
    dataset = PairDataset(pairs, processor, str(data / "images"), get_family("llava"))
    batch = collate([dataset[i] for i in range(3)], processor.tokenizer.pad_token_id)  # unequal lengths: padding
    return model, batch


def _policy(model: torch.nn.Module) -> torch.nn.Module:
    torch.manual_seed(0)
    lora = DPO["lora"]
    policy = wrap_lora(model, lora["r"], lora["alpha"], 0.0, lora["target_modules"] or get_family("llava").lora_targets(), projector="multi_modal_projector")
    with torch.no_grad():  # B != 0, so the adapter and projector take part in the gradients
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    return policy.train()


def _grads(policy: torch.nn.Module, logps: torch.Tensor) -> dict[str, torch.Tensor]:
    policy.zero_grad()
    (logps * torch.tensor([1.0, -0.5, 0.25, 2.0, -1.0, 0.5])).sum().backward()
    return {n: p.grad.clone() for n, p in policy.named_parameters() if p.requires_grad}


def test_answer_positions_only_and_one_vision_pass_equal_the_full_computation(setup) -> None:
    model, batch = setup
    answer_share = (batch["labels"] != IGNORE).float().mean().item()
    assert answer_share < 0.5  # most positions (image and prompt) carry no label
    with torch.inference_mode():  # the reference pass
        chosen, rejected = concatenated_logps(model, batch, get_family("llava"))
        assert torch.equal(torch.cat([chosen, rejected]), full_logps(model, batch))
    policy = _policy(model)  # training: forward and gradients of LoRA and the projector
    chosen, rejected = concatenated_logps(policy, batch, get_family("llava"))
    full = full_logps(policy, batch)
    assert torch.equal(torch.cat([chosen, rejected]), full)
    ours, theirs = _grads(policy, torch.cat([chosen, rejected])), _grads(policy, full_logps(policy, batch))
    assert ours.keys() == theirs.keys() and any("multi_modal_projector" in n for n in ours)
    for name in ours:
        if "lora_" in name:
            assert torch.equal(ours[name], theirs[name]), name
        else:  # the projector's gradient adds both rows' contributions in another order: measured up to 5.4e-7 of its max
            assert (ours[name] - theirs[name]).abs().max() <= 1e-6 * theirs[name].abs().max(), name


def test_gradient_checkpointing_changes_no_loss_or_gradient(setup) -> None:
    model, batch = setup
    policy = _policy(model)
    plain = torch.cat(concatenated_logps(policy, batch, get_family("llava")))
    expected = _grads(policy, plain)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert model.is_gradient_checkpointing
    checkpointed = torch.cat(concatenated_logps(policy, batch, get_family("llava")))
    assert torch.equal(checkpointed, plain)
    for name, grad in _grads(policy, checkpointed).items():
        assert (grad - expected[name]).abs().max() <= 1e-6 * expected[name].abs().max(), name
