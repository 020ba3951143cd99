"""DPO losses, implicit rewards and metrics, answer log-probs and the pair batch, by hand."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from csr.dpo.data import answer_positions, collate, concat_padded, reference_from_batch, sequence_logps
from csr.dpo.loss import LOSSES, dpo_loss, reward_metrics
from csr.models.chat import IGNORE

# Pair 0: policy chosen -1, rejected -3; ref chosen -2, rejected -2
#   logits = (-1 - -3) - (-2 - -2) = 2;  beta * logits = 0.2
# Pair 1: policy chosen -5, rejected -4; ref chosen -4, rejected -4
#   logits = (-5 - -4) - 0 = -1;  beta * logits = -0.1
POLICY_CHOSEN = [-1.0, -5.0]
POLICY_REJECTED = [-3.0, -4.0]
REF_CHOSEN = [-2.0, -4.0]
REF_REJECTED = [-2.0, -4.0]
# Completion lengths (answer tokens + EOS): read by ipo's per-token form only.
#   pair 0: log-ratios chosen -1 - -2 = 1 over 4 tokens, rejected -3 - -2 = -1 over 2: 1/4 + 1/2 = 0.75
#   pair 1: chosen -5 - -4 = -1 over 5, rejected 0 over 10: -0.2
CHOSEN_LEN = [4, 5]
REJECTED_LEN = [2, 10]
BETA = 0.1

A = math.log1p(math.exp(-0.2))  # -log sigmoid(0.2) = 0.5981388693815918
A_NEG = math.log1p(math.exp(0.2))  # -log sigmoid(-0.2) = A + 0.2 = 0.7981388693815918
B = math.log1p(math.exp(0.1))  # -log sigmoid(-0.1) = 0.744396660073571
B_NEG = math.log1p(math.exp(-0.1))  # -log sigmoid(0.1) = B - 0.1


def _inputs(requires_grad: bool = False) -> tuple[torch.Tensor, ...]:
    def t(values: list[float], grad: bool) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.float64, requires_grad=grad)

    return (t(POLICY_CHOSEN, requires_grad), t(POLICY_REJECTED, requires_grad),
            t(REF_CHOSEN, False), t(REF_REJECTED, False))


def test_sigmoid_example_from_the_paper_formula() -> None:
    losses, _, _ = dpo_loss(*_inputs()[0:4], beta=BETA, loss_type="sigmoid")
    # -log sigmoid(0.1 * 2) = log(1 + e^-0.2) = log(1.8187307531) = 0.5981388694
    assert losses[0].item() == pytest.approx(0.598138869381)


@pytest.mark.parametrize(
    ("loss_type", "label_smoothing", "expected"),
    [
        # sigmoid: (1 - ls) * -log s(b x) + ls * -log s(-b x)
        ("sigmoid", 0.0, [A, B]),
        ("sigmoid", 0.1, [0.9 * A + 0.1 * A_NEG, 0.9 * B + 0.1 * B_NEG]),  # [0.6181388694, 0.7343966601]
        ("sigmoid", 0.2, [0.8 * A + 0.2 * A_NEG, 0.8 * B + 0.2 * B_NEG]),  # [0.6381388694, 0.7243966601]
        # robust: ((1 - ls) * -log s(b x) - ls * -log s(-b x)) / (1 - 2 ls)
        ("robust", 0.0, [A, B]),
        ("robust", 0.1, [(0.9 * A - 0.1 * A_NEG) / 0.8, (0.9 * B - 0.1 * B_NEG) / 0.8]),  # A - 0.025
        ("robust", 0.2, [(0.8 * A - 0.2 * A_NEG) / 0.6, (0.8 * B - 0.2 * B_NEG) / 0.6]),
        # hinge: relu(1 - b x) = [1 - 0.2, 1 + 0.1]; label smoothing is ignored
        ("hinge", 0.0, [0.8, 1.1]),
        ("hinge", 0.1, [0.8, 1.1]),
        # ipo, ipo_form=sum: (x - 1 / (2 b))^2 = (2 - 5)^2, (-1 - 5)^2
        ("ipo", 0.0, [9.0, 36.0]),
        ("ipo", 0.1, [9.0, 36.0]),
    ],
)
def test_loss_values(loss_type: str, label_smoothing: float, expected: list[float]) -> None:
    losses, chosen, rejected = dpo_loss(*_inputs(), beta=BETA, loss_type=loss_type, label_smoothing=label_smoothing,
                                        ipo_form="sum")
    assert_close(losses, torch.tensor(expected, dtype=torch.float64))
    # Implicit rewards do not depend on the loss form: beta * (pi - ref)
    assert_close(chosen, torch.tensor([0.1 * (-1 + 2), 0.1 * (-5 + 4)], dtype=torch.float64))  # [0.1, -0.1]
    assert_close(rejected, torch.tensor([0.1 * (-3 + 2), 0.1 * (-4 + 4)], dtype=torch.float64))  # [-0.1, 0]


def _lengths() -> dict[str, torch.Tensor]:
    return {"chosen_lengths": torch.tensor(CHOSEN_LEN), "rejected_lengths": torch.tensor(REJECTED_LEN)}


# Per-pair losses from TRL 1.16.0 itself: DPOTrainer._compute_loss (f_divergence_type="reverse_kl",
# precompute_ref_logps=True) called on the inputs above, one pair per call, with a stand-in model whose
# per-token log-probs sum to POLICY_* over completion masks of CHOSEN_LEN / REJECTED_LEN tokens
# (/tmp/scratch_dpo/trl_values.py, trl 1.16.0 from its wheel, float64). TRL ignores label smoothing
# for sigmoid and hinge; csr's sigmoid with label_smoothing > 0 is cDPO instead (test below).
TRL_1_16 = [
    ("sigmoid", 0.1, 0.0, [0.5981388693815918, 0.7443966600735709]),
    ("sigmoid", 0.5, 0.0, [0.31326168751822286, 0.9740769841801067]),
    ("hinge", 0.1, 0.0, [0.8, 1.1]),
    ("hinge", 0.1, 0.1, [0.8, 1.1]),
    ("ipo", 0.1, 0.0, [18.0625, 27.040000000000003]),  # (0.75 - 5)^2, (-0.2 - 5)^2
    ("ipo", 0.5, 0.0, [0.0625, 1.44]),  # (0.75 - 1)^2, (-0.2 - 1)^2
    ("robust", 0.1, 0.0, [0.5981388693815918, 0.7443966600735709]),
    ("robust", 0.1, 0.1, [0.5731388693815918, 0.7568966600735708]),
    ("robust", 0.1, 0.2, [0.5314722027149251, 0.7777299934069042]),
]


@pytest.mark.parametrize(("loss_type", "beta", "label_smoothing", "expected"), TRL_1_16)
def test_losses_equal_trl_1_16(loss_type: str, beta: float, label_smoothing: float, expected: list[float]) -> None:
    losses, _, _ = dpo_loss(*_inputs(), beta=beta, loss_type=loss_type, label_smoothing=label_smoothing, **_lengths())
    assert_close(losses, torch.tensor(expected, dtype=torch.float64))


def test_ipo_default_form_is_trls_per_token_form() -> None:
    default, _, _ = dpo_loss(*_inputs(), loss_type="ipo", **_lengths())
    mean, _, _ = dpo_loss(*_inputs(), loss_type="ipo", ipo_form="mean", **_lengths())
    summed, _, _ = dpo_loss(*_inputs(), loss_type="ipo", ipo_form="sum", **_lengths())
    assert_close(default, mean)
    assert_close(mean, torch.tensor([18.0625, 27.04], dtype=torch.float64))
    assert_close(summed, torch.tensor([9.0, 36.0], dtype=torch.float64))  # lengths not read


def test_ipo_length_is_clamped_to_one_and_required() -> None:
    # An empty completion counts as one token, as TRL's clamp(min=1): pair 0 = (1 / 1 + 1 / 2 - 5)^2
    losses, _, _ = dpo_loss(*_inputs(), loss_type="ipo", chosen_lengths=torch.tensor([0, 5]),
                            rejected_lengths=torch.tensor(REJECTED_LEN))
    assert losses[0].item() == pytest.approx((1.5 - 5) ** 2)  # 12.25
    with pytest.raises(ValueError, match="needs the completion lengths"):
        dpo_loss(*_inputs(), loss_type="ipo")
    with pytest.raises(ValueError, match="unknown ipo_form 'median'"):
        dpo_loss(*_inputs(), loss_type="ipo", ipo_form="median", **_lengths())


def test_sigmoid_label_smoothing_is_cdpo_not_trl() -> None:
    # TRL 1.16 gives [0.5981388693815918, 0.7443966600735709] at label_smoothing 0.1 (it ignores it);
    # csr's sigmoid is cDPO there: 0.9 * -log s(0.2) + 0.1 * -log s(-0.2).
    losses, _, _ = dpo_loss(*_inputs(), loss_type="sigmoid", label_smoothing=0.1, **_lengths())
    assert_close(losses, torch.tensor([0.6181388693815918, 0.7343966600735709], dtype=torch.float64))


def test_lengths_change_nothing_but_ipo_mean() -> None:
    for loss_type in ("sigmoid", "robust", "hinge"):
        with_lengths, _, _ = dpo_loss(*_inputs(), loss_type=loss_type, label_smoothing=0.1, **_lengths())
        without, _, _ = dpo_loss(*_inputs(), loss_type=loss_type, label_smoothing=0.1)
        assert_close(with_lengths, without)


def test_robust_closed_forms() -> None:
    # With -log s(-z) = -log s(z) + z: robust = -log s(b x) - ls * b x / (1 - 2 ls)
    losses, _, _ = dpo_loss(*_inputs(), beta=BETA, loss_type="robust", label_smoothing=0.1)
    assert losses[0].item() == pytest.approx(A - 0.1 * 0.2 / 0.8)  # 0.5731388694
    assert losses[1].item() == pytest.approx(B + 0.1 * 0.1 / 0.8)  # b x = -0.1: 0.7568966601


def test_beta_scales_logits_and_rewards() -> None:
    losses, chosen, rejected = dpo_loss(*_inputs(), beta=0.5, loss_type="sigmoid")
    # beta x = [1.0, -0.5]
    assert_close(losses, torch.tensor([math.log1p(math.exp(-1.0)), math.log1p(math.exp(0.5))], dtype=torch.float64))
    assert_close(chosen, torch.tensor([0.5, -0.5], dtype=torch.float64))
    assert_close(rejected, torch.tensor([-0.5, 0.0], dtype=torch.float64))


def test_default_is_sigmoid_beta_01() -> None:
    losses, _, _ = dpo_loss(*_inputs())
    assert_close(losses, torch.tensor([A, B], dtype=torch.float64))


def test_unknown_loss_raises() -> None:
    with pytest.raises(ValueError, match="unknown DPO loss 'kto'"):
        dpo_loss(*_inputs(), loss_type="kto")
    assert sorted(LOSSES) == ["hinge", "ipo", "robust", "sigmoid"]


def test_gradients_reach_policy_only_and_rewards_are_detached() -> None:
    pc, pr, rc, rr = _inputs(requires_grad=True)
    losses, chosen, rejected = dpo_loss(pc, pr, rc, rr, beta=BETA, loss_type="sigmoid")
    assert losses.requires_grad
    assert not chosen.requires_grad and not rejected.requires_grad
    assert chosen.grad_fn is None and rejected.grad_fn is None
    losses.sum().backward()
    # d/d pi_chosen [-log s(b x)] = -b (1 - s(b x)) = -b s(-b x)
    g = [-BETA / (1 + math.exp(0.2)), -BETA / (1 + math.exp(-0.1))]  # [-0.0450166, -0.0524979]
    assert_close(pc.grad, torch.tensor(g, dtype=torch.float64))
    assert_close(pr.grad, -torch.tensor(g, dtype=torch.float64))
    assert rc.grad is None and rr.grad is None


def test_reward_metrics() -> None:
    _, chosen, rejected = dpo_loss(*_inputs(), beta=BETA)  # chosen [0.1, -0.1], rejected [-0.1, 0]
    metrics = reward_metrics(chosen, rejected)
    assert set(metrics) == {"rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"}
    assert metrics["rewards/chosen"].item() == pytest.approx(0.0)  # (0.1 - 0.1) / 2
    assert metrics["rewards/rejected"].item() == pytest.approx(-0.05)  # (-0.1 + 0) / 2
    assert metrics["rewards/margins"].item() == pytest.approx(0.05)  # (0.2 + -0.1) / 2
    assert metrics["rewards/accuracies"].item() == pytest.approx(0.5)  # [0.1 > -0.1, -0.1 > 0]


def test_reward_accuracy_counts_ties_as_wrong() -> None:
    metrics = reward_metrics(torch.tensor([0.2, 0.3, 0.0]), torch.tensor([0.2, 0.1, 0.1]))
    assert metrics["rewards/accuracies"].item() == pytest.approx(1 / 3)


# --------------------------------------------------------------------------- sequence_logps


def test_sequence_logps_hand_values() -> None:
    big = [5.0, -5.0, 0.0]  # positions whose prediction is never read
    # Row 0: prompt of 2 tokens, answer tokens 2 then 0.
    #   logits[1] predicts labels[2] = 2: softmax([0, 0, ln 2]) = [1/4, 1/4, 1/2] -> ln(1/2)
    #   logits[2] predicts labels[3] = 0: softmax([ln 3, 0, 0]) = [3/5, 1/5, 1/5] -> ln(3/5)
    #   sum = ln(0.3) = -1.2039728
    # Row 1: answer tokens 1, 1 then padding.
    #   logits[0] predicts labels[1] = 1: softmax([0, 0, 0]) -> ln(1/3)
    #   logits[1] predicts labels[2] = 1: softmax([0, ln 2, 0]) = [1/4, 1/2, 1/4] -> ln(1/2)
    #   sum = ln(1/6) = -1.7917595
    # Row 2: nothing labelled -> 0.
    logits = torch.tensor([
        [big, [0.0, 0.0, math.log(2)], [math.log(3), 0.0, 0.0], big],
        [[0.0, 0.0, 0.0], [0.0, math.log(2), 0.0], big, big],
        [big, big, big, big],
    ])
    labels = torch.tensor([
        [IGNORE, IGNORE, 2, 0],
        [IGNORE, 1, 1, IGNORE],
        [IGNORE, IGNORE, IGNORE, IGNORE],
    ])
    keep = answer_positions(labels)
    assert keep.tolist() == [[False, True, True, False], [True, True, False, False], [False] * 4]
    assert_close(sequence_logps(logits[keep], labels), torch.tensor([math.log(0.3), math.log(1 / 6), 0.0]))


def test_sequence_logps_is_float32_for_half_logits() -> None:
    logits = torch.zeros(1, 3, 4, dtype=torch.bfloat16)
    labels = torch.tensor([[IGNORE, 1, 3]])
    out = sequence_logps(logits[answer_positions(labels)], labels)
    assert out.dtype == torch.float32
    assert_close(out, torch.tensor([2 * math.log(1 / 4)]))  # uniform over 4, two answer tokens


# --------------------------------------------------------------------------- collate

PAD = 99


def _items(with_ref: bool) -> list[dict]:
    a = {"id": "a", "prompt_ids": [1, 2, 3], "chosen_ids": [4, 5], "rejected_ids": [6],
         "prompt_types": {"token_type_ids": [0, 1, 0]}, "image": {"pixel_values": torch.full((1, 3, 2, 2), 1.0)}}
    b = {"id": "b", "prompt_ids": [7], "chosen_ids": [8, 9, 10, 11], "rejected_ids": [12, 13],
         "prompt_types": {"token_type_ids": [1]}, "image": {"pixel_values": torch.full((1, 3, 2, 2), 2.0)}}
    if with_ref:
        a.update(ref_chosen=-1.5, ref_rejected=-2.5)
        b.update(ref_chosen=-3.0, ref_rejected=-4.0)
    return [a, b]


def test_concat_padded_pads_every_dim_after_the_first() -> None:
    # two pairs' images of 2 and 3 crops (tiling families): the batch holds 3 slots each, zero-padded
    a, b = torch.ones(1, 2, 3, 4, 4), torch.full((1, 3, 3, 4, 4), 2.0)
    out = concat_padded([a, b])
    assert out.shape == (2, 3, 3, 4, 4)
    assert out[0, :2].eq(1).all() and out[0, 2].eq(0).all() and out[1].eq(2).all()
    # patch lists (Qwen) only concatenate
    assert concat_padded([torch.ones(6, 8), torch.ones(10, 8)]).shape == (16, 8)


def test_collate_layout() -> None:
    batch = collate(_items(with_ref=False), pad_id=PAD)
    assert batch["ids"] == ["a", "b"]
    # rows: a chosen (5), b chosen (5), a rejected (4), b rejected (3); width 5
    assert batch["input_ids"].tolist() == [
        [1, 2, 3, 4, 5],
        [7, 8, 9, 10, 11],
        [1, 2, 3, 6, PAD],
        [7, 12, 13, PAD, PAD],
    ]
    assert batch["attention_mask"].tolist() == [
        [1, 1, 1, 1, 1],
        [1, 1, 1, 1, 1],
        [1, 1, 1, 1, 0],
        [1, 1, 1, 0, 0],
    ]
    assert batch["labels"].tolist() == [
        [IGNORE, IGNORE, IGNORE, 4, 5],
        [IGNORE, 8, 9, 10, 11],
        [IGNORE, IGNORE, IGNORE, 6, IGNORE],
        [IGNORE, 12, 13, IGNORE, IGNORE],
    ]
    # token types: the prompt's, then text (0) for the answer and the padding
    assert batch["types"]["token_type_ids"].tolist() == [
        [0, 1, 0, 0, 0],
        [1, 0, 0, 0, 0],
        [0, 1, 0, 0, 0],
        [1, 0, 0, 0, 0],
    ]
    pixels = batch["image"]["pixel_values"]
    assert pixels.shape == (2, 3, 2, 2)  # one per pair: its chosen and rejected rows share it
    assert pixels[:, 0, 0, 0].tolist() == [1.0, 2.0]
    assert batch["chosen_lengths"].tolist() == [2, 4]  # answer tokens per completion, prompt not counted
    assert batch["rejected_lengths"].tolist() == [1, 2]
    assert "ref_chosen" not in batch and "ref_rejected" not in batch and "ref_bits" not in batch


def test_collate_carries_reference_logps() -> None:
    batch = collate(_items(with_ref=True), pad_id=PAD)
    assert not batch["ref_bits"].is_floating_point()  # no precision plugin casts it (tests/test_precision.py)
    ref_chosen, ref_rejected = reference_from_batch(batch)
    assert_close(ref_chosen, torch.tensor([-1.5, -3.0]))
    assert_close(ref_rejected, torch.tensor([-2.5, -4.0]))


def test_collate_then_sequence_logps_counts_answer_tokens_only() -> None:
    batch = collate(_items(with_ref=False), pad_id=PAD)
    vocab = 128
    logits = torch.zeros(*batch["input_ids"].shape, vocab)  # uniform: every token costs ln(1/128)
    logps = sequence_logps(logits[answer_positions(batch["labels"])], batch["labels"])
    # answer lengths: chosen a 2, b 4; rejected a 1, b 2 (prompt and padding not counted)
    assert_close(logps, torch.tensor([2.0, 4.0, 1.0, 2.0]) * math.log(1 / vocab))
