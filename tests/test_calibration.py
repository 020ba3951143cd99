"""Sentence scores (R_T, R_I) and their calibration within a sibling set, against hand-computed values."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from csr.config.choices import CALIBRATIONS, TEXT_SCORES
from csr.models.clip import image_relevance
from csr.reward.calibration import calibrate, rank_normalise, zscore_normalise
from csr.reward.rules.reference import reference_ranks
from csr.reward.scores import text_score

# sqrt(3/2): the z-score of the extremes of three evenly spaced values (population std sqrt(2/3) * step).
C = math.sqrt(1.5)


# --------------------------------------------------------------------------- rank_normalise


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        # ascending: 1.0 (pos 1), 2.0 (pos 2), 3.0 (pos 3) -> pos / 3
        ([3.0, 1.0, 2.0], [1.0, 1 / 3, 2 / 3]),
        # ascending: 0.0 pos 1, 1.0 pos 2, the two 2.0 share positions 3 and 4 -> 3.5; / 4
        ([1.0, 2.0, 2.0, 0.0], [0.5, 0.875, 0.875, 0.25]),
        # all tied: average of positions 1, 2, 3 = 2 -> 2/3 each
        ([5.0, 5.0, 5.0], [2 / 3, 2 / 3, 2 / 3]),
        # tie at the bottom: -1 and -1 share positions 1, 2 -> 1.5 / 3 = 0.5; 4.0 is best -> 1
        ([-1.0, 4.0, -1.0], [0.5, 1.0, 0.5]),
        ([7.0], [1.0]),
        ([], []),
    ],
)
def test_rank_normalise_hand_values(values: list[float], expected: list[float]) -> None:
    assert rank_normalise(values) == pytest.approx(expected)


def test_rank_normalise_best_is_one_worst_is_one_over_n() -> None:
    values = [0.3, -2.0, 9.0, 0.1, 4.0]
    ranks = rank_normalise(values)
    assert ranks[values.index(max(values))] == pytest.approx(1.0)
    assert ranks[values.index(min(values))] == pytest.approx(1 / 5)
    assert sorted(ranks) == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])


def test_rank_normalise_does_not_depend_on_candidate_order() -> None:
    values = [0.5, 0.2, 0.5, 0.9]
    # 0.2 -> pos 1; the two 0.5 share 2, 3 -> 2.5; 0.9 -> 4; / 4
    expected = dict(zip(["a", "b", "c", "d"], [0.625, 0.25, 0.625, 1.0], strict=True))
    for perm in itertools.permutations(range(4)):
        names = [["a", "b", "c", "d"][i] for i in perm]
        ranks = rank_normalise([values[i] for i in perm])
        assert dict(zip(names, ranks, strict=True)) == pytest.approx(expected)


# --------------------------------------------------------------------------- reference_ranks (the authors')


# Expected values: the authors' Rank_Node.calculate_ranks (YiyangZhou/CSR inference_csr/utils.py,
# unmodified, run in a scratch directory outside this repository) on the same values.
@pytest.mark.parametrize(
    ("values", "expected"),
    [
        # descending: 3.0 (1st), 2.0 (2nd), 1.0 (3rd) -> (i + 1) / 3, best = 1/3
        ([3.0, 1.0, 2.0], [1 / 3, 1.0, 2 / 3]),
        # the two 2.0 tie: the earlier one takes 1st (1/4), the later 2nd (2/4); ties are not shared
        ([1.0, 2.0, 2.0, 0.0], [0.75, 0.25, 0.5, 1.0]),
        ([5.0, 5.0, 5.0], [1 / 3, 2 / 3, 1.0]),
        ([-1.0, 4.0, -1.0], [2 / 3, 1 / 3, 1.0]),
        ([7.0], [1.0]),
        ([], []),
    ],
)
def test_reference_ranks_hand_values(values: list[float], expected: list[float]) -> None:
    assert reference_ranks(values) == expected  # exactly: the same divisions


def test_reference_ranks_are_not_csr_ranks_read_backwards() -> None:
    # Without ties the authors' rank is (n + 1)/n minus csr's: the offset depends on the set's size.
    values = [0.3, -2.0, 9.0, 0.1, 4.0]
    assert [a + b for a, b in zip(reference_ranks(values), rank_normalise(values), strict=True)] == pytest.approx(
        [6 / 5] * 5)
    # Answer X: worst of 2 siblings twice; answer Y: 4th of 5 twice. Averaged along the path,
    # csr's ranks put X first (1/2 > 2/5, higher is better); the authors' put Y first (4/5 < 1).
    x_csr, y_csr = rank_normalise([1.0, 0.0])[1], rank_normalise([5.0, 4.0, 3.0, 1.0, 2.0])[4]
    x_ref, y_ref = reference_ranks([1.0, 0.0])[1], reference_ranks([5.0, 4.0, 3.0, 1.0, 2.0])[4]
    assert (x_csr, y_csr) == pytest.approx((0.5, 0.4))
    assert (x_ref, y_ref) == pytest.approx((1.0, 0.8))
    assert (x_csr + x_csr) / 2 > (y_csr + y_csr) / 2
    assert (x_ref + x_ref) / 3 > (y_ref + y_ref) / 3  # lower is better: Y wins


# --------------------------------------------------------------------------- zscore_normalise


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        # mean 2, population std sqrt((1 + 0 + 1) / 3) = sqrt(2/3) -> (x - 2) / 0.8165 = -/+ 1.2247
        ([1.0, 2.0, 3.0], [-C, 0.0, C]),
        # mean 25, deviations (-5, 5, 0), std sqrt(50/3) = 4.0825 -> (-1.2247, 1.2247, 0)
        ([20.0, 30.0, 25.0], [-C, C, 0.0]),
        # mean 1, deviations (-1, 1), std 1
        ([0.0, 2.0], [-1.0, 1.0]),
        # no spread carries no signal
        ([2.0, 2.0, 2.0], [0.0, 0.0, 0.0]),
        ([4.2], [0.0]),
        ([], []),
    ],
)
def test_zscore_normalise_hand_values(values: list[float], expected: list[float]) -> None:
    assert zscore_normalise(values) == pytest.approx(expected)


# --------------------------------------------------------------------------- calibrate

# One sibling set of three candidates used for every method below.
R_T = [-1.0, -2.0, -3.0]  # rank -> [1, 2/3, 1/3]; zscore -> [C, 0, -C]
R_I = [20.0, 30.0, 25.0]  # rank -> [1/3, 1, 2/3]; zscore -> [-C, C, 0]


@pytest.mark.parametrize(
    ("method", "lam", "expected"),
    [
        # rank: R = lam * [1/3, 1, 2/3] + (1 - lam) * [1, 2/3, 1/3]
        ("rank", 0.0, [1.0, 2 / 3, 1 / 3]),
        ("rank", 0.5, [(1 / 3 + 1) / 2, (1 + 2 / 3) / 2, (2 / 3 + 1 / 3) / 2]),  # [2/3, 5/6, 1/2]
        ("rank", 0.9, [0.3 + 0.1, 0.9 + 0.2 / 3, 0.6 + 0.1 / 3]),  # [0.4, 0.9667, 0.6333]
        ("rank", 1.0, [1 / 3, 1.0, 2 / 3]),
        # zscore: R = lam * [-C, C, 0] + (1 - lam) * [C, 0, -C]
        ("zscore", 0.0, [C, 0.0, -C]),
        ("zscore", 0.5, [0.0, C / 2, -C / 2]),
        ("zscore", 0.9, [-0.9 * C + 0.1 * C, 0.9 * C, -0.1 * C]),  # [-0.8C, 0.9C, -0.1C]
        ("zscore", 1.0, [-C, C, 0.0]),
        # raw: R = lam * [20, 30, 25] + (1 - lam) * [-1, -2, -3]
        ("raw", 0.0, [-1.0, -2.0, -3.0]),
        ("raw", 0.5, [(20 - 1) / 2, (30 - 2) / 2, (25 - 3) / 2]),  # [9.5, 14, 11]
        ("raw", 0.9, [18 - 0.1, 27 - 0.2, 22.5 - 0.3]),  # [17.9, 26.8, 22.2]
        ("raw", 1.0, [20.0, 30.0, 25.0]),
    ],
)
def test_calibrate_hand_values(method: str, lam: float, expected: list[float]) -> None:
    assert calibrate(R_T, R_I, lam, method) == pytest.approx(expected)


def test_calibrations_constant_lists_every_method() -> None:
    assert set(CALIBRATIONS) == {"rank", "zscore", "raw"}


def test_calibrate_does_not_mutate_inputs() -> None:
    r_t, r_i = list(R_T), list(R_I)
    calibrate(r_t, r_i, 0.9, "zscore")
    assert (r_t, r_i) == (R_T, R_I)


@pytest.mark.parametrize("lam", [-0.1, 1.1, 2.0, float("nan")])
def test_calibrate_rejects_lam_outside_unit_interval(lam: float) -> None:
    with pytest.raises(ValueError, match="lam"):
        calibrate(R_T, R_I, lam, "rank")


def test_calibrate_rejects_unknown_method() -> None:
    with pytest.raises(ValueError, match="unknown calibration 'softmax'"):
        calibrate(R_T, R_I, 0.9, "softmax")


def test_calibrate_rejects_length_mismatch() -> None:
    with pytest.raises(ValueError, match="r_t has 3 values but r_i has 2"):
        calibrate(R_T, R_I[:2], 0.9, "rank")


# --------------------------------------------------------------------------- text_score / image_relevance


@pytest.mark.parametrize(
    ("form", "expected"),
    [
        ("mean_logprob", (-1.0 - 2.0 - 3.0) / 3),  # -2
        ("sum_logprob", -1.0 - 2.0 - 3.0),  # -6
        ("prob", math.exp(-6.0)),  # product of e^-1 e^-2 e^-3 = 0.00247875
    ],
)
def test_text_score_forms(form: str, expected: float) -> None:
    assert text_score([-1.0, -2.0, -3.0], form) == pytest.approx(expected)


def test_text_score_default_is_mean_logprob() -> None:
    assert text_score([-0.5, -1.5]) == pytest.approx(-1.0)
    assert TEXT_SCORES[0] == "mean_logprob"


def test_text_score_single_token() -> None:
    assert text_score([-0.25], "mean_logprob") == pytest.approx(-0.25)
    assert text_score([-0.25], "prob") == pytest.approx(math.exp(-0.25))


@pytest.mark.parametrize("form", TEXT_SCORES)
def test_text_score_empty_raises(form: str) -> None:
    with pytest.raises(ValueError, match="at least one token"):
        text_score([], form)


def test_text_score_unknown_form_raises() -> None:
    with pytest.raises(ValueError, match="unknown text score 'median'"):
        text_score([-1.0], "median")


@pytest.mark.parametrize(
    ("cosine", "expected"),
    [
        (0.25, 25.0),  # 100 * 0.25
        (0.3125, 31.25),
        (1.0, 100.0),
        (0.0, 0.0),
        (-0.3, 0.0),  # max(-30, 0)
        (-1.0, 0.0),
    ],
)
def test_image_relevance(cosine: float, expected: float) -> None:
    assert image_relevance(torch.tensor(cosine)).item() == pytest.approx(expected)
