"""DPO losses as pure functions of summed answer log-probs, with TRL's metric names.

Which formulas are TRL 1.16's (`DPOTrainer._compute_loss`, `f_divergence_type="reverse_kl"`,
checked against TRL itself in tests/test_dpo_loss.py), with x = (log pi_c - log ref_c) - (log pi_r - log ref_r):

- `hinge`: relu(1 - beta x), TRL's. Label smoothing is ignored, as in TRL.
- `robust` (Chowdhury et al. 2024): ((1 - ls) (-log s(beta x)) - ls (-log s(-beta x))) / (1 - 2 ls), TRL's.
- `ipo` with `ipo_form=mean` (the default): (x_n - 1 / (2 beta))^2 where each log-ratio is divided by
  its completion's length, x_n = (log pi_c - log ref_c) / |c| - (log pi_r - log ref_r) / |r|, TRL's.
  `ipo_form=sum` is Azar et al.'s Eq. 17 on the summed log-ratios, (x - 1 / (2 beta))^2, not TRL's.
- `sigmoid`: -log s(beta x) is TRL's when label_smoothing = 0. With label_smoothing = ls > 0 it is
  conservative DPO (cDPO, Mitchell 2023): (1 - ls) (-log s(beta x)) + ls (-log s(-beta x)), which
  TRL 1.16's sigmoid no longer applies (it ignores label_smoothing there).

Completion lengths count the labelled answer tokens (answer + EOS), as TRL's completion mask does.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from csr.config.choices import DPO_LOSSES, IPO_FORMS

LossFn = Callable[[torch.Tensor, float, float], torch.Tensor]


def _sigmoid(logits: torch.Tensor, beta: float, label_smoothing: float) -> torch.Tensor:
    # cDPO: the preference label is taken to be flipped with probability label_smoothing.
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


# One function per dpo.loss choice, named _<choice>: the names are written once, in csr/config/choices.py
# DPO_LOSSES (a choice without its function fails here, at import).
LOSSES: dict[str, LossFn] = {name: globals()[f"_{name}"] for name in DPO_LOSSES}


def per_token(logratios: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """A summed log-ratio divided by its completion length (at least 1, as TRL clamps it)."""
    if lengths is None:
        raise ValueError("ipo_form='mean' needs the completion lengths of chosen and rejected")
    return logratios / lengths.to(logratios).clamp(min=1.0)


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
    *,
    ipo_form: str = "mean",
    chosen_lengths: torch.Tensor | None = None,
    rejected_lengths: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair losses and the implicit rewards beta * (log pi - log ref) of chosen and rejected.

    Log-probs are summed over answer tokens, shape [batch]; lengths (answer tokens per completion,
    shape [batch]) are read only by `ipo` with `ipo_form=mean`.
    """
    if loss_type not in LOSSES:
        raise ValueError(f"unknown DPO loss {loss_type!r}; expected one of {sorted(LOSSES)}")
    if ipo_form not in IPO_FORMS:
        raise ValueError(f"unknown ipo_form {ipo_form!r}; expected one of {list(IPO_FORMS)}")
    chosen_ratio, rejected_ratio = policy_chosen - ref_chosen, policy_rejected - ref_rejected
    if loss_type == "ipo" and ipo_form == "mean":
        chosen_ratio, rejected_ratio = per_token(chosen_ratio, chosen_lengths), per_token(rejected_ratio, rejected_lengths)
    losses = LOSSES[loss_type](chosen_ratio - rejected_ratio, beta, label_smoothing)
    # Rewards stay on the summed log-ratios for every loss, as TRL logs them.
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
