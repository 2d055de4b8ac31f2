"""Tests of the DPO-family and POVID losses against values worked out by hand with ``math``."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor

from povidgen.train.losses import (
    F_DIVERGENCES,
    LOSS_TYPES,
    DPOLoss,
    DPOOutput,
    POVIDLoss,
    POVIDOutput,
    _f_scores,
    dpo_loss,
    povid_loss,
)

# Two small pairs. Log-ratios: c = PC - RC = [0.5, 0.0]; r = PR - RR = [-1.0, 0.5];
# so delta = c - r = [1.5, -0.5] (the first pair is "right", the second "wrong").
PC = [-1.0, -2.0]
PR = [-3.0, -1.5]
RC = [-1.5, -2.0]
RR = [-2.0, -2.0]
C = [0.5, 0.0]
R = [-1.0, 0.5]
N_W = [2, 4]
N_L = [3, 0]  # 0 is clamped to 1


def logsig(x: float) -> float:
    """log(sigmoid(x)), computed stably in plain Python."""
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def t64(values: list[float]) -> Tensor:
    return torch.tensor(values, dtype=torch.float64)


def inputs() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return t64(PC), t64(PR), t64(RC), t64(RR)


def lengths() -> dict[str, Any]:
    return {"chosen_lengths": torch.tensor(N_W), "rejected_lengths": torch.tensor(N_L)}


def close(actual: Tensor, expected: list[float] | float) -> None:
    torch.testing.assert_close(
        actual, torch.as_tensor(expected, dtype=actual.dtype), rtol=1e-10, atol=1e-12
    )


# ---------------------------------------------------------------------------------------------
# every loss type by hand
# ---------------------------------------------------------------------------------------------


def _hand_sigmoid(b: float, eps: float) -> list[float]:
    return [
        -logsig(b * (c - r)) * (1 - eps) - logsig(-b * (c - r)) * eps
        for c, r in zip(C, R, strict=True)
    ]


def _hand_aot(first: list[float], second: list[float], b: float, eps: float) -> list[float]:
    return [
        -logsig(b * (f - s)) * (1 - eps) - logsig(-b * (f - s)) * eps
        for f, s in zip(sorted(first), sorted(second), strict=True)
    ]


# loss type -> (extra kwargs, hand-computed per-pair losses at beta = 0.5)
B = 0.5
HAND: dict[str, tuple[dict[str, Any], list[float]]] = {
    # -logsig(0.75) and -logsig(-0.25)
    "sigmoid": ({}, [-logsig(0.75), -logsig(-0.25)]),
    # relu(1 - 0.75), relu(1 + 0.25)
    "hinge": ({}, [0.25, 1.25]),
    # (0.5/2 - (-1.0)/3 - 1/(2*0.5))**2, (0/4 - 0.5/1 - 1)**2
    "ipo": ({}, [(0.25 + 1 / 3 - 1.0) ** 2, (0.0 - 0.5 - 1.0) ** 2]),
    "exo_pair": (
        {"label_smoothing": 1e-3},
        [
            sig(z) * (logsig(z) - math.log(1 - 1e-3)) + sig(-z) * (logsig(-z) - math.log(1e-3))
            for z in (0.75, -0.25)
        ],
    ),
    "nca_pair": (
        {},
        [
            -logsig(B * c) - 0.5 * logsig(-B * c) - 0.5 * logsig(-B * r)
            for c, r in zip(C, R, strict=True)
        ],
    ),
    "robust": (
        {"label_smoothing": 0.1},
        [(-0.9 * logsig(z) + 0.1 * logsig(-z)) / 0.8 for z in (0.75, -0.25)],
    ),
    "bco_pair": ({}, [-logsig(0.25) - logsig(0.5), -logsig(0.0) - logsig(-0.25)]),
    # (c - 1)**2 + (r + 1)**2 with 0.5/beta = 1
    "sppo_hard": ({}, [(0.5 - 1) ** 2 + (-1.0 + 1) ** 2, (0.0 - 1) ** 2 + (0.5 + 1) ** 2]),
    # policy ratios PC-PR = [2.0, -0.5] -> sorted [-0.5, 2.0];
    # ref ratios RC-RR = [0.5, 0.0] -> sorted [0.0, 0.5]; delta = [-0.5, 1.5]
    "aot": ({}, [-logsig(-0.25), -logsig(0.75)]),
    # sorted c = [0.0, 0.5], sorted r = [-1.0, 0.5]; delta = [1.0, 0.0]
    "aot_unpaired": ({}, [-logsig(0.5), -logsig(0.0)]),
    "apo_zero": ({}, [1 - sig(0.25) + sig(-0.5), 1 - sig(0.0) + sig(0.25)]),
    "apo_down": ({}, [sig(0.25) + 1 - sig(0.75), sig(0.0) + 1 - sig(-0.25)]),
    "discopop": (
        {},
        [-logsig(z) * (1 - sig(z / 0.05)) + math.exp(-z) * sig(z / 0.05) for z in (0.75, -0.25)],
    ),
    # -(PC[0] + PC[1]) / (2 + 4) = 3 / 6, the same for every pair
    "sft": ({}, [0.5, 0.5]),
    # -logsig(0.5 * (0.5/2 + 1.0/3)), -logsig(0.5 * (0/4 - 0.5/1))
    "sigmoid_norm": ({}, [-logsig(0.5 * (0.25 + 1 / 3)), -logsig(0.5 * -0.5)]),
}


def test_hand_table_covers_every_loss_type() -> None:
    assert set(HAND) == set(LOSS_TYPES)
    assert len(LOSS_TYPES) == 15


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_loss_type_matches_hand_computation(loss_type: str) -> None:
    extra, expected = HAND[loss_type]
    pc, pr, rc, rr = inputs()
    out = dpo_loss(pc, pr, rc, rr, loss_type=loss_type, beta=B, **lengths(), **extra)
    assert isinstance(out, DPOOutput)
    close(out.losses, expected)
    close(out.loss, sum(expected) / 2)
    assert out.losses.shape == (2,)
    assert out.losses.dtype == torch.float64


def test_sigmoid_with_label_smoothing_is_cdpo() -> None:
    out = dpo_loss(*inputs(), beta=0.1, label_smoothing=0.2)
    close(out.losses, _hand_sigmoid(0.1, 0.2))
    # 0.8 * -logsig(0.15) + 0.2 * -logsig(-0.15) for the first pair, written out
    close(out.losses[0], 0.8 * math.log1p(math.exp(-0.15)) + 0.2 * math.log1p(math.exp(0.15)))


def test_aot_label_smoothing() -> None:
    out = dpo_loss(*inputs(), loss_type="aot", beta=0.1, label_smoothing=0.3)
    pc, pr, rc, rr = PC, PR, RC, RR
    expected = _hand_aot(
        [a - b for a, b in zip(pc, pr, strict=True)],
        [a - b for a, b in zip(rc, rr, strict=True)],
        0.1,
        0.3,
    )
    close(out.losses, expected)


def test_discopop_tau() -> None:
    out = dpo_loss(*inputs(), loss_type="discopop", beta=B, discopop_tau=1.0)
    close(
        out.losses,
        [-logsig(z) * (1 - sig(z)) + math.exp(-z) * sig(z) for z in (0.75, -0.25)],
    )


def test_sft_ignores_rejected_lengths_and_gets_gradient_on_chosen_only() -> None:
    pc, pr, rc, rr = (t.requires_grad_() for t in inputs())
    out = dpo_loss(pc, pr, rc, rr, loss_type="sft", chosen_lengths=torch.tensor(N_W))
    close(out.losses, [0.5, 0.5])
    out.loss.backward()
    assert pc.grad is not None
    close(pc.grad, [-1 / 6, -1 / 6])
    assert pr.grad is None or bool((pr.grad == 0).all())


# ---------------------------------------------------------------------------------------------
# f-divergences
# ---------------------------------------------------------------------------------------------


def _hand_scores(f_divergence: str, alpha: float = 0.5) -> tuple[list[float], list[float]]:
    def score(t: float) -> float:
        if f_divergence == "reverse_kl":
            return t
        if f_divergence == "forward_kl":
            return -math.exp(-t)
        if f_divergence == "js_divergence":
            return logsig(t)
        return math.exp((alpha - 1) * t) / (alpha - 1)

    return [score(c) for c in C], [score(r) for r in R]


def test_f_divergences_listed() -> None:
    assert F_DIVERGENCES == ("reverse_kl", "forward_kl", "js_divergence", "alpha_divergence")


@pytest.mark.parametrize("f_divergence", F_DIVERGENCES)
def test_f_divergence_scores_feed_the_sigmoid_loss(f_divergence: str) -> None:
    cs, rs = _hand_scores(f_divergence)
    out = dpo_loss(*inputs(), beta=B, f_divergence=f_divergence)
    close(out.losses, [-logsig(B * (a - b)) for a, b in zip(cs, rs, strict=True)])
    # the rewards stay the reverse-KL ones whatever the divergence
    close(out.chosen_rewards, [B * c for c in C])


def test_forward_kl_by_hand() -> None:
    # cs = [-e^-0.5, -1], rs = [-e^1, -e^-0.5]; hinge at beta 0.5
    out = dpo_loss(*inputs(), loss_type="hinge", beta=B, f_divergence="forward_kl")
    d0 = -math.exp(-0.5) + math.exp(1.0)
    d1 = -1.0 + math.exp(-0.5)
    close(out.losses, [max(0.0, 1 - B * d0), max(0.0, 1 - B * d1)])


def test_alpha_divergence_coefficient() -> None:
    alpha = 0.3
    cs, rs = _hand_scores("alpha_divergence", alpha)
    out = dpo_loss(
        *inputs(),
        loss_type="sppo_hard",
        beta=B,
        f_divergence="alpha_divergence",
        f_alpha_divergence_coef=alpha,
    )
    close(out.losses, [(a - 1.0) ** 2 + (b + 1.0) ** 2 for a, b in zip(cs, rs, strict=True)])


def test_alpha_divergence_at_one_is_reverse_kl() -> None:
    alpha_one = dpo_loss(
        *inputs(), f_divergence="alpha_divergence", f_alpha_divergence_coef=1.0 + 1e-8
    )
    reverse = dpo_loss(*inputs())
    close(alpha_one.losses, reverse.losses.tolist())


def test_alpha_divergence_exponent_is_capped() -> None:
    # alpha = 2: score = exp(t); t = 20 would overflow float16 (max 65504) without the cap of 11
    half = _f_scores(torch.tensor([20.0, 1.0], dtype=torch.float16), "alpha_divergence", 2.0)
    assert half.dtype == torch.float16
    assert bool(torch.isfinite(half).all())
    torch.testing.assert_close(
        half.float(), torch.tensor([math.exp(11.0), math.e]), rtol=1e-3, atol=0.0
    )
    single = _f_scores(torch.tensor([100.0]), "alpha_divergence", 2.0)
    torch.testing.assert_close(single, torch.tensor([math.exp(80.0)]), rtol=1e-5, atol=0.0)
    double = _f_scores(t64([100.0]), "alpha_divergence", 2.0)
    close(double, [math.exp(80.0)])


# ---------------------------------------------------------------------------------------------
# combinations, beta, rewards
# ---------------------------------------------------------------------------------------------


def test_weighted_combination_of_loss_types() -> None:
    out = dpo_loss(
        *inputs(),
        loss_type=["sigmoid", "sft", "hinge"],
        loss_weights=[1.0, 0.25, 2.0],
        beta=B,
        chosen_lengths=torch.tensor(N_W),
    )
    expected = [
        -logsig(0.75) + 0.25 * 0.5 + 2.0 * 0.25,
        -logsig(-0.25) + 0.25 * 0.5 + 2.0 * 1.25,
    ]
    close(out.losses, expected)
    close(out.loss, sum(expected) / 2)


def test_list_without_weights_sums_with_unit_weights() -> None:
    out = dpo_loss(*inputs(), loss_type=["sigmoid", "hinge"], beta=B)
    close(out.losses, [-logsig(0.75) + 0.25, -logsig(-0.25) + 1.25])


def test_single_loss_type_in_a_list_equals_the_string() -> None:
    a = dpo_loss(*inputs(), loss_type=["ipo"], beta=B, **lengths())
    b = dpo_loss(*inputs(), loss_type="ipo", beta=B, **lengths())
    close(a.losses, b.losses.tolist())


def test_per_pair_tensor_beta() -> None:
    beta = t64([0.1, 0.5])
    out = dpo_loss(*inputs(), beta=beta)
    close(out.losses, [-logsig(0.1 * 1.5), -logsig(0.5 * -0.5)])
    close(out.chosen_rewards, [0.1 * 0.5, 0.5 * 0.0])
    close(out.rejected_rewards, [0.1 * -1.0, 0.5 * 0.5])
    ipo = dpo_loss(*inputs(), loss_type="ipo", beta=beta, **lengths())
    close(ipo.losses, [(0.25 + 1 / 3 - 5.0) ** 2, (0.0 - 0.5 - 1.0) ** 2])
    # a 0-d tensor broadcasts like a float
    scalar = dpo_loss(*inputs(), beta=torch.tensor(0.5))
    close(scalar.losses, [-logsig(0.75), -logsig(-0.25)])


def test_rewards_margins_accuracies() -> None:
    out = dpo_loss(*inputs(), beta=0.1)
    close(out.chosen_rewards, [0.05, 0.0])
    close(out.rejected_rewards, [-0.1, 0.05])
    close(out.margins, [0.15, -0.05])
    torch.testing.assert_close(out.accuracies, torch.tensor([1.0, 0.0]))
    assert out.accuracies.dtype == torch.float32
    for field in (out.chosen_rewards, out.rejected_rewards, out.margins):
        assert not field.requires_grad


def test_rewards_are_detached_but_loss_has_grad() -> None:
    pc, pr, rc, rr = (t.requires_grad_() for t in inputs())
    out = dpo_loss(pc, pr, rc, rr, beta=0.1)
    assert out.loss.requires_grad
    assert not out.chosen_rewards.requires_grad
    out.loss.backward()
    # d/dpc of mean(-logsig(0.1 * delta)) = -0.1 * sigmoid(-0.1 * delta) / 2
    assert pc.grad is not None
    close(pc.grad, [-0.1 * sig(-0.15) / 2, -0.1 * sig(0.05) / 2])


def test_float32_inputs_stay_float32() -> None:
    args = [t.float() for t in inputs()]
    out = dpo_loss(*args, loss_type="ipo", **lengths())
    assert out.loss.dtype == torch.float32
    assert out.losses.dtype == torch.float32


# ---------------------------------------------------------------------------------------------
# gradcheck
# ---------------------------------------------------------------------------------------------

# distinct values (no ties in the AOT sorts, no hinge kink)
G_PC = [-1.3, -2.1, -0.7]
G_PR = [-2.9, -1.6, -1.9]
G_RC = [-1.5, -1.8, -1.1]
G_RR = [-2.2, -2.4, -1.4]
G_EXTRA: dict[str, dict[str, Any]] = {
    "exo_pair": {"label_smoothing": 1e-3},
    "robust": {"label_smoothing": 0.1},
    "aot": {"label_smoothing": 0.1},
}


def _grad_inputs(values: list[list[float]]) -> tuple[Tensor, ...]:
    return tuple(t64(v).requires_grad_() for v in values)


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_gradcheck_every_loss_type(loss_type: str) -> None:
    kwargs: dict[str, Any] = {
        "loss_type": loss_type,
        "beta": 0.5,
        "chosen_lengths": torch.tensor([2, 3, 1]),
        "rejected_lengths": torch.tensor([4, 1, 2]),
        **G_EXTRA.get(loss_type, {}),
    }

    def fn(*args: Tensor) -> tuple[Tensor, Tensor]:
        out = dpo_loss(*args, **kwargs)
        return out.loss, out.losses

    assert torch.autograd.gradcheck(fn, _grad_inputs([G_PC, G_PR, G_RC, G_RR]))


@pytest.mark.parametrize("f_divergence", F_DIVERGENCES)
def test_gradcheck_every_f_divergence(f_divergence: str) -> None:
    def fn(*args: Tensor) -> Tensor:
        return dpo_loss(*args, loss_type="sigmoid", beta=0.5, f_divergence=f_divergence).losses

    assert torch.autograd.gradcheck(fn, _grad_inputs([G_PC, G_PR, G_RC, G_RR]))


@pytest.mark.parametrize("combine", ["mean_of_dpo", "single_sigmoid"])
def test_gradcheck_povid(combine: str) -> None:
    def fn(*args: Tensor) -> Tensor:
        return povid_loss(
            *args, beta=0.5, combine=combine, weights=(0.3, 0.7), chosen_weight=1.2
        ).losses

    values = [G_PC, G_PR, [-2.0, -2.5, -0.9], G_RC, G_RR, [-1.7, -2.2, -1.0]]
    assert torch.autograd.gradcheck(fn, _grad_inputs(values))


# ---------------------------------------------------------------------------------------------
# POVID
# ---------------------------------------------------------------------------------------------

PN = [-2.5, -1.0]
RN = [-2.0, -2.0]
D_W = C  # [0.5, 0.0]
D_T = R  # [-1.0, 0.5]
D_N = [-0.5, 1.0]


def povid_inputs() -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    return t64(PC), t64(PR), t64(PN), t64(RC), t64(RR), t64(RN)


def test_povid_official_form_by_hand() -> None:
    out = povid_loss(*povid_inputs())
    assert isinstance(out, POVIDOutput)
    # 0.5 * -logsig(0.1 * (D_w - D_noisy)) + 0.5 * -logsig(0.1 * (D_w - D_text))
    expected = [
        0.5 * -logsig(0.1 * (0.5 - -0.5)) + 0.5 * -logsig(0.1 * (0.5 - -1.0)),
        0.5 * -logsig(0.1 * (0.0 - 1.0)) + 0.5 * -logsig(0.1 * (0.0 - 0.5)),
    ]
    close(out.losses, expected)
    close(out.loss, sum(expected) / 2)


def test_povid_official_form_is_half_dpo_noisy_plus_half_dpo_text() -> None:
    pc, pr, pn, rc, rr, rn = povid_inputs()
    noisy = dpo_loss(pc, pn, rc, rn, beta=0.1)
    text = dpo_loss(pc, pr, rc, rr, beta=0.1)
    out = povid_loss(pc, pr, pn, rc, rr, rn, beta=0.1)
    close(out.losses, (0.5 * noisy.losses + 0.5 * text.losses).tolist())
    close(out.loss, float(0.5 * noisy.loss + 0.5 * text.loss))


def test_povid_weights_first_is_noisy_second_is_text() -> None:
    noisy_only = povid_loss(*povid_inputs(), weights=(1.0, 0.0))
    text_only = povid_loss(*povid_inputs(), weights=(0.0, 2.0))
    close(noisy_only.losses, [-logsig(0.1 * (w - n)) for w, n in zip(D_W, D_N, strict=True)])
    close(text_only.losses, [-logsig(0.1 * (w - t)) for w, t in zip(D_W, D_T, strict=True)])
    # an unnormalised pair of weights gives the weighted mean
    out = povid_loss(*povid_inputs(), weights=(1.0, 3.0))
    close(
        out.losses,
        [
            (1.0 * -logsig(0.1 * (w - n)) + 3.0 * -logsig(0.1 * (w - t))) / 4.0
            for w, t, n in zip(D_W, D_T, D_N, strict=True)
        ],
    )


def test_povid_single_sigmoid_by_hand() -> None:
    out = povid_loss(
        *povid_inputs(),
        beta=0.1,
        combine="single_sigmoid",
        weights=(0.3, 0.7),
        chosen_weight=1.5,
    )
    # margin = 0.1 * (1.5 * D_w - (0.7 * D_text + 0.3 * D_noisy))
    m0 = 0.1 * (1.5 * 0.5 - (0.7 * -1.0 + 0.3 * -0.5))  # 0.1 * 1.6
    m1 = 0.1 * (1.5 * 0.0 - (0.7 * 0.5 + 0.3 * 1.0))  # 0.1 * -0.65
    close(out.margins, [m0, m1])
    close(out.losses, [-logsig(m0), -logsig(m1)])
    close(out.loss, (-logsig(m0) - logsig(m1)) / 2)


def test_povid_rewards_margins_accuracies() -> None:
    out = povid_loss(*povid_inputs(), beta=0.1)
    close(out.chosen_rewards, [0.05, 0.0])
    close(out.rejected_rewards, [-0.1, 0.05])
    close(out.noisy_rewards, [-0.05, 0.1])
    close(out.margins, [0.05 - 0.5 * (-0.1 - 0.05), 0.0 - 0.5 * (0.05 + 0.1)])
    torch.testing.assert_close(out.accuracies, torch.tensor([1.0, 0.0]))
    # chosen beats text but not noisy -> not accurate
    pn = t64([-0.5, -1.0])  # D_noisy = [1.5, 1.0]
    pc, pr, _, rc, rr, rn = povid_inputs()
    out2 = povid_loss(pc, pr, pn, rc, rr, rn)
    torch.testing.assert_close(out2.accuracies, torch.tensor([0.0, 0.0]))
    for field in (out.chosen_rewards, out.rejected_rewards, out.noisy_rewards, out.margins):
        assert not field.requires_grad


def test_povid_tensor_beta() -> None:
    out = povid_loss(*povid_inputs(), beta=t64([0.1, 0.5]))
    expected = [
        0.5 * -logsig(0.1 * 1.0) + 0.5 * -logsig(0.1 * 1.5),
        0.5 * -logsig(0.5 * -1.0) + 0.5 * -logsig(0.5 * -0.5),
    ]
    close(out.losses, expected)


# ---------------------------------------------------------------------------------------------
# modules
# ---------------------------------------------------------------------------------------------


def test_dpo_module_forwards_to_function() -> None:
    module = DPOLoss(["sigmoid", "ipo"], beta=B, loss_weights=[1.0, 0.5], label_smoothing=0.1)
    assert isinstance(module, torch.nn.Module)
    got = module(*inputs(), **lengths())
    want = dpo_loss(
        *inputs(),
        loss_type=["sigmoid", "ipo"],
        beta=B,
        loss_weights=[1.0, 0.5],
        label_smoothing=0.1,
        **lengths(),
    )
    close(got.losses, want.losses.tolist())
    close(got.loss, float(want.loss))
    assert "sigmoid" in repr(module)


def test_dpo_module_f_divergence() -> None:
    module = DPOLoss("hinge", beta=B, f_divergence="js_divergence")
    cs, rs = _hand_scores("js_divergence")
    close(
        module(*inputs()).losses, [max(0.0, 1 - B * (a - b)) for a, b in zip(cs, rs, strict=True)]
    )


def test_povid_module_forwards_to_function() -> None:
    module = POVIDLoss(beta=0.2, combine="single_sigmoid", weights=(0.4, 0.6), chosen_weight=2.0)
    got = module(*povid_inputs())
    want = povid_loss(
        *povid_inputs(), beta=0.2, combine="single_sigmoid", weights=(0.4, 0.6), chosen_weight=2.0
    )
    close(got.losses, want.losses.tolist())
    assert "single_sigmoid" in repr(module)


# ---------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------

BAD_DPO: list[tuple[Callable[[], Any], str]] = [
    (lambda: dpo_loss(*inputs(), loss_type="kto"), r"unknown loss_type 'kto'.*sigmoid"),
    (lambda: dpo_loss(*inputs(), loss_type=[]), "empty"),
    (lambda: dpo_loss(*inputs(), f_divergence="tv"), r"unknown f_divergence 'tv'.*forward_kl"),
    (
        lambda: dpo_loss(*inputs(), loss_type=["sigmoid", "hinge"], loss_weights=[1.0]),
        "loss_weights has 1 entries but loss_type has 2",
    ),
    (lambda: dpo_loss(*inputs(), loss_weights=[1.0, 2.0]), "loss_weights has 2"),
    (lambda: dpo_loss(*inputs(), loss_weights=[math.nan]), "finite"),
    (lambda: dpo_loss(*inputs(), beta=0.0), "beta must be a finite number > 0"),
    (lambda: dpo_loss(*inputs(), beta=-1.0), "beta"),
    (lambda: dpo_loss(*inputs(), beta=math.inf), "beta"),
    (lambda: dpo_loss(*inputs(), beta=t64([0.1, -0.1])), "beta must be > 0"),
    (lambda: dpo_loss(*inputs(), beta=t64([0.1, 0.1, 0.1])), "broadcastable"),
    (
        lambda: dpo_loss(*inputs(), beta=torch.tensor([[0.1], [0.1]], dtype=torch.float64)),
        r"broadcastable.*\(2, 1\)",
    ),
    (lambda: dpo_loss(*inputs(), beta="0.1"), "beta must be a float or a tensor"),  # type: ignore[arg-type]
    (lambda: dpo_loss(*inputs(), label_smoothing=0.7), r"label_smoothing must be in \[0, 0.5\]"),
    (lambda: dpo_loss(*inputs(), label_smoothing=-0.1), "label_smoothing"),
    (
        lambda: dpo_loss(*inputs(), loss_type="robust", label_smoothing=0.5),
        r"robust.*\[0, 0.5\)",
    ),
    (lambda: dpo_loss(*inputs(), loss_type="exo_pair"), r"exo_pair.*> 0.*1e-3"),
    (lambda: dpo_loss(*inputs(), loss_type="discopop", discopop_tau=0.0), "discopop_tau"),
    (lambda: dpo_loss(*inputs(), loss_type="ipo"), "chosen_lengths, rejected_lengths"),
    (
        lambda: dpo_loss(*inputs(), loss_type="ipo", chosen_lengths=torch.tensor(N_W)),
        r"missing: rejected_lengths",
    ),
    (lambda: dpo_loss(*inputs(), loss_type="sigmoid_norm"), "sigmoid_norm.*lengths"),
    (lambda: dpo_loss(*inputs(), loss_type="sft"), "'sft' needs chosen_lengths"),
    (
        lambda: dpo_loss(*inputs(), loss_type="sft", chosen_lengths=torch.tensor([1, 2, 3])),
        r"chosen_lengths must have the batch shape \(2,\)",
    ),
    (
        lambda: dpo_loss(
            *inputs(),
            loss_type="ipo",
            chosen_lengths=[2, 4],  # type: ignore[arg-type]
            rejected_lengths=torch.tensor(N_L),
        ),
        "chosen_lengths must be a torch.Tensor",
    ),
    (
        lambda: dpo_loss(*inputs()[:3], torch.tensor([1, 2])),
        "ref_rejected_logps must have a floating dtype",
    ),
    (
        lambda: dpo_loss(torch.tensor([[1.0, 2.0]], dtype=torch.float64), *inputs()[1:]),
        r"policy_chosen_logps must be 1-D.*\(1, 2\)",
    ),
    (
        lambda: dpo_loss(t64(PC), t64([1.0, 2.0, 3.0]), t64(RC), t64(RR)),
        r"policy_rejected_logps has shape \(3,\) but policy_chosen_logps has shape \(2,\)",
    ),
    (lambda: dpo_loss(*(t64([]) for _ in range(4))), "batch is empty"),
    (lambda: dpo_loss([-1.0], *inputs()[1:]), "must be a torch.Tensor"),  # type: ignore[arg-type]
    (lambda: DPOLoss("nope"), "unknown loss_type"),
    (lambda: DPOLoss("sigmoid", beta=0.0), "beta"),
    (lambda: DPOLoss("robust", label_smoothing=0.5), "robust"),
]


@pytest.mark.parametrize(("call", "match"), BAD_DPO)
def test_dpo_bad_input_raises(call: Callable[[], Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()


BAD_POVID: list[tuple[Callable[[], Any], str]] = [
    (lambda: povid_loss(*povid_inputs(), combine="sum"), r"unknown combine 'sum'.*mean_of_dpo"),
    (lambda: povid_loss(*povid_inputs(), weights=(1.0,)), "two entries"),
    (lambda: povid_loss(*povid_inputs(), weights=(0.0, 0.0)), "not both 0"),
    (lambda: povid_loss(*povid_inputs(), weights=(-1.0, 2.0)), ">= 0"),
    (lambda: povid_loss(*povid_inputs(), chosen_weight=0.0), "chosen_weight"),
    (lambda: povid_loss(*povid_inputs(), beta=0.0), "beta"),
    (
        lambda: povid_loss(*povid_inputs()[:2], t64([1.0]), *povid_inputs()[3:]),
        r"policy_noisy_logps has shape \(1,\)",
    ),
    (
        lambda: povid_loss(*povid_inputs()[:5], torch.tensor([1, 2])),
        "ref_noisy_logps must have a floating dtype",
    ),
    (lambda: POVIDLoss(combine="x"), "unknown combine"),
    (lambda: POVIDLoss(weights=(1.0, 2.0, 3.0)), "two entries"),
]


@pytest.mark.parametrize(("call", "match"), BAD_POVID)
def test_povid_bad_input_raises(call: Callable[[], Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()
