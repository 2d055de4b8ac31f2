r"""Direct preference losses on per-sequence log-probabilities: every DPO variant and POVID.

All functions take per-sequence **sums** of response-token log-probabilities, one value per
preference pair, shape ``(B,)``:

* ``policy_chosen_logps``   :math:`\log \pi_\theta(y_w \mid x)`
* ``policy_rejected_logps`` :math:`\log \pi_\theta(y_l \mid x)`
* ``ref_chosen_logps``      :math:`\log \pi_\mathrm{ref}(y_w \mid x)`
* ``ref_rejected_logps``    :math:`\log \pi_\mathrm{ref}(y_l \mid x)`

and are pure, differentiable functions of them (no model, no tokenizer, no ``transformers``).
The loss types, their formulas and their defaults follow Hugging Face TRL's ``DPOTrainer``.

Notation used in the docstrings (all element-wise over the batch):

.. math::

    c = \log\pi_\theta(y_w) - \log\pi_\mathrm{ref}(y_w), \qquad
    r = \log\pi_\theta(y_l) - \log\pi_\mathrm{ref}(y_l)

(the chosen and rejected log-ratios), :math:`s_w = f(c)`, :math:`s_l = f(r)` the f-divergence
scores (:math:`f` = identity for the default reverse KL), :math:`\Delta = s_w - s_l`,
:math:`\beta` the inverse temperature, :math:`\varepsilon` the label smoothing and
:math:`\sigma` the logistic function.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeAlias

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

from povidgen.train.config import F_DIVERGENCES, LOSS_TYPES, POVID_COMBINES

__all__ = [
    "F_DIVERGENCES",
    "LOSS_TYPES",
    "POVID_COMBINES",
    "DPOLoss",
    "DPOOutput",
    "POVIDLoss",
    "POVIDOutput",
    "PairModeLoss",
    "dpo_loss",
    "pair_mode_loss",
    "povid_loss",
]


_LENGTH_NORMALISED: frozenset[str] = frozenset({"ipo", "sigmoid_norm"})

# Upper bound on the exponent of the alpha-divergence scores, by the dtype the exponent is
# computed in (as TRL's ``cap_exp``): keeps ``exp`` finite in half precision.
_EXP_CAP: dict[torch.dtype, float] = {
    torch.float16: 11.0,
    torch.bfloat16: 80.0,
    torch.float32: 80.0,
    torch.float64: 80.0,
}


@dataclass(frozen=True)
class DPOOutput:
    """What :func:`dpo_loss` returns. Every field but ``loss`` has shape ``(B,)``.

    Attributes:
        loss: The scalar to back-propagate: the mean over the batch of ``losses``.
        losses: The per-pair loss, the weighted sum over the loss types, shape ``(B,)``.
        chosen_rewards: Implicit rewards :math:`\\beta c` of the chosen responses, detached.
        rejected_rewards: Implicit rewards :math:`\\beta r` of the rejected responses, detached.
        margins: ``chosen_rewards - rejected_rewards``, detached.
        accuracies: ``1.0`` where the chosen reward beats the rejected one, else ``0.0``
            (``float32``).
    """

    loss: Tensor
    losses: Tensor
    chosen_rewards: Tensor
    rejected_rewards: Tensor
    margins: Tensor
    accuracies: Tensor


@dataclass(frozen=True)
class POVIDOutput:
    """What :func:`povid_loss` returns. Every field but ``loss`` has shape ``(B,)``.

    Attributes:
        loss: The scalar to back-propagate: the mean over the batch of ``losses``.
        losses: The per-pair POVID loss, shape ``(B,)``.
        chosen_rewards: :math:`\\beta D(y_w)`, detached.
        rejected_rewards: :math:`\\beta D(y_l^{text})` of the hallucinated-text rejected
            responses, detached.
        noisy_rewards: :math:`\\beta D(y_l^{noise})` of the responses generated from the
            distorted image, detached.
        margins: The chosen reward minus the weighted rejected rewards (see
            :func:`povid_loss`), detached.
        accuracies: ``1.0`` where the chosen reward beats *both* rejected rewards, else ``0.0``
            (``float32``).
    """

    loss: Tensor
    losses: Tensor
    chosen_rewards: Tensor
    rejected_rewards: Tensor
    noisy_rewards: Tensor
    margins: Tensor
    accuracies: Tensor


# --------------------------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------------------------


def _check_logps(named: Sequence[tuple[str, Tensor]]) -> tuple[list[Tensor], torch.dtype]:
    """Check that the log-prob tensors are floating, 1-D, non-empty and share one shape.

    Returns the tensors cast to their common (promoted) dtype, and that dtype.
    """
    first_name, first = named[0]
    for name, tensor in named:
        if not isinstance(tensor, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
        if not tensor.is_floating_point():
            raise ValueError(f"{name} must have a floating dtype, got {tensor.dtype}")
        if tensor.dim() != 1:
            raise ValueError(
                f"{name} must be 1-D with shape (B,) (one summed log-prob per sequence), "
                f"got shape {tuple(tensor.shape)}"
            )
        if tensor.shape != first.shape:
            raise ValueError(
                f"{name} has shape {tuple(tensor.shape)} but {first_name} has shape "
                f"{tuple(first.shape)}; all log-prob inputs must have the same shape (B,)"
            )
    if first.shape[0] < 1:
        raise ValueError("the batch is empty: log-prob inputs must have shape (B,) with B >= 1")
    dtype = first.dtype
    for _, tensor in named[1:]:
        dtype = torch.promote_types(dtype, tensor.dtype)
    return [tensor.to(dtype) for _, tensor in named], dtype


def _check_beta(beta: float | Tensor, like: Tensor) -> float | Tensor:
    """Check that ``beta`` is positive and broadcastable to ``like``'s shape ``(B,)``."""
    if isinstance(beta, Tensor):
        if beta.is_complex() or beta.dtype == torch.bool:
            raise ValueError(f"beta must be a real tensor, got dtype {beta.dtype}")
        batch = like.shape[0]
        if not (beta.dim() == 0 or (beta.dim() == 1 and beta.shape[0] in (1, batch))):
            raise ValueError(
                f"a tensor beta must be broadcastable to the batch shape {tuple(like.shape)}, "
                f"got shape {tuple(beta.shape)}"
            )
        beta_t = beta.to(dtype=like.dtype, device=like.device)
        if bool((~(beta_t > 0)).any()):
            raise ValueError("beta must be > 0 everywhere (and not NaN)")
        return beta_t
    if isinstance(beta, bool) or not isinstance(beta, int | float):
        raise ValueError(f"beta must be a float or a tensor, got {type(beta).__name__}")
    if not (math.isfinite(beta) and beta > 0):
        raise ValueError(f"beta must be a finite number > 0, got {beta}")
    return float(beta)


def _check_lengths(name: str, lengths: Tensor | None, like: Tensor, loss: str) -> Tensor:
    """Check a tensor of response lengths and cast it to ``like``'s dtype."""
    if lengths is None:
        raise ValueError(
            f"loss_type {loss!r} needs {name} (the number of response tokens per sequence, "
            "shape (B,)); pass chosen_lengths and rejected_lengths"
        )
    if not isinstance(lengths, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(lengths).__name__}")
    if lengths.is_complex() or lengths.dtype == torch.bool:
        raise ValueError(f"{name} must be a real (integer or float) tensor, got {lengths.dtype}")
    if lengths.shape != like.shape:
        raise ValueError(
            f"{name} must have the batch shape {tuple(like.shape)}, got {tuple(lengths.shape)}"
        )
    return lengths.to(dtype=like.dtype, device=like.device)


def _check_loss_types(
    loss_type: str | Sequence[str], loss_weights: Sequence[float] | None
) -> tuple[list[str], list[float]]:
    """Normalise ``loss_type`` to a list and pair it with its weights."""
    types = [loss_type] if isinstance(loss_type, str) else list(loss_type)
    if not types:
        raise ValueError(f"loss_type is an empty list; give one or more of {LOSS_TYPES}")
    for name in types:
        if name not in LOSS_TYPES:
            raise ValueError(f"unknown loss_type {name!r}; valid loss types: {LOSS_TYPES}")
    if loss_weights is None:
        weights = [1.0] * len(types)
    else:
        weights = [float(w) for w in loss_weights]
        if len(weights) != len(types):
            raise ValueError(
                f"loss_weights has {len(weights)} entries but loss_type has {len(types)} "
                f"({types}); give one weight per loss type"
            )
        for w in weights:
            if not math.isfinite(w):
                raise ValueError(f"loss_weights must be finite, got {weights}")
    return types, weights


def _check_hyperparameters(
    types: Sequence[str],
    label_smoothing: float,
    f_divergence: str,
    discopop_tau: float,
) -> None:
    """Check the scalar hyper-parameters of :func:`dpo_loss`."""
    if f_divergence not in F_DIVERGENCES:
        raise ValueError(f"unknown f_divergence {f_divergence!r}; valid ones: {F_DIVERGENCES}")
    if not (0.0 <= label_smoothing <= 0.5):
        raise ValueError(f"label_smoothing must be in [0, 0.5], got {label_smoothing}")
    if "robust" in types and not label_smoothing < 0.5:
        raise ValueError(
            "loss_type 'robust' divides by 1 - 2 * label_smoothing: label_smoothing must be "
            f"in [0, 0.5), got {label_smoothing}"
        )
    if "exo_pair" in types and not label_smoothing > 0:
        raise ValueError(
            "loss_type 'exo_pair' takes log(label_smoothing): label_smoothing must be > 0 "
            f"(the EXO paper recommends 1e-3), got {label_smoothing}"
        )
    if "discopop" in types and not (math.isfinite(discopop_tau) and discopop_tau > 0):
        raise ValueError(f"discopop_tau must be a finite number > 0, got {discopop_tau}")


# --------------------------------------------------------------------------------------------
# f-divergence scores
# --------------------------------------------------------------------------------------------


def _f_scores(logratios: Tensor, f_divergence: str, alpha_coef: float) -> Tensor:
    r"""The f-DPO score :math:`f'(u)` of the policy/reference ratio :math:`u = e^{\text{logratio}}`.

    * ``reverse_kl``: :math:`\log u` (standard DPO);
    * ``forward_kl``: :math:`-u^{-1} = -e^{-\text{logratio}}`;
    * ``js_divergence``: :math:`\log\sigma(\text{logratio}) = \log\frac{u}{1+u}`;
    * ``alpha_divergence``: :math:`\frac{u^{\alpha-1}}{\alpha-1}` with the exponent capped (at 11
      in float16, 80 otherwise) before ``exp``; reverse KL when :math:`|\alpha-1|<10^{-6}`.
    """
    if f_divergence == "reverse_kl":
        return logratios
    if f_divergence == "forward_kl":
        return -torch.exp(-logratios)
    if f_divergence == "js_divergence":
        return F.logsigmoid(logratios)
    # alpha_divergence
    if abs(alpha_coef - 1.0) < 1e-6:
        return logratios
    exponent = (alpha_coef - 1.0) * logratios
    # Half precision is raised to float32 for the exp, as TRL does; float64 stays float64.
    work_dtype = torch.promote_types(exponent.dtype, torch.float32)
    capped = exponent.to(work_dtype).clamp(max=_EXP_CAP.get(exponent.dtype, 80.0))
    return torch.exp(capped).to(logratios.dtype) * (1.0 / (alpha_coef - 1.0))


# --------------------------------------------------------------------------------------------
# DPO: one small function per loss type
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Terms:
    r"""What every DPO loss function reads, computed once per call; tensors have shape ``(B,)``.

    Attributes:
        policy_chosen: :math:`\log\pi_\theta(y_w)`.
        policy_rejected: :math:`\log\pi_\theta(y_l)`.
        ref_chosen: :math:`\log\pi_\mathrm{ref}(y_w)`.
        ref_rejected: :math:`\log\pi_\mathrm{ref}(y_l)`.
        chosen_logratios: :math:`c`.
        rejected_logratios: :math:`r`.
        cs: :math:`s_w = f(c)`.
        rs: :math:`s_l = f(r)`.
        delta: :math:`\Delta = s_w - s_l`.
        beta: :math:`\beta`, a float or a tensor broadcastable to ``(B,)``.
        label_smoothing: :math:`\varepsilon`.
        chosen_lengths: :math:`n_w` (not clamped) in the log-probs' dtype, or ``None`` where
            no loss type of the call reads it.
        rejected_lengths: :math:`n_l`, likewise.
        discopop_tau: :math:`\tau` of ``discopop``.
    """

    policy_chosen: Tensor
    policy_rejected: Tensor
    ref_chosen: Tensor
    ref_rejected: Tensor
    chosen_logratios: Tensor
    rejected_logratios: Tensor
    cs: Tensor
    rs: Tensor
    delta: Tensor
    beta: float | Tensor
    label_smoothing: float
    chosen_lengths: Tensor | None
    rejected_lengths: Tensor | None
    discopop_tau: float

    @property
    def n_w(self) -> Tensor:
        """``chosen_lengths``, which the spec makes sure of for the loss types that read it."""
        assert self.chosen_lengths is not None
        return self.chosen_lengths

    @property
    def n_l(self) -> Tensor:
        """``rejected_lengths``, which the spec makes sure of for the loss types that read it."""
        assert self.rejected_lengths is not None
        return self.rejected_lengths


LossFn: TypeAlias = Callable[[_Terms], Tensor]
"""One DPO loss type: the per-call :class:`_Terms` in, the per-pair losses ``(B,)`` out."""


def _sigmoid(t: _Terms) -> Tensor:
    r"""DPO with cDPO label smoothing.

    :math:`-(1-\varepsilon)\log\sigma(\beta\Delta) - \varepsilon\log\sigma(-\beta\Delta)`.
    """
    b, eps = t.beta, t.label_smoothing
    return -F.logsigmoid(b * t.delta) * (1 - eps) - F.logsigmoid(-b * t.delta) * eps


def _hinge(t: _Terms) -> Tensor:
    r"""SLiC-style hinge: :math:`\max(0, 1 - \beta\Delta)`."""
    return torch.relu(1 - t.beta * t.delta)


def _ipo(t: _Terms) -> Tensor:
    r"""IPO on token-averaged scores.

    :math:`\left(\frac{s_w}{n_w} - \frac{s_l}{n_l} - \frac{1}{2\beta}\right)^2`, lengths
    clamped to at least 1.
    """
    n_w = t.n_w.clamp(min=1)
    n_l = t.n_l.clamp(min=1)
    return (t.cs / n_w - t.rs / n_l - 1 / (2 * t.beta)) ** 2


def _exo_pair(t: _Terms) -> Tensor:
    r"""EXO, the reverse KL to the :math:`\varepsilon`-smoothed preference; :math:`\varepsilon > 0`.

    With :math:`z = \beta\Delta`:
    :math:`\sigma(z)\,[\log\sigma(z) - \log(1-\varepsilon)]
    + \sigma(-z)\,[\log\sigma(-z) - \log\varepsilon]`.
    """
    eps = t.label_smoothing
    z = t.beta * t.delta
    chosen_term = torch.sigmoid(z) * (F.logsigmoid(z) - math.log1p(-eps))
    rejected_term = torch.sigmoid(-z) * (F.logsigmoid(-z) - math.log(eps))
    return chosen_term + rejected_term


def _nca_pair(t: _Terms) -> Tensor:
    r"""NCA.

    :math:`-\log\sigma(\beta s_w) - \tfrac12\log\sigma(-\beta s_w)
    - \tfrac12\log\sigma(-\beta s_l)`.
    """
    chosen_r = t.beta * t.cs
    rejected_r = t.beta * t.rs
    return -F.logsigmoid(chosen_r) - 0.5 * F.logsigmoid(-chosen_r) - 0.5 * F.logsigmoid(-rejected_r)


def _robust(t: _Terms) -> Tensor:
    r"""Robust DPO, unbiased under label flips at rate :math:`\varepsilon < 1/2`.

    :math:`\frac{-(1-\varepsilon)\log\sigma(\beta\Delta)
    + \varepsilon\log\sigma(-\beta\Delta)}{1-2\varepsilon}`.
    """
    b, eps = t.beta, t.label_smoothing
    unbiased = -(1 - eps) * F.logsigmoid(b * t.delta) + eps * F.logsigmoid(-b * t.delta)
    return unbiased / (1 - 2 * eps)


def _bco_pair(t: _Terms) -> Tensor:
    r"""BCO, without the running reward shift.

    :math:`-\log\sigma(\beta s_w) - \log\sigma(-\beta s_l)`.
    """
    return -F.logsigmoid(t.beta * t.cs) - F.logsigmoid(-t.beta * t.rs)


def _sppo_hard(t: _Terms) -> Tensor:
    r"""SPPO, hard labels.

    :math:`\left(s_w - \frac{1}{2\beta}\right)^2 + \left(s_l + \frac{1}{2\beta}\right)^2`.
    """
    return (t.cs - 0.5 / t.beta) ** 2 + (t.rs + 0.5 / t.beta) ** 2


def _sorted_sigmoid(t: _Terms, first: Tensor, second: Tensor) -> Tensor:
    r"""The AOT loss of :math:`\delta = \operatorname{sort}(a) - \operatorname{sort}(b)`.

    Each sorted over the batch:
    :math:`-(1-\varepsilon)\log\sigma(\beta\delta) - \varepsilon\log\sigma(-\beta\delta)`.
    """
    eps = t.label_smoothing
    z = t.beta * (torch.sort(first, dim=0).values - torch.sort(second, dim=0).values)
    return -F.logsigmoid(z) * (1 - eps) - F.logsigmoid(-z) * eps


def _aot(t: _Terms) -> Tensor:
    r"""AOT, paired: :func:`_sorted_sigmoid` of the policy and the reference log-odds.

    :math:`\delta = \operatorname{sort}(\log\pi_\theta(y_w) - \log\pi_\theta(y_l))
    - \operatorname{sort}(\log\pi_\mathrm{ref}(y_w) - \log\pi_\mathrm{ref}(y_l))`.
    """
    return _sorted_sigmoid(t, t.policy_chosen - t.policy_rejected, t.ref_chosen - t.ref_rejected)


def _aot_unpaired(t: _Terms) -> Tensor:
    r"""AOT, unpaired: :func:`_sorted_sigmoid` of the chosen and the rejected log-ratios.

    :math:`\delta = \operatorname{sort}(c) - \operatorname{sort}(r)`.
    """
    return _sorted_sigmoid(t, t.chosen_logratios, t.rejected_logratios)


def _apo_zero(t: _Terms) -> Tensor:
    r"""APO-zero: :math:`1 - \sigma(\beta c) + \sigma(\beta r)`."""
    return (1 - torch.sigmoid(t.beta * t.chosen_logratios)) + torch.sigmoid(
        t.beta * t.rejected_logratios
    )


def _apo_down(t: _Terms) -> Tensor:
    r"""APO-down: :math:`\sigma(\beta c) + 1 - \sigma(\beta\Delta)`."""
    return torch.sigmoid(t.beta * t.chosen_logratios) + (1 - torch.sigmoid(t.beta * t.delta))


def _discopop(t: _Terms) -> Tensor:
    r"""DiscoPOP, the log-ratio modulated loss.

    With :math:`z = \beta\Delta` and :math:`m = \sigma(z/\tau)`:
    :math:`-(1-m)\log\sigma(z) + m\,e^{-z}`.
    """
    z = t.delta * t.beta
    modulation = torch.sigmoid(z / t.discopop_tau)
    return -F.logsigmoid(z) * (1 - modulation) + torch.exp(-z) * modulation


def _sft(t: _Terms) -> Tensor:
    r"""Chosen-response NLL per token over the batch, given to every pair.

    :math:`-\sum_i \log\pi_\theta(y_w^i) / \sum_i n_w^i` (lengths not clamped).
    """
    return (-t.policy_chosen.sum() / t.n_w.sum()).expand(t.policy_chosen.shape)


def _sigmoid_norm(t: _Terms) -> Tensor:
    r"""DPO on length-normalised scores.

    :math:`-\log\sigma\!\left(\beta\left(\frac{s_w}{n_w} - \frac{s_l}{n_l}\right)\right)`,
    lengths clamped to at least 1.
    """
    n_w = t.n_w.clamp(min=1)
    n_l = t.n_l.clamp(min=1)
    return -F.logsigmoid(t.beta * (t.cs / n_w - t.rs / n_l))


_LOSSES: dict[str, LossFn] = {
    "sigmoid": _sigmoid,
    "hinge": _hinge,
    "ipo": _ipo,
    "exo_pair": _exo_pair,
    "nca_pair": _nca_pair,
    "robust": _robust,
    "bco_pair": _bco_pair,
    "sppo_hard": _sppo_hard,
    "aot": _aot,
    "aot_unpaired": _aot_unpaired,
    "apo_zero": _apo_zero,
    "apo_down": _apo_down,
    "discopop": _discopop,
    "sft": _sft,
    "sigmoid_norm": _sigmoid_norm,
}

if tuple(_LOSSES) != LOSS_TYPES:  # pragma: no cover - a new loss must be named in config too
    raise ImportError(f"povidgen.train.config.LOSS_TYPES {LOSS_TYPES} != the losses {_LOSSES}")

_NEEDS_LENGTHS: dict[str, tuple[str, ...]] = {
    "ipo": ("chosen_lengths", "rejected_lengths"),
    "sft": ("chosen_lengths",),
    "sigmoid_norm": ("chosen_lengths", "rejected_lengths"),
}
"""The length arguments each loss type reads, in the order they are checked."""


@dataclass(frozen=True)
class _DPOSpec:
    r"""The checked hyper-parameters of :func:`dpo_loss` (all but ``beta``), from :func:`_resolve`.

    Attributes:
        types: The loss type names, in the order given.
        weights: One weight per loss type.
        losses: The loss function of each type, from :data:`_LOSSES`.
        label_smoothing: :math:`\varepsilon`.
        f_divergence: One name from :data:`F_DIVERGENCES`.
        f_alpha_divergence_coef: :math:`\alpha` of the alpha-divergence.
        discopop_tau: :math:`\tau` of ``discopop``.
        length_normalised: The types (sorted) that need both lengths, checked up front.
        length_checks: ``(loss type, length argument)`` pairs, each argument once, in the
            order the lengths are checked.
    """

    types: tuple[str, ...]
    weights: tuple[float, ...]
    losses: tuple[LossFn, ...]
    label_smoothing: float
    f_divergence: str
    f_alpha_divergence_coef: float
    discopop_tau: float
    length_normalised: tuple[str, ...]
    length_checks: tuple[tuple[str, str], ...]


def _resolve(
    loss_type: str | Sequence[str],
    loss_weights: Sequence[float] | None,
    label_smoothing: float,
    f_divergence: str,
    f_alpha_divergence_coef: float,
    discopop_tau: float,
) -> _DPOSpec:
    """Check the hyper-parameters of :func:`dpo_loss` but ``beta`` and look up the loss types."""
    types, weights = _check_loss_types(loss_type, loss_weights)
    _check_hyperparameters(types, float(label_smoothing), f_divergence, float(discopop_tau))
    length_checks: list[tuple[str, str]] = []
    for name in types:
        for length in _NEEDS_LENGTHS.get(name, ()):
            if all(length != checked for _, checked in length_checks):
                length_checks.append((name, length))
    return _DPOSpec(
        types=tuple(types),
        weights=tuple(weights),
        losses=tuple(_LOSSES[name] for name in types),
        label_smoothing=float(label_smoothing),
        f_divergence=f_divergence,
        f_alpha_divergence_coef=float(f_alpha_divergence_coef),
        discopop_tau=float(discopop_tau),
        length_normalised=tuple(sorted(_LENGTH_NORMALISED.intersection(types))),
        length_checks=tuple(length_checks),
    )


def _check_dpo_logps(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
) -> list[Tensor]:
    """:func:`_check_logps` on the four DPO inputs; returns them in their common dtype."""
    checked, _ = _check_logps(
        [
            ("policy_chosen_logps", policy_chosen_logps),
            ("policy_rejected_logps", policy_rejected_logps),
            ("ref_chosen_logps", ref_chosen_logps),
            ("ref_rejected_logps", ref_rejected_logps),
        ]
    )
    return checked


def _spec_lengths(
    spec: _DPOSpec, like: Tensor, chosen_lengths: Tensor | None, rejected_lengths: Tensor | None
) -> tuple[Tensor | None, Tensor | None]:
    """Check the lengths the spec's loss types read; return them cast to ``like``'s dtype."""
    given = {"chosen_lengths": chosen_lengths, "rejected_lengths": rejected_lengths}
    if spec.length_normalised:
        missing = [name for name, value in given.items() if value is None]
        if missing:
            raise ValueError(
                f"loss_type {list(spec.length_normalised)} normalises by the response lengths: "
                f"pass chosen_lengths and rejected_lengths (missing: {', '.join(missing)})"
            )
    checked = {
        name: _check_lengths(name, given[name], like, loss) for loss, name in spec.length_checks
    }
    return checked.get("chosen_lengths"), checked.get("rejected_lengths")


def _dpo(
    spec: _DPOSpec,
    logps: Sequence[Tensor],
    beta: float | Tensor,
    chosen_lengths: Tensor | None,
    rejected_lengths: Tensor | None,
) -> DPOOutput:
    """:func:`dpo_loss` on checked log-probs (one dtype) and a checked ``beta``."""
    pc, pr, rc, rr = logps
    chosen_logratios = pc - rc
    rejected_logratios = pr - rr
    cs = _f_scores(chosen_logratios, spec.f_divergence, spec.f_alpha_divergence_coef)
    rs = _f_scores(rejected_logratios, spec.f_divergence, spec.f_alpha_divergence_coef)
    n_w, n_l = _spec_lengths(spec, pc, chosen_lengths, rejected_lengths)
    terms = _Terms(
        policy_chosen=pc,
        policy_rejected=pr,
        ref_chosen=rc,
        ref_rejected=rr,
        chosen_logratios=chosen_logratios,
        rejected_logratios=rejected_logratios,
        cs=cs,
        rs=rs,
        delta=cs - rs,
        beta=beta,
        label_smoothing=spec.label_smoothing,
        chosen_lengths=n_w,
        rejected_lengths=n_l,
        discopop_tau=spec.discopop_tau,
    )

    total: Tensor | None = None
    for loss_fn, weight in zip(spec.losses, spec.weights, strict=True):
        losses = loss_fn(terms)
        weighted = losses * weight if weight != 1.0 else losses
        total = weighted if total is None else total + weighted
    assert total is not None  # the spec has at least one loss type

    chosen_rewards = (beta * chosen_logratios).detach()
    rejected_rewards = (beta * rejected_logratios).detach()
    return DPOOutput(
        loss=total.mean(),
        losses=total,
        chosen_rewards=chosen_rewards,
        rejected_rewards=rejected_rewards,
        margins=chosen_rewards - rejected_rewards,
        accuracies=(chosen_rewards > rejected_rewards).float(),
    )


# --------------------------------------------------------------------------------------------
# DPO: the functional form and the module
# --------------------------------------------------------------------------------------------


def dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    loss_type: str | Sequence[str] = "sigmoid",
    beta: float | Tensor = 0.1,
    label_smoothing: float = 0.0,
    loss_weights: Sequence[float] | None = None,
    chosen_lengths: Tensor | None = None,
    rejected_lengths: Tensor | None = None,
    f_divergence: str = "reverse_kl",
    f_alpha_divergence_coef: float = 0.5,
    discopop_tau: float = 0.05,
) -> DPOOutput:
    r"""Direct preference optimisation loss, in any of TRL's ``DPOTrainer`` variants.

    With :math:`c, r` the chosen and rejected policy/reference log-ratios, :math:`s_w = f(c)`,
    :math:`s_l = f(r)` their f-divergence scores, :math:`\Delta = s_w - s_l`,
    :math:`\varepsilon` = ``label_smoothing`` and :math:`n_w, n_l` the response lengths
    (clamped to at least 1), the per-pair loss of each ``loss_type`` is:

    * ``"sigmoid"`` — DPO (Rafailov et al., arXiv:2305.18290), with the conservative-DPO label
      smoothing of cDPO (Mitchell, 2023; see arXiv:2403.00409):
      :math:`-(1-\varepsilon)\log\sigma(\beta\Delta) - \varepsilon\log\sigma(-\beta\Delta)`.
    * ``"hinge"`` — SLiC-style hinge (arXiv:2305.10425): :math:`\max(0, 1 - \beta\Delta)`.
    * ``"ipo"`` — IPO (Azar et al., arXiv:2310.12036), with the log-ratios averaged over the
      response tokens as TRL does:
      :math:`\left(\frac{s_w}{n_w} - \frac{s_l}{n_l} - \frac{1}{2\beta}\right)^2`.
      Needs ``chosen_lengths`` and ``rejected_lengths``.
    * ``"exo_pair"`` — EXO (Ji et al., arXiv:2402.00856), the reverse KL between the model's
      and the :math:`\varepsilon`-smoothed data preference:
      :math:`\sigma(\beta\Delta)\,[\log\sigma(\beta\Delta) - \log(1-\varepsilon)]
      + \sigma(-\beta\Delta)\,[\log\sigma(-\beta\Delta) - \log\varepsilon]`.
      Needs ``label_smoothing > 0`` (the paper uses ``1e-3``).
    * ``"nca_pair"`` — NCA (Chen et al., arXiv:2402.05369):
      :math:`-\log\sigma(\beta s_w) - \tfrac12\log\sigma(-\beta s_w)
      - \tfrac12\log\sigma(-\beta s_l)`.
    * ``"robust"`` — Robust DPO (Chowdhury et al., arXiv:2403.00409), unbiased under label
      flips with rate :math:`\varepsilon < 1/2`:
      :math:`\frac{-(1-\varepsilon)\log\sigma(\beta\Delta)
      + \varepsilon\log\sigma(-\beta\Delta)}{1-2\varepsilon}`.
    * ``"bco_pair"`` — BCO (Jung et al., arXiv:2404.04656), without the running reward
      shift: :math:`-\log\sigma(\beta s_w) - \log\sigma(-\beta s_l)`.
    * ``"sppo_hard"`` — SPPO with hard labels (Wu et al., arXiv:2405.00675):
      :math:`\left(s_w - \frac{1}{2\beta}\right)^2 + \left(s_l + \frac{1}{2\beta}\right)^2`.
    * ``"aot"`` — AOT, paired (Melnyk et al., arXiv:2406.05882): with
      :math:`\delta = \operatorname{sort}(\log\pi_\theta(y_w) - \log\pi_\theta(y_l))
      - \operatorname{sort}(\log\pi_\mathrm{ref}(y_w) - \log\pi_\mathrm{ref}(y_l))`
      (each sorted over the batch),
      :math:`-(1-\varepsilon)\log\sigma(\beta\delta) - \varepsilon\log\sigma(-\beta\delta)`.
    * ``"aot_unpaired"`` — AOT, unpaired: the same with
      :math:`\delta = \operatorname{sort}(c) - \operatorname{sort}(r)`.
    * ``"apo_zero"`` — APO-zero (D'Oosterlinck et al., arXiv:2408.06266), for chosen answers
      better than the model's: :math:`1 - \sigma(\beta c) + \sigma(\beta r)`.
    * ``"apo_down"`` — APO-down, for chosen answers worse than the model's:
      :math:`\sigma(\beta c) + 1 - \sigma(\beta\Delta)`.
    * ``"discopop"`` — DiscoPOP, the log-ratio modulated loss (Chan Lu et al.,
      arXiv:2406.08414): with :math:`z = \beta\Delta` and :math:`m = \sigma(z/\tau)`,
      :math:`-(1-m)\log\sigma(z) + m\,e^{-z}`, :math:`\tau` = ``discopop_tau``.
    * ``"sft"`` — the supervised negative log-likelihood of the chosen responses, averaged
      over all chosen tokens of the batch and given to every pair:
      :math:`-\sum_i \log\pi_\theta(y_w^i) / \sum_i n_w^i`. Needs ``chosen_lengths``.
    * ``"sigmoid_norm"`` — DPO on length-normalised log-ratios, SimPO-style (Meng et al.,
      arXiv:2405.14734) but keeping the reference:
      :math:`-\log\sigma\!\left(\beta\left(\frac{s_w}{n_w} - \frac{s_l}{n_l}\right)\right)`.
      Needs ``chosen_lengths`` and ``rejected_lengths``.

    The f-divergence scores (f-DPO, Wang et al., arXiv:2309.16240) are, for a log-ratio
    :math:`t`: ``"reverse_kl"`` :math:`t`; ``"forward_kl"`` :math:`-e^{-t}`;
    ``"js_divergence"`` :math:`\log\sigma(t)`; ``"alpha_divergence"``
    :math:`e^{(\alpha-1)t}/(\alpha-1)` with :math:`\alpha` = ``f_alpha_divergence_coef``.
    The rewards are always the reverse-KL ones: :math:`\beta c` and :math:`\beta r`.

    Args:
        policy_chosen_logps: Summed response log-probs of the chosen responses under the
            policy, shape ``(B,)``.
        policy_rejected_logps: Same for the rejected responses, shape ``(B,)``.
        ref_chosen_logps: Summed response log-probs of the chosen responses under the frozen
            reference model, shape ``(B,)``.
        ref_rejected_logps: Same for the rejected responses, shape ``(B,)``.
        loss_type: One name from :data:`LOSS_TYPES`, or a list of them to combine.
        beta: Inverse temperature :math:`\beta > 0`: a float or a tensor broadcastable to
            ``(B,)`` (one :math:`\beta` per pair).
        label_smoothing: :math:`\varepsilon` in ``[0, 0.5]`` for ``sigmoid``, ``robust``
            (``< 0.5``), ``aot``, ``aot_unpaired`` and ``exo_pair`` (``> 0``).
        loss_weights: One weight per loss type when ``loss_type`` is a list (default: all 1).
        chosen_lengths: Number of response tokens of each chosen sequence, shape ``(B,)``;
            needed by ``ipo``, ``sft`` and ``sigmoid_norm``.
        rejected_lengths: Same for the rejected sequences; needed by ``ipo`` and
            ``sigmoid_norm``.
        f_divergence: One name from :data:`F_DIVERGENCES`.
        f_alpha_divergence_coef: :math:`\alpha` of the alpha-divergence (TRL's default 0.5).
        discopop_tau: Temperature :math:`\tau` of the DiscoPOP modulation (default 0.05).

    Returns:
        A :class:`DPOOutput`: the scalar ``loss`` (mean over pairs of the weighted sum of the
        loss types), the per-pair ``losses`` and the detached reward statistics.

    Raises:
        ValueError: On inputs of the wrong type, dtype or shape, an unknown loss type or
            f-divergence, mismatched ``loss_weights``, a non-positive ``beta``, an
            out-of-range ``label_smoothing`` or missing lengths.

    The computation is done in the (promoted) dtype of the four log-prob inputs.
    """
    logps = _check_dpo_logps(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps
    )
    spec = _resolve(
        loss_type,
        loss_weights,
        label_smoothing,
        f_divergence,
        f_alpha_divergence_coef,
        discopop_tau,
    )
    return _dpo(spec, logps, _check_beta(beta, logps[0]), chosen_lengths, rejected_lengths)


class DPOLoss(nn.Module):
    """:func:`dpo_loss` as an ``nn.Module`` holding its hyper-parameters.

    The hyper-parameters are validated when the module is built. ``forward`` takes the four
    ``(B,)`` log-prob tensors (and the lengths where the loss type needs them) and returns a
    :class:`DPOOutput`.

    Example:
        >>> criterion = DPOLoss(loss_type="sigmoid", beta=0.1)
        >>> out = criterion(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
        >>> out.loss.backward()
    """

    def __init__(
        self,
        loss_type: str | Sequence[str] = "sigmoid",
        *,
        beta: float = 0.1,
        label_smoothing: float = 0.0,
        loss_weights: Sequence[float] | None = None,
        f_divergence: str = "reverse_kl",
        f_alpha_divergence_coef: float = 0.5,
        discopop_tau: float = 0.05,
    ) -> None:
        super().__init__()
        spec = _resolve(
            loss_type,
            loss_weights,
            label_smoothing,
            f_divergence,
            f_alpha_divergence_coef,
            discopop_tau,
        )
        _check_beta(beta, torch.empty(1))
        self._spec = spec
        self.loss_type: list[str] = list(spec.types)
        self.loss_weights: list[float] = list(spec.weights)
        self.beta = float(beta)
        self.label_smoothing = spec.label_smoothing
        self.f_divergence = spec.f_divergence
        self.f_alpha_divergence_coef = spec.f_alpha_divergence_coef
        self.discopop_tau = spec.discopop_tau

    def forward(
        self,
        policy_chosen_logps: Tensor,
        policy_rejected_logps: Tensor,
        ref_chosen_logps: Tensor,
        ref_rejected_logps: Tensor,
        chosen_lengths: Tensor | None = None,
        rejected_lengths: Tensor | None = None,
    ) -> DPOOutput:
        """Compute :func:`dpo_loss` with this module's hyper-parameters; shapes ``(B,)``."""
        logps = _check_dpo_logps(
            policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps
        )
        return _dpo(self._spec, logps, self.beta, chosen_lengths, rejected_lengths)

    def extra_repr(self) -> str:
        return (
            f"loss_type={self.loss_type}, loss_weights={self.loss_weights}, beta={self.beta}, "
            f"label_smoothing={self.label_smoothing}, f_divergence={self.f_divergence!r}"
        )


# --------------------------------------------------------------------------------------------
# POVID
# --------------------------------------------------------------------------------------------


def _check_povid_hyperparameters(
    combine: str, weights: Sequence[float], chosen_weight: float
) -> tuple[float, float]:
    """Check the POVID combination mode and weights; return ``(w_noisy, w_text)``."""
    if combine not in POVID_COMBINES:
        raise ValueError(f"unknown combine {combine!r}; valid ones: {POVID_COMBINES}")
    pair = tuple(float(w) for w in weights)
    if len(pair) != 2:
        raise ValueError(
            f"weights must have two entries (noisy weight, text weight), got {len(pair)}"
        )
    w_noisy, w_text = pair
    if not all(math.isfinite(w) and w >= 0 for w in pair) or w_noisy + w_text <= 0:
        raise ValueError(f"weights must be finite, >= 0 and not both 0, got {pair}")
    if not (math.isfinite(chosen_weight) and chosen_weight > 0):
        raise ValueError(f"chosen_weight must be a finite number > 0, got {chosen_weight}")
    return w_noisy, w_text


def povid_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    policy_noisy_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    ref_noisy_logps: Tensor,
    *,
    beta: float | Tensor = 0.1,
    combine: str = "mean_of_dpo",
    weights: Sequence[float] = (0.5, 0.5),
    chosen_weight: float = 1.0,
) -> POVIDOutput:
    r"""The POVID dual-rejected preference loss (Zhou et al., arXiv:2402.11411).

    Each pair has one chosen response :math:`y_w`, one rejected response with hallucinated text
    :math:`y_l^{text}` (the ``rejected`` inputs) and one response the policy generated from a
    noise-distorted image :math:`y_l^{noise}` (the ``noisy`` inputs). With
    :math:`D(y) = \log\pi_\theta(y) - \log\pi_\mathrm{ref}(y)` (sums over response tokens) and
    ``weights`` :math:`= (w_n, w_t)` — the **first** weight goes with the noisy rejected
    response, the **second** with the text one, in both modes:

    * ``"mean_of_dpo"`` (the official code, stage 2 — default): a weighted mean of two sigmoid
      DPO losses,

      .. math::
          \frac{w_n\,\ell(D(y_w) - D(y_l^{noise})) + w_t\,\ell(D(y_w) - D(y_l^{text}))}
               {w_n + w_t},
          \qquad \ell(d) = -\log\sigma(\beta d);

      with the default ``(0.5, 0.5)`` it is exactly the official
      :math:`\tfrac12\ell(\cdot) + \tfrac12\ell(\cdot)`.
      ``margins`` are :math:`\beta D(y_w) - \beta\frac{w_n D(y_l^{noise})
      + w_t D(y_l^{text})}{w_n + w_t}`.
    * ``"single_sigmoid"`` (the paper's objective, one sigmoid over a weighted margin):

      .. math::
          -\log\sigma\!\left(\beta\left(\alpha D(y_w)
              - \left(w_t D(y_l^{text}) + w_n D(y_l^{noise})\right)\right)\right)

      with :math:`\alpha` = ``chosen_weight``; ``margins`` are the argument of the sigmoid.

    Args:
        policy_chosen_logps: :math:`\log\pi_\theta(y_w)`, shape ``(B,)``.
        policy_rejected_logps: :math:`\log\pi_\theta(y_l^{text})`, shape ``(B,)``.
        policy_noisy_logps: :math:`\log\pi_\theta(y_l^{noise})`, shape ``(B,)``.
        ref_chosen_logps: :math:`\log\pi_\mathrm{ref}(y_w)`, shape ``(B,)``.
        ref_rejected_logps: :math:`\log\pi_\mathrm{ref}(y_l^{text})`, shape ``(B,)``.
        ref_noisy_logps: :math:`\log\pi_\mathrm{ref}(y_l^{noise})`, shape ``(B,)``.
        beta: :math:`\beta` (POVID's :math:`\tau`, 0.1), a float or a tensor broadcastable to
            ``(B,)``.
        combine: ``"mean_of_dpo"`` or ``"single_sigmoid"``.
        weights: ``(noisy weight, text weight)``, finite, ``>= 0``, not both zero.
        chosen_weight: :math:`\alpha`, the weight of the chosen term in ``"single_sigmoid"``
            (ignored by ``"mean_of_dpo"``).

    Returns:
        A :class:`POVIDOutput`.

    Raises:
        ValueError: On inputs of the wrong type, dtype or shape, an unknown ``combine``, bad
            ``weights`` or ``chosen_weight``, or a non-positive ``beta``.
    """
    (pc, pr, pn, rc, rr, rn), _ = _check_logps(
        [
            ("policy_chosen_logps", policy_chosen_logps),
            ("policy_rejected_logps", policy_rejected_logps),
            ("policy_noisy_logps", policy_noisy_logps),
            ("ref_chosen_logps", ref_chosen_logps),
            ("ref_rejected_logps", ref_rejected_logps),
            ("ref_noisy_logps", ref_noisy_logps),
        ]
    )
    w_noisy, w_text = _check_povid_hyperparameters(combine, weights, float(chosen_weight))
    b = _check_beta(beta, pc)

    d_chosen = pc - rc
    d_text = pr - rr
    d_noisy = pn - rn

    if combine == "mean_of_dpo":
        loss_noisy = -F.logsigmoid(b * (d_chosen - d_noisy))
        loss_text = -F.logsigmoid(b * (d_chosen - d_text))
        losses = (w_noisy * loss_noisy + w_text * loss_text) / (w_noisy + w_text)
        margins = b * (d_chosen - (w_noisy * d_noisy + w_text * d_text) / (w_noisy + w_text))
    else:  # single_sigmoid
        margins = b * (chosen_weight * d_chosen - (w_text * d_text + w_noisy * d_noisy))
        losses = -F.logsigmoid(margins)

    chosen_rewards = (b * d_chosen).detach()
    rejected_rewards = (b * d_text).detach()
    noisy_rewards = (b * d_noisy).detach()
    return POVIDOutput(
        loss=losses.mean(),
        losses=losses,
        chosen_rewards=chosen_rewards,
        rejected_rewards=rejected_rewards,
        noisy_rewards=noisy_rewards,
        margins=margins.detach(),
        accuracies=((chosen_rewards > rejected_rewards) & (chosen_rewards > noisy_rewards)).float(),
    )


class POVIDLoss(nn.Module):
    """:func:`povid_loss` as an ``nn.Module`` holding its hyper-parameters.

    ``forward`` takes the six ``(B,)`` log-prob tensors (policy chosen, rejected, noisy; then
    reference chosen, rejected, noisy) and returns a :class:`POVIDOutput`.
    """

    def __init__(
        self,
        *,
        beta: float = 0.1,
        combine: str = "mean_of_dpo",
        weights: Sequence[float] = (0.5, 0.5),
        chosen_weight: float = 1.0,
    ) -> None:
        super().__init__()
        w_noisy, w_text = _check_povid_hyperparameters(combine, weights, float(chosen_weight))
        _check_beta(beta, torch.empty(1))
        self.beta = float(beta)
        self.combine = combine
        self.weights: tuple[float, float] = (w_noisy, w_text)
        self.chosen_weight = float(chosen_weight)

    def forward(
        self,
        policy_chosen_logps: Tensor,
        policy_rejected_logps: Tensor,
        policy_noisy_logps: Tensor,
        ref_chosen_logps: Tensor,
        ref_rejected_logps: Tensor,
        ref_noisy_logps: Tensor,
    ) -> POVIDOutput:
        """Compute :func:`povid_loss` with this module's hyper-parameters; shapes ``(B,)``."""
        return povid_loss(
            policy_chosen_logps,
            policy_rejected_logps,
            policy_noisy_logps,
            ref_chosen_logps,
            ref_rejected_logps,
            ref_noisy_logps,
            beta=self.beta,
            combine=self.combine,
            weights=self.weights,
            chosen_weight=self.chosen_weight,
        )

    def extra_repr(self) -> str:
        return (
            f"beta={self.beta}, combine={self.combine!r}, weights={self.weights}, "
            f"chosen_weight={self.chosen_weight}"
        )


# --------------------------------------------------------------------------------------------
# per-row pair modes (a mixed dataset in one run)
# --------------------------------------------------------------------------------------------


def _check_masks(has_text: Tensor, has_image: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
    masks = []
    for name, mask in (("has_text", has_text), ("has_image", has_image)):
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool or mask.shape != like.shape:
            raise ValueError(f"{name} must be a bool tensor of shape {tuple(like.shape)}")
        masks.append(mask.to(like.device))
    if not bool((masks[0] | masks[1]).all()):
        raise ValueError("every row needs has_text or has_image (a row with no contrast)")
    return masks[0], masks[1]


def pair_mode_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    policy_noisy_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    ref_noisy_logps: Tensor,
    *,
    has_text: Tensor,
    has_image: Tensor,
    beta: float | Tensor = 0.1,
    combine: str = "mean_of_dpo",
    weights: Sequence[float] = (0.5, 0.5),
    chosen_weight: float = 1.0,
) -> POVIDOutput:
    r"""A batch of mixed pair modes: each row gets the loss terms its shape supports.

    ``has_text`` / ``has_image`` (``(B,)`` bool) say which contrasts a row carries
    (:func:`povidgen.pairs.modes.pair_mode_of`: ``text`` rows the text one, ``image`` rows the
    image one, ``both`` rows both). With :math:`D(y) = \log\pi_\theta(y) -
    \log\pi_\mathrm{ref}(y)` and :math:`\ell(d) = -\log\sigma(\beta d)`, row :math:`i`'s loss is

    * text row: :math:`\ell(D(y_w) - D(y_l^{text}))`, sigmoid DPO, what ``mode="text"`` gives;
    * image row: :math:`\ell(D(y_w) - D(y_l^{noise}))`, where the ``noisy`` inputs of an image
      row hold :math:`\log\pi(y_w \mid I_{noisy}, q)`, what ``mode="image"`` gives;
    * both row: :func:`povid_loss` with ``combine`` / ``weights`` / ``chosen_weight``, where the
      ``noisy`` inputs hold POVID's argmax score, what ``mode="povid"`` gives.

    The selection is a per-row ``torch.where`` over the three batched terms (no loop over
    rows): a term a row does not have contributes neither value nor gradient. ``loss`` is the
    mean of ``losses`` over the ``B`` rows, so a mixed batch's loss is
    :math:`\frac1B\sum_i` (row :math:`i`'s loss in its own mode).

    ``margins`` and ``accuracies`` follow the row's terms (an image row's accuracy compares the
    chosen reward with the noisy one only); ``rejected_rewards`` / ``noisy_rewards`` are
    reported for every row as computed (an image row's text reward is meaningless).

    Args:
        policy_chosen_logps: :math:`\log\pi_\theta(y_w)`, shape ``(B,)``.
        policy_rejected_logps: :math:`\log\pi_\theta(y_l^{text})`, shape ``(B,)``.
        policy_noisy_logps: the policy's noisy score (see above), shape ``(B,)``.
        ref_chosen_logps: :math:`\log\pi_\mathrm{ref}(y_w)`, shape ``(B,)``.
        ref_rejected_logps: :math:`\log\pi_\mathrm{ref}(y_l^{text})`, shape ``(B,)``.
        ref_noisy_logps: the reference's noisy score, shape ``(B,)``.
        has_text: ``(B,)`` bool, the rows with a text contrast (``text`` and ``both``).
        has_image: ``(B,)`` bool, the rows with an image contrast (``image`` and ``both``);
            every row needs at least one of the two.
        beta: as in :func:`povid_loss`.
        combine: as in :func:`povid_loss`; it shapes the ``both`` rows only (text and image
            rows take plain sigmoid DPO).
        weights: as in :func:`povid_loss` (``both`` rows only).
        chosen_weight: as in :func:`povid_loss` (``both`` rows, ``"single_sigmoid"`` only).

    Returns:
        A :class:`POVIDOutput`.

    Raises:
        ValueError: on what :func:`povid_loss` refuses, masks that are not ``(B,)`` bool, or a
            row with neither contrast.
    """
    out = povid_loss(
        policy_chosen_logps,
        policy_rejected_logps,
        policy_noisy_logps,
        ref_chosen_logps,
        ref_rejected_logps,
        ref_noisy_logps,
        beta=beta,
        combine=combine,
        weights=weights,
        chosen_weight=chosen_weight,
    )
    text, image = _check_masks(has_text, has_image, out.losses)
    (pc, pr, pn, rc, rr, rn), _ = _check_logps(
        [
            ("policy_chosen_logps", policy_chosen_logps),
            ("policy_rejected_logps", policy_rejected_logps),
            ("policy_noisy_logps", policy_noisy_logps),
            ("ref_chosen_logps", ref_chosen_logps),
            ("ref_rejected_logps", ref_rejected_logps),
            ("ref_noisy_logps", ref_noisy_logps),
        ]
    )
    b = _check_beta(beta, pc)
    margin_text = b * ((pc - rc) - (pr - rr))
    margin_noisy = b * ((pc - rc) - (pn - rn))
    both = text & image
    losses = torch.where(
        both,
        out.losses,
        torch.where(text, -F.logsigmoid(margin_text), -F.logsigmoid(margin_noisy)),
    )
    margins = torch.where(both, out.margins, torch.where(text, margin_text, margin_noisy))
    beats_text = out.chosen_rewards > out.rejected_rewards
    beats_noisy = out.chosen_rewards > out.noisy_rewards
    accuracies = ((beats_text | ~text) & (beats_noisy | ~image)).float()
    return POVIDOutput(
        loss=losses.mean(),
        losses=losses,
        chosen_rewards=out.chosen_rewards,
        rejected_rewards=out.rejected_rewards,
        noisy_rewards=out.noisy_rewards,
        margins=margins.detach(),
        accuracies=accuracies,
    )


class PairModeLoss(POVIDLoss):
    """:func:`pair_mode_loss` as an ``nn.Module`` holding its hyper-parameters (those of
    :class:`POVIDLoss`).

    ``forward`` takes the six ``(B,)`` log-prob tensors and the ``(B,)`` bool masks
    ``has_text`` and ``has_image`` and returns a :class:`POVIDOutput`.
    """

    def forward(  # type: ignore[override]
        self,
        policy_chosen_logps: Tensor,
        policy_rejected_logps: Tensor,
        policy_noisy_logps: Tensor,
        ref_chosen_logps: Tensor,
        ref_rejected_logps: Tensor,
        ref_noisy_logps: Tensor,
        has_text: Tensor,
        has_image: Tensor,
    ) -> POVIDOutput:
        """Compute :func:`pair_mode_loss` with this module's hyper-parameters."""
        return pair_mode_loss(
            policy_chosen_logps,
            policy_rejected_logps,
            policy_noisy_logps,
            ref_chosen_logps,
            ref_rejected_logps,
            ref_noisy_logps,
            has_text=has_text,
            has_image=has_image,
            beta=self.beta,
            combine=self.combine,
            weights=self.weights,
            chosen_weight=self.chosen_weight,
        )
