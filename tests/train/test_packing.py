"""Shared-prefix packing: exact layout, masks, and equality with separate forwards."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence
from typing import Any

import pytest
import torch
from torch import Tensor

from povidgen.train.packing import (
    GroupSlices,
    PackedBatch,
    flex_block_mask,
    gather_response_hidden,
    model_inputs,
    pack_shared_prefix,
    packed_response_logps,
    response_targets,
    unpack_response_logps,
)

transformers = pytest.importorskip("transformers")

HAS_FLEX = importlib.util.find_spec("torch.nn.attention.flex_attention") is not None
HAS_QWEN2_VL = hasattr(transformers, "Qwen2VLForConditionalGeneration")

# Eager (uncompiled) flex_attention warns that it materialises the scores; on CPU in a unit test
# that is exactly what we want, and compiling would take far longer than the test budget.
FLEX_EAGER_WARNING = "ignore:flex_attention called without torch.compile:UserWarning"

VOCAB = 97
T = True
F = False


def ids(*values: int) -> Tensor:
    return torch.tensor(values, dtype=torch.long)


def rand_ids(generator: torch.Generator, n: int) -> Tensor:
    return torch.randint(1, VOCAB, (n,), generator=generator)


def naive_logps(hidden: Tensor, weight: Tensor, labels: Tensor) -> Tensor:
    """Reference: ``hidden[:, t]`` predicts ``labels[:, t]``; -100 is skipped. ``(B,)``."""
    logp = torch.log_softmax(hidden @ weight.T, dim=-1)
    keep = labels != -100
    picked = logp.gather(-1, labels.clamp(min=0)[..., None])[..., 0]
    return (picked * keep).sum(-1)


# --------------------------------------------------------------------------- layout, by hand


def test_single_group_layout_by_hand() -> None:
    packed = pack_shared_prefix([ids(11, 12, 13)], [[ids(21, 22), ids(31, 32, 33)]])
    assert packed.input_ids.tolist() == [[11, 12, 13, 21, 22, 31, 32, 33]]
    assert packed.position_ids.tolist() == [[0, 1, 2, 3, 4, 3, 4, 5]]
    assert packed.segment_ids.tolist() == [[0, 0, 0, 1, 1, 2, 2, 2]]
    assert packed.group_ids.tolist() == [[0] * 8]
    assert packed.num_responses == 2
    assert packed.num_groups == 1
    assert packed.response_slices == [(0, 0, 3, [(3, 5), (5, 8)])]
    assert isinstance(packed.response_slices[0], GroupSlices)
    expected = [
        # p  p  p  a  a  b  b  b
        [T, F, F, F, F, F, F, F],  # p0
        [T, T, F, F, F, F, F, F],  # p1
        [T, T, T, F, F, F, F, F],  # p2
        [T, T, T, T, F, F, F, F],  # a0
        [T, T, T, T, T, F, F, F],  # a1
        [T, T, T, F, F, T, F, F],  # b0: sees the prefix and itself, not a
        [T, T, T, F, F, T, T, F],  # b1
        [T, T, T, F, F, T, T, T],  # b2
    ]
    assert packed.attention_mask.dtype == torch.bool
    assert packed.attention_mask.shape == (1, 1, 8, 8)
    assert packed.attention_mask[0, 0].tolist() == expected


def test_padding_rows_attend_only_to_themselves() -> None:
    packed = pack_shared_prefix(
        [ids(1, 2), ids(3)], [[ids(4), ids(5)], [ids(6), ids(7)]], pad_token_id=-7
    )
    assert packed.input_ids.tolist() == [[1, 2, 4, 5], [3, 6, 7, -7]]
    assert packed.position_ids.tolist() == [[0, 1, 2, 2], [0, 1, 1, 0]]
    assert packed.segment_ids.tolist() == [[0, 0, 1, 2], [0, 1, 2, -1]]
    assert packed.group_ids.tolist() == [[0, 0, 0, 0], [1, 1, 1, -1]]
    assert packed.attention_mask[1, 0].tolist() == [
        [T, F, F, F],
        [T, T, F, F],
        [T, F, T, F],
        [F, F, F, T],  # padding: the diagonal only, never an all-False row
    ]
    assert packed.response_slices == [(0, 0, 2, [(2, 3), (3, 4)]), (1, 0, 1, [(1, 2), (2, 3)])]


def test_pack_rows_by_hand() -> None:
    packed = pack_shared_prefix(
        [ids(1, 2), ids(3), ids(4, 5, 6)],
        [[ids(7), ids(8, 9)], [ids(10), ids(11)], [ids(12), ids(13)]],
        pack_rows=True,
        max_length=9,
    )
    # group 0 (5 tokens) and group 1 (3 tokens) share row 0; group 2 (5 tokens) opens row 1.
    assert packed.input_ids.tolist() == [[1, 2, 7, 8, 9, 3, 10, 11], [4, 5, 6, 12, 13, 0, 0, 0]]
    assert packed.position_ids.tolist() == [[0, 1, 2, 2, 3, 0, 1, 1], [0, 1, 2, 3, 3, 0, 0, 0]]
    assert packed.segment_ids.tolist() == [[0, 0, 1, 2, 2, 0, 1, 2], [0, 0, 0, 1, 2, -1, -1, -1]]
    assert packed.group_ids.tolist() == [[0, 0, 0, 0, 0, 1, 1, 1], [2, 2, 2, 2, 2, -1, -1, -1]]
    assert packed.response_slices == [
        (0, 0, 2, [(2, 3), (3, 5)]),
        (0, 5, 6, [(6, 7), (7, 8)]),
        (1, 0, 3, [(3, 4), (4, 5)]),
    ]
    mask = packed.attention_mask[0, 0]
    assert not mask[5:, :5].any()  # group 1 never sees group 0
    assert mask[5:, 5:].tolist() == [[T, F, F], [T, T, F], [T, F, T]]


def test_pack_rows_without_max_length_uses_one_row() -> None:
    packed = pack_shared_prefix(
        [ids(1), ids(2), ids(3)], [[ids(4)], [ids(5)], [ids(6)]], pack_rows=True
    )
    assert packed.input_ids.tolist() == [[1, 4, 2, 5, 3, 6]]
    assert packed.position_ids.tolist() == [[0, 1, 0, 1, 0, 1]]
    assert packed.num_responses == 1


def test_mrope_positions_by_hand() -> None:
    prefix_ids = torch.tensor([[0, 1, 2, 2, 2, 2], [0, 1, 2, 2, 3, 3], [0, 1, 2, 3, 2, 3]])
    packed = pack_shared_prefix(
        [ids(1, 2, 3, 3, 3, 3), ids(4)],
        [[ids(5, 6), ids(7, 8, 9)], [ids(10), ids(11)]],
        prefix_position_ids=[prefix_ids, torch.zeros(3, 1, dtype=torch.long)],
    )
    assert packed.position_ids.shape == (3, 2, 11)
    # responses continue at prefix_ids.max() + 1 = 4 in all three rows, restarting per response
    tail = [4, 5, 4, 5, 6]
    assert packed.position_ids[:, 0].tolist() == [r + tail for r in prefix_ids.tolist()]
    assert packed.position_ids[:, 1].tolist() == [[0, 1, 1] + [0] * 8] * 3


def test_response_targets_by_hand() -> None:
    packed = pack_shared_prefix([ids(11, 12, 13)], [[ids(21, 22), ids(31, 32, 33)]])
    predictor, labels = response_targets(packed)
    assert predictor.tolist() == [[-1, -1, -1, 2, 3, 2, 5, 6]]
    assert labels.tolist() == [[-100, -100, -100, 21, 22, 31, 32, 33]]


def test_gather_and_unpack_by_hand() -> None:
    packed = pack_shared_prefix(
        [ids(11, 12, 13), ids(14)], [[ids(21, 22), ids(31, 32, 33)], [ids(41), ids(51)]]
    )
    hidden = torch.arange(2 * 8, dtype=torch.float32).view(2, 8, 1)  # value = row * 8 + pos
    gathered, labels = gather_response_hidden(hidden, packed)
    assert gathered.shape == (4, 3, 1)
    assert labels.tolist() == [[21, 22, -100], [31, 32, 33], [41, -100, -100], [51, -100, -100]]
    # the first token of each response is predicted by the last prefix position
    assert gathered[:, :, 0][labels != -100].tolist() == [2, 3, 2, 5, 6, 8, 8]
    logps = unpack_response_logps(torch.tensor([1.0, 2.0, 3.0, 4.0]), packed)
    assert logps.tolist() == [[1.0, 2.0], [3.0, 4.0]]
    with pytest.raises(ValueError, match="per-response"):
        unpack_response_logps(torch.zeros(3), packed)
    with pytest.raises(ValueError, match="hidden_states"):
        gather_response_hidden(torch.zeros(2, 7, 1), packed)


def test_to_device_copies_every_tensor() -> None:
    packed = pack_shared_prefix([ids(1, 2)], [[ids(3), ids(4)]])
    moved = packed.to("cpu")
    assert isinstance(moved, PackedBatch)
    assert torch.equal(moved.attention_mask, packed.attention_mask)
    assert moved.response_slices == packed.response_slices


# --------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    ("prefixes", "responses", "kwargs", "match"),
    [
        ([], [], {}, "prefixes is empty"),
        ([ids()], [[ids(1)]], {}, "empty"),
        ([ids(1)], [[ids(1), ids()]], {}, "empty"),
        ([torch.tensor([1.0])], [[ids(1)]], {}, "integer"),
        ([torch.tensor([True])], [[ids(1)]], {}, "integer"),
        ([ids(1).view(1, 1)], [[ids(1)]], {}, "1-D"),
        ([ids(1)], [[[1, 2]]], {}, "integer"),
        ([ids(1), ids(2)], [[ids(1), ids(2)], [ids(3)]], {}, "same number of responses"),
        ([ids(1)], [[]], {}, "no responses"),
        ([ids(1), ids(2)], [[ids(1)]], {}, "groups of responses"),
        ([ids(1, 2)], [[ids(3), ids(4)]], {"max_length": 3}, "more than max_length"),
        ([ids(1)], [[ids(3)]], {"max_length": 0}, "max_length must be positive"),
        (
            [ids(1, 2)],
            [[ids(3)]],
            {"prefix_position_ids": [torch.zeros(3, 3, dtype=torch.long)]},
            r"shape \(3, 2\)",
        ),
        (
            [ids(1, 2)],
            [[ids(3)]],
            {"prefix_position_ids": [torch.zeros(2, 2, dtype=torch.long)]},
            r"shape \(3, 2\)",
        ),
        (
            [ids(1, 2)],
            [[ids(3)]],
            {"prefix_position_ids": [torch.zeros(3, 2)]},
            "integer",
        ),
        ([ids(1, 2)], [[ids(3)]], {"prefix_position_ids": []}, "prefix_position_ids"),
    ],
)
def test_bad_inputs_raise(
    prefixes: Sequence[Tensor],
    responses: Sequence[Sequence[Tensor]],
    kwargs: dict[str, Any],
    match: str,
) -> None:
    with pytest.raises(ValueError, match=match):
        pack_shared_prefix(prefixes, responses, **kwargs)


def test_model_inputs_forms() -> None:
    packed = pack_shared_prefix([ids(1, 2)], [[ids(3), ids(4)]])
    plain = model_inputs(packed)
    assert set(plain) == {"input_ids", "position_ids", "attention_mask"}
    assert plain["attention_mask"] is packed.attention_mask
    additive = model_inputs(packed, dtype=torch.float16, attn_implementation="eager")
    assert additive["attention_mask"].dtype == torch.float16
    assert torch.equal(additive["attention_mask"] == 0, packed.attention_mask)
    assert (
        additive["attention_mask"][~packed.attention_mask] == torch.finfo(torch.float16).min
    ).all()
    with pytest.raises(ValueError, match="dtype"):
        model_inputs(packed, attn_implementation="eager")
    with pytest.raises(ValueError, match="flash_attention_2"):
        model_inputs(packed, attn_implementation="flash_attention_2")
    with pytest.raises(ValueError, match="floating"):
        model_inputs(packed, dtype=torch.int32)


# --------------------------------------------------------------------------- SDPA vs FlexAttention


@pytest.mark.skipif(not HAS_FLEX, reason="this torch has no FlexAttention")
@pytest.mark.filterwarnings(FLEX_EAGER_WARNING)
@pytest.mark.parametrize("pack_rows", [False, True])
def test_flex_block_mask_matches_sdpa_bool_mask(pack_rows: bool) -> None:
    from torch.nn.attention.flex_attention import BlockMask, flex_attention

    gen = torch.Generator().manual_seed(0)
    packed = pack_shared_prefix(
        [rand_ids(gen, n) for n in (5, 2, 7)],
        [[rand_ids(gen, n) for n in lens] for lens in ((3, 1, 4), (2, 2, 1), (1, 5, 3))],
        pack_rows=pack_rows,
        max_length=20,
    )
    block_mask = flex_block_mask(packed)
    assert isinstance(block_mask, BlockMask)
    assert isinstance(
        model_inputs(packed, attn_implementation="flex_attention")["attention_mask"], BlockMask
    )
    rows, length = packed.input_ids.shape
    q, k, v = (torch.randn(rows, 2, length, 8, generator=gen) for _ in range(3))
    expected = torch.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=packed.attention_mask
    )
    got = flex_attention(q, k, v, block_mask=block_mask)
    assert isinstance(got, Tensor)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------- tiny transformers models


def _small(**extra: Any) -> dict[str, Any]:
    return dict(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        **extra,
    )


def build_llama(attn: str) -> Any:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(**_small(), attn_implementation=attn)
    return transformers.LlamaForCausalLM(config).eval()


def build_qwen2(attn: str) -> Any:
    torch.manual_seed(0)
    config = transformers.Qwen2Config(**_small(), attn_implementation=attn)
    return transformers.Qwen2ForCausalLM(config).eval()


def build_qwen2_vl(attn: str) -> Any:
    torch.manual_seed(0)
    rope = {"rope_type": "default", "mrope_section": [2, 1, 1], "rope_theta": 10000.0}
    config = transformers.Qwen2VLConfig(
        text_config=_small(rope_parameters=rope),
        vision_config={"depth": 1, "embed_dim": 16, "hidden_size": 32, "num_heads": 2},
        attn_implementation=attn,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        image_token_id=90,
        video_token_id=91,
        vision_start_token_id=92,
        vision_end_token_id=93,
    )
    return transformers.Qwen2VLForConditionalGeneration(config).eval()


def last_hidden(model: Any, **inputs: Any) -> Tensor:
    hidden = model.model(**inputs).last_hidden_state
    assert isinstance(hidden, Tensor)
    return hidden


def lm_head(model: Any) -> Tensor:
    weight = model.lm_head.weight
    assert isinstance(weight, Tensor)
    return weight


def separate_logps(
    model: Any,
    prefixes: Sequence[Tensor],
    responses: Sequence[Sequence[Tensor]],
    positions: Callable[[int, Tensor, Tensor], Tensor] | None = None,
) -> Tensor:
    """``(G, K)`` log-probs from one plain forward of ``[prefix | response]`` per response."""
    out = []
    for g, (prefix, group) in enumerate(zip(prefixes, responses, strict=True)):
        row = []
        for response in group:
            seq = torch.cat([prefix, response])[None]
            kwargs: dict[str, Any] = {"input_ids": seq}
            if positions is not None:
                kwargs["position_ids"] = positions(g, prefix, response)
            hidden = last_hidden(model, **kwargs)
            labels = seq.clone()
            labels[:, : len(prefix)] = -100
            # HF shift: hidden[:, t] predicts token t + 1
            row.append(naive_logps(hidden[:, :-1], lm_head(model), labels[:, 1:])[0])
        out.append(torch.stack(row))
    return torch.stack(out)


def packed_logps_naive(model: Any, packed: PackedBatch, attn: str) -> Tensor:
    dtype = None if attn == "sdpa" else torch.float32
    hidden = last_hidden(model, **model_inputs(packed, dtype=dtype, attn_implementation=attn))
    gathered, labels = gather_response_hidden(hidden, packed)
    return unpack_response_logps(naive_logps(gathered, lm_head(model), labels), packed)


def random_groups(
    seed: int, prefix_lens: Sequence[int], response_lens: Sequence[Sequence[int]]
) -> tuple[list[Tensor], list[list[Tensor]]]:
    gen = torch.Generator().manual_seed(seed)
    prefixes = [rand_ids(gen, n) for n in prefix_lens]
    responses = [[rand_ids(gen, n) for n in lens] for lens in response_lens]
    return prefixes, responses


MODELS = {"llama": build_llama, "qwen2": build_qwen2}


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("arch", sorted(MODELS))
@pytest.mark.parametrize(
    ("prefix_lens", "response_lens", "pack_rows", "max_length"),
    [
        ((6,), ((3, 5),), False, None),  # chosen / rejected
        ((6, 3), ((3, 5, 2), (4, 1, 6)), False, None),  # chosen / rejected / rejected2, padded
        ((7, 3, 5), ((2, 4), (5, 1), (3, 3)), True, 40),  # 3 groups of different lengths, 1 row
        ((7, 3, 5), ((2, 4), (5, 1), (3, 3)), True, 16),  # first fit over 2 rows + padding
    ],
)
def test_packed_forward_matches_separate_forwards(
    arch: str,
    attn: str,
    prefix_lens: tuple[int, ...],
    response_lens: tuple[tuple[int, ...], ...],
    pack_rows: bool,
    max_length: int | None,
) -> None:
    model = MODELS[arch](attn)
    prefixes, responses = random_groups(1, prefix_lens, response_lens)
    packed = pack_shared_prefix(prefixes, responses, pack_rows=pack_rows, max_length=max_length)
    if pack_rows and max_length == 40:
        assert packed.input_ids.shape[0] == 1
    with torch.no_grad():
        expected = separate_logps(model, prefixes, responses)
        got = packed_logps_naive(model, packed, attn)
    assert got.shape == (len(prefixes), len(response_lens[0]))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_packed_response_logps_uses_sequence_logps() -> None:
    pytest.importorskip("povidgen.train.logps")
    model = build_llama("sdpa")
    prefixes, responses = random_groups(2, (5, 4), ((2, 3, 4), (1, 6, 2)))
    packed = pack_shared_prefix(prefixes, responses, pack_rows=True)
    with torch.no_grad():
        expected = separate_logps(model, prefixes, responses)
        hidden = last_hidden(model, **model_inputs(packed))
        got = packed_response_logps(hidden, lm_head(model), packed, chunk_size=3)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_gradients_match_separate_forwards() -> None:
    model = build_llama("sdpa")
    prefixes, responses = random_groups(3, (5, 3), ((3, 2), (2, 4)))
    weights = torch.tensor([[1.0, -1.0], [0.5, -2.0]])  # a DPO-like signed combination
    params = [p for p in model.parameters() if p.requires_grad]

    torch.autograd.backward((separate_logps(model, prefixes, responses) * weights).sum())
    expected = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in params]
    model.zero_grad(set_to_none=True)

    packed = pack_shared_prefix(prefixes, responses, pack_rows=True)
    torch.autograd.backward((packed_logps_naive(model, packed, "sdpa") * weights).sum())
    for param, want in zip(params, expected, strict=True):
        assert param.grad is not None
        torch.testing.assert_close(param.grad, want, atol=1e-5, rtol=1e-4)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)


@pytest.mark.skipif(not HAS_QWEN2_VL, reason="this transformers has no Qwen2-VL")
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("pack_rows", [False, True])
def test_mrope_packed_forward_matches_separate_forwards(attn: str, pack_rows: bool) -> None:
    model = build_qwen2_vl(attn)
    # prefix = 2 text tokens, a 4x4-patch image (2x2 = 4 merged image tokens), 1 text token
    grid = torch.tensor([[1, 4, 4]])
    types = [
        torch.tensor([0, 0, 1, 1, 1, 1, 0]),
        torch.tensor([1, 1, 1, 1, 0, 0, 0]),
    ]
    prefixes, responses = random_groups(4, (7, 7), ((3, 5, 2), (2, 2, 4)))

    def rope_index(tokens: Tensor, mm_types: Tensor) -> Tensor:
        positions, _ = model.model.get_rope_index(tokens[None], mm_types[None], image_grid_thw=grid)
        assert isinstance(positions, Tensor)
        return positions  # (3, 1, n)

    def full_positions(g: int, prefix: Tensor, response: Tensor) -> Tensor:
        mm_types = torch.cat([types[g], torch.zeros_like(response)])
        return rope_index(torch.cat([prefix, response]), mm_types)

    prefix_ids = [rope_index(p, t)[:, 0] for p, t in zip(prefixes, types, strict=True)]
    packed = pack_shared_prefix(
        prefixes, responses, prefix_position_ids=prefix_ids, pack_rows=pack_rows
    )
    assert packed.position_ids.shape[0] == 3
    with torch.no_grad():
        expected = separate_logps(model, prefixes, responses, positions=full_positions)
        got = packed_logps_naive(model, packed, attn)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
