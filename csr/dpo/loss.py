"""DPO losses as pure functions of summed answer log-probs (TRL's formulas and metric names)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

LossFn = Callable[[torch.Tensor, float, float], torch.Tensor]


def _sigmoid(logits: torch.Tensor, beta: float, label_smoothing: float) -> torch.Tensor:
    return -F.logsigmoid(beta * logits) * (1 - label_smoothing) - F.logsigmoid(-beta * logits) * label_smoothing


def _robust(logits: torch.Tensor, beta: float, label_smoothing: float) -> torch.Tensor:
    # Chowdhury et al. 2024: unbiased under label noise of rate `label_smoothing`.
    return (
        -F.logsigmoid(beta * logits) * (1 - label_smoothing) + F.logsigmoid(-beta * logits) * label_smoothing
    ) / (1 - 2 * label_smoothing)


def _hinge(logits: torch.Tensor, beta: float, label_smoothing: float) -> torch.Tensor:
    return torch.relu(1 - beta * logits)


def _ipo(logits: torch.Tensor, beta: float, label_smoothing: float) -> torch.Tensor:
    # Azar et al. 2023: regress the log-ratio gap to 1 / (2 beta) instead of pushing it to infinity.
    return (logits - 1 / (2 * beta)) ** 2


LOSSES: dict[str, LossFn] = {"sigmoid": _sigmoid, "robust": _robust, "hinge": _hinge, "ipo": _ipo}


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair losses and the implicit rewards beta * (log pi - log ref) of chosen and rejected.

    All inputs are log-probs summed over answer tokens, shape [batch].
    """
    if loss_type not in LOSSES:
        raise ValueError(f"unknown DPO loss {loss_type!r}; expected one of {sorted(LOSSES)}")
    logits = (policy_chosen - policy_rejected) - (ref_chosen - ref_rejected)
    losses = LOSSES[loss_type](logits, beta, label_smoothing)
    chosen_rewards = beta * (policy_chosen - ref_chosen).detach()
    rejected_rewards = beta * (policy_rejected - ref_rejected).detach()
    return losses, chosen_rewards, rejected_rewards


def reward_metrics(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> dict[str, torch.Tensor]:
    """The names everyone reads (TRL's)."""
    return {
        "rewards/chosen": chosen_rewards.mean(),
        "rewards/rejected": rejected_rewards.mean(),
        "rewards/margins": (chosen_rewards - rejected_rewards).mean(),
        "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean(),
    }
