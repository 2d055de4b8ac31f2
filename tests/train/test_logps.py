"""sequence_logps against log_softmax-and-gather on the full logits; noisy_logps by hand."""

from __future__ import annotations

import pytest
import torch

from povidgen.train.logps import SequenceLogps, sequence_logps
from povidgen.train.noisy import noisy_logps, noisy_tokens


def full_logits_logps(
    hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, shift: bool = True
) -> torch.Tensor:
    """The reference: every logit, in fp32 (fp64 for fp64 inputs)."""
    logits = (hidden @ weight.t()).to(torch.promote_types(hidden.dtype, torch.float32))
    if shift:
        logits, labels = logits[:, :-1], labels[:, 1:]
    mask = labels != -100
    picked = logits.log_softmax(-1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (picked * mask).sum(-1)


def make(
    dtype: torch.dtype = torch.float32, *, b: int = 3, t: int = 19, h: int = 16, v: int = 97
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(b, t, h, generator=generator).to(dtype)
    weight = (torch.randn(v, h, generator=generator) * h**-0.5 * 3).to(dtype)
    labels = torch.randint(0, v, (b, t), generator=generator)
    labels[:, : t // 2] = -100  # the prompt
    labels[1, t - 3 :] = -100  # right padding
    if b > 2:
        labels[2, :] = -100  # a row with no response at all
    return hidden, weight, labels


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp(min=1e-30))


@pytest.mark.parametrize("trainable_head", [True, False])
@pytest.mark.parametrize("chunk_size", [1, 4, 1024])
@pytest.mark.parametrize("shift", [True, False])
def test_values_and_gradients_match_full_logits_fp32(
    trainable_head: bool, chunk_size: int, shift: bool
) -> None:
    hidden, weight, labels = make()
    hidden.requires_grad_(True)
    weight.requires_grad_(trainable_head)
    upstream = torch.tensor([0.7, -1.3, 2.0])
    inputs = [hidden, weight] if trainable_head else [hidden]

    ours = sequence_logps(hidden, weight, labels, chunk_size=chunk_size, shift=shift)
    ours_grads = torch.autograd.grad((ours * upstream).sum(), inputs)
    reference = full_logits_logps(hidden, weight, labels, shift)
    reference_grads = torch.autograd.grad((reference * upstream).sum(), inputs)

    assert ours.dtype == torch.float32
    assert ours.detach()[2] == 0.0
    assert relative_error(ours, reference) < 1e-5
    for mine, theirs in zip(ours_grads, reference_grads, strict=True):
        assert relative_error(mine, theirs) < 1e-5


@pytest.mark.parametrize("trainable_head", [True, False])
def test_bf16_within_one_percent(trainable_head: bool) -> None:
    hidden, weight, labels = make(torch.bfloat16)
    hidden.requires_grad_(True)
    weight.requires_grad_(trainable_head)
    inputs = [hidden, weight] if trainable_head else [hidden]
    ours = sequence_logps(hidden, weight, labels, chunk_size=5)
    ours_grads = torch.autograd.grad(ours.sum(), inputs)
    # the reference keeps full precision: fp32 copies of the same bf16 values
    ref_inputs = [x.detach().float().requires_grad_(True) for x in (hidden, weight)]
    reference = full_logits_logps(ref_inputs[0], ref_inputs[1], labels)
    reference_grads = torch.autograd.grad(reference.sum(), ref_inputs[: len(inputs)])
    assert relative_error(ours, reference) < 1e-2
    for mine, theirs in zip(ours_grads, reference_grads, strict=True):
        assert mine.dtype == torch.bfloat16
        assert relative_error(mine, theirs) < 1e-2


def test_gradcheck_float64() -> None:
    hidden, weight, labels = make(torch.float64, b=2, t=7, h=4, v=11)
    hidden.requires_grad_(True)
    weight.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda h, w: sequence_logps(h, w, labels, chunk_size=3), (hidden, weight)
    )
    frozen = weight.detach()
    assert torch.autograd.gradcheck(
        lambda h: sequence_logps(h, frozen, labels, chunk_size=3), (hidden,)
    )


def test_no_graph_without_grad() -> None:
    hidden, weight, labels = make()
    hidden.requires_grad_(True)
    with torch.no_grad():
        out = sequence_logps(hidden, weight, labels)
    assert not out.requires_grad
    assert relative_error(out, full_logits_logps(hidden, weight, labels).detach()) < 1e-5


def test_per_token_and_metrics_on_the_same_pass() -> None:
    hidden, weight, labels = make()
    result = sequence_logps(hidden, weight, labels, return_per_token=True, return_metrics=True)
    assert isinstance(result, SequenceLogps)
    logits = (hidden @ weight.t())[:, :-1]
    targets = labels[:, 1:]
    mask = targets != -100
    assert result.lengths.tolist() == mask.sum(-1).tolist()
    assert result.per_token is not None
    expected_tokens = logits.log_softmax(-1).gather(-1, targets.clamp(min=0)[..., None])[..., 0]
    torch.testing.assert_close(result.per_token[:, 1:][mask], expected_tokens[mask])
    assert torch.all(result.per_token[:, 0] == 0)
    torch.testing.assert_close(result.per_token.sum(-1), result.logps)

    p = logits.softmax(-1)
    entropy = -(p * p.log()).sum(-1)
    accuracy = (logits.argmax(-1) == targets).float()
    for name, per_position in (
        ("entropy", entropy),
        ("token_accuracy", accuracy),
        ("mean_logit", logits.mean(-1)),
    ):
        value = getattr(result, name)
        for row in range(2):
            torch.testing.assert_close(value[row], per_position[row][mask[row]].mean())
        assert value[2] == 0  # no response tokens


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"hidden": torch.zeros(2, 3)}, "hidden_states must be"),
        ({"weight": torch.zeros(5, 7)}, "lm_head_weight must be"),
        ({"labels": torch.zeros(3, 4, dtype=torch.long)}, "labels must be"),
        ({"labels": torch.zeros(3, 19)}, "integer"),
        ({"labels": torch.full((3, 19), 97)}, "outside"),
        ({"weight": torch.zeros(97, 16, dtype=torch.float64)}, "one dtype"),
        ({"chunk_size": 0}, "chunk_size"),
    ],
)
def test_bad_inputs(change: dict[str, object], message: str) -> None:
    hidden, weight, labels = make()
    args: dict[str, object] = {"hidden": hidden, "weight": weight, "labels": labels}
    args.update(change)
    chunk = args.pop("chunk_size", 1024)
    with pytest.raises(ValueError, match=message):
        sequence_logps(args["hidden"], args["weight"], args["labels"], chunk_size=chunk)  # type: ignore[arg-type]


def test_noisy_tokens_by_hand() -> None:
    # vocabulary of 4; one sequence of 4 positions, response = the last two labels (shifted)
    noisy_logits = torch.tensor(
        [
            [
                [0.0, 0.0, 0.0, 0.0],
                [0.0, 5.0, 3.0, 0.0],  # predicts label[2]: argmax 1, second 2
                [0.0, 0.0, 1.0, 4.0],  # predicts label[3]: argmax 3, second 2
                [9.0, 0.0, 0.0, 0.0],
            ]
        ]
    )
    labels = torch.tensor([[-100, -100, 1, 0]])  # gold: 1 then 0
    keep = noisy_tokens(noisy_logits, labels)
    assert keep.tolist() == [[-100, -100, 1, 3]]  # position 2 overlaps the gold token: kept
    assert noisy_tokens(noisy_logits, labels, overlap="second_best").tolist() == [
        [-100, -100, 2, 3]
    ]
    assert noisy_tokens(noisy_logits, labels, overlap="mask").tolist() == [[-100, -100, -100, 3]]
    with pytest.raises(ValueError, match="overlap"):
        noisy_tokens(noisy_logits, labels, overlap="drop")  # type: ignore[arg-type]


def test_noisy_logps_reads_the_noisy_argmax_under_the_clean_image() -> None:
    hidden, weight, labels = make()
    noisy_hidden = hidden + 0.8 * torch.randn(
        hidden.shape, generator=torch.Generator().manual_seed(1)
    )
    clean = hidden.clone().requires_grad_(True)
    score = noisy_logps(clean, noisy_hidden, weight, labels)
    # by hand: argmax of the full noisy logits, scored with the full clean logits
    noisy_logits = (noisy_hidden @ weight.t())[:, :-1]
    clean_logits = (clean @ weight.t())[:, :-1]
    targets = labels[:, 1:]
    mask = targets != -100
    chosen_tokens = noisy_logits.argmax(-1)
    expected = (
        clean_logits.log_softmax(-1).gather(-1, chosen_tokens[..., None])[..., 0] * mask
    ).sum(-1)
    torch.testing.assert_close(score, expected)
    score.sum().backward()
    assert clean.grad is not None
    assert clean.grad.abs().sum() > 0


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda
@pytest.mark.parametrize("trainable_head", [True, False])
def test_cuda_bf16_matches_an_fp32_reference(trainable_head: bool) -> None:
    """On CUDA the chunk logits come straight out of the matmul in fp32 (mm out_dtype)."""
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(4, 300, 256, generator=generator).to("cuda", torch.bfloat16)
    weight = (torch.randn(5000, 256, generator=generator) * 0.2).to("cuda", torch.bfloat16)
    labels = torch.randint(0, 5000, (4, 300), generator=generator).cuda()
    labels[:, :200] = -100
    hidden.requires_grad_(True)
    weight.requires_grad_(trainable_head)
    inputs = [hidden, weight] if trainable_head else [hidden]
    ours = sequence_logps(hidden, weight, labels, chunk_size=128)
    ours_grads = torch.autograd.grad(ours.sum(), inputs)
    ref_inputs = [x.detach().float().requires_grad_(True) for x in (hidden, weight)]
    reference = full_logits_logps(ref_inputs[0], ref_inputs[1], labels)
    reference_grads = torch.autograd.grad(reference.sum(), ref_inputs[: len(inputs)])
    assert relative_error(ours, reference) < 1e-3
    for mine, theirs in zip(ours_grads, reference_grads, strict=True):
        assert relative_error(mine, theirs) < 1e-2


@cuda
@pytest.mark.parametrize("vocab", [33, 5000, 152064])
def test_cuda_fused_softmax_kernels_match_torch(vocab: int) -> None:
    from povidgen.train import _softmax_kernels

    if not _softmax_kernels.AVAILABLE:
        pytest.skip("triton is not installed")
    generator = torch.Generator().manual_seed(vocab)
    logits = (torch.randn(7, vocab, generator=generator) * 4).cuda()
    upstream = torch.randn(7, generator=generator).cuda()
    targets = torch.randint(0, vocab, (7,), generator=generator).cuda()
    lse = _softmax_kernels.row_logsumexp(logits)
    torch.testing.assert_close(lse, torch.logsumexp(logits, dim=1))
    grad = _softmax_kernels.softmax_grad(logits, lse, upstream, targets, torch.float32)
    onehot = torch.nn.functional.one_hot(targets, vocab).float()
    torch.testing.assert_close(grad, upstream[:, None] * (onehot - logits.softmax(dim=1)))
