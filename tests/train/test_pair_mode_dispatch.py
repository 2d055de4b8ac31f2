"""``mode="auto"``: a dataset of mixed pair modes (text, image, both rows) trains in one run,
each row with the loss terms its shape supports (per-row masks in :func:`pair_mode_loss`)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

pytest.importorskip("transformers")
pytest.importorskip("peft")

from povidgen.train import (
    DPOConfig,
    DPOTrainer,
    PairModeLoss,
    TrainingDataError,
    dpo_loss,
    pair_mode_loss,
    povid_loss,
)
from povidgen.train.config import Mode
from povidgen.train.tiny import tiny_image, tiny_vlm
from tests.train.rows import make_rows
from tests.train.test_trainer import SMALL_LORA, loss_and_grads, perturb_adapter


def softplus(x: float) -> float:
    """``-log sigmoid(-x)``, written out: ``l(d) = -log sigmoid(beta d) = softplus(-beta d)``."""
    return math.log1p(math.exp(x))


def t(*values: float) -> Tensor:
    return torch.tensor(values, dtype=torch.float64)


# ------------------------------------------------------------------------------ the masked loss

# rows: text, image, both. D(c) = 0 everywhere; D(text) = -1 on the text row, 0 on the both row;
# D(noisy) = -2 on the image row and on the both row. The masked slots hold huge values that
# would dominate the loss (and its gradient) if they leaked through.
HUGE = 1e4
LOGPS = {
    "policy_chosen": t(-1.0, -2.0, -3.0),
    "policy_rejected": t(-2.0, HUGE, -1.0),
    "policy_noisy": t(HUGE, -4.0, -5.0),
    "ref_chosen": t(-1.0, -2.0, -3.0),
    "ref_rejected": t(-1.0, -HUGE, -1.0),
    "ref_noisy": t(-HUGE, -2.0, -3.0),
}
HAS_TEXT = torch.tensor([True, False, True])
HAS_IMAGE = torch.tensor([False, True, True])


def masked(**options: Any) -> Any:
    leaves = {k: v.clone().requires_grad_(True) for k, v in LOGPS.items()}
    out = pair_mode_loss(
        *(leaves[k] for k in LOGPS), has_text=HAS_TEXT, has_image=HAS_IMAGE, **options
    )
    return out, leaves


def test_masked_loss_equals_the_per_row_hand_computation() -> None:
    out, leaves = masked(beta=1.0)
    text_row = softplus(-1.0)  # l(0 - (-1)) = log(1 + e^-1)
    image_row = softplus(-2.0)  # l(0 - (-2)) = log(1 + e^-2)
    both_row = 0.5 * softplus(-2.0) + 0.5 * math.log(2.0)  # official mean of two DPO losses
    torch.testing.assert_close(out.losses, t(text_row, image_row, both_row))
    torch.testing.assert_close(
        out.loss, torch.tensor((text_row + image_row + both_row) / 3).double()
    )
    torch.testing.assert_close(out.margins, t(1.0, 2.0, 1.0))  # both: 0 - (0.5 * -2 + 0.5 * 0)
    assert out.accuracies.tolist() == [1.0, 1.0, 0.0]  # both row: D(c) = D(text), not better
    out.loss.backward()
    # the masked slots get exactly no gradient
    assert leaves["policy_rejected"].grad is not None
    assert leaves["policy_noisy"].grad is not None
    assert leaves["policy_rejected"].grad[1].item() == 0.0
    assert leaves["policy_noisy"].grad[0].item() == 0.0
    # d/dD(text) of l on the text row: sigmoid(-1) / 3 (the mean over B = 3)
    want = 1 / (1 + math.exp(1.0)) / 3
    assert leaves["policy_rejected"].grad[0].item() == pytest.approx(want)


def test_single_sigmoid_shapes_only_the_both_rows() -> None:
    out, _ = masked(beta=0.5, combine="single_sigmoid", weights=(1.0, 1.0), chosen_weight=2.0)
    # text / image rows: plain sigmoid DPO at beta 0.5; both row: -log sig(0.5 * (2*0 - (0 - 2)))
    torch.testing.assert_close(out.losses, t(softplus(-0.5), softplus(-1.0), softplus(-1.0)))


def test_uniform_batches_equal_the_single_mode_losses() -> None:
    args = [LOGPS[k].abs().neg() / 10 for k in LOGPS]  # finite, varied values everywhere
    every = torch.ones(3, dtype=torch.bool)
    none = torch.zeros(3, dtype=torch.bool)
    both = pair_mode_loss(*args, has_text=every, has_image=every, beta=0.3)
    torch.testing.assert_close(both.losses, povid_loss(*args, beta=0.3).losses)
    text = pair_mode_loss(*args, has_text=every, has_image=none, beta=0.3)
    want = dpo_loss(args[0], args[1], args[3], args[4], beta=0.3).losses
    torch.testing.assert_close(text.losses, want)
    image = pair_mode_loss(*args, has_text=none, has_image=every, beta=0.3)
    want = dpo_loss(args[0], args[2], args[3], args[5], beta=0.3).losses
    torch.testing.assert_close(image.losses, want)


def test_module_equals_the_function_and_bad_masks_are_refused() -> None:
    module = PairModeLoss(beta=1.0)
    got = module(*LOGPS.values(), HAS_TEXT, HAS_IMAGE)
    torch.testing.assert_close(got.losses, masked(beta=1.0)[0].losses)
    with pytest.raises(ValueError, match=r"a row with no contrast"):
        module(*LOGPS.values(), HAS_TEXT, ~HAS_TEXT & HAS_IMAGE & HAS_TEXT)
    with pytest.raises(ValueError, match="has_image must be a bool tensor"):
        module(*LOGPS.values(), HAS_TEXT, HAS_IMAGE.float())


# ------------------------------------------------------------------------- the trainer, mixed


def mixed_rows() -> list[dict[str, Any]]:
    """One text row, one image row, one both row, as ``--pair-mode mix`` writes them."""
    text, image, both = make_rows(3)
    text["rejected_images"] = None
    image["rejected"] = image["chosen"]
    image["rejected_images"] = [tiny_image(1001)]
    both["rejected_images"] = [tiny_image(1002)]
    for row, mode in ((text, "text"), (image, "image"), (both, "both")):
        row["provenance"] = {"pair_mode": mode}
    return [text, image, both]


def trainer(mode: Mode, rows: list[dict[str, Any]], packing: bool) -> DPOTrainer:
    model, processor = tiny_vlm("llava")
    config = DPOConfig(mode=mode, batch_size=len(rows), packing=packing, **SMALL_LORA)
    out = DPOTrainer(model, processor, rows, config)
    perturb_adapter(out)
    return out


@pytest.mark.parametrize("packing", [True, False])
def test_mixed_batch_equals_each_row_in_its_own_mode(packing: bool) -> None:
    rows = mixed_rows()
    auto = trainer("auto", rows, packing)
    batch = auto.collator(rows)
    assert batch.pair_modes == ["text", "image", "both"]
    loss, grads = loss_and_grads(auto, batch)
    # batch normalisation: the mean over the B rows of each row's own-mode loss
    want_loss = torch.zeros(())
    want_grads = [torch.zeros_like(g) for g in grads]
    modes: tuple[Mode, ...] = ("text", "image", "povid")
    for row, mode in zip(rows, modes, strict=True):
        alone = trainer(mode, [row], packing)
        row_loss, row_grads = loss_and_grads(alone, alone.collator([row]))
        want_loss = want_loss + row_loss / len(rows)
        want_grads = [w + g / len(rows) for w, g in zip(want_grads, row_grads, strict=True)]
    torch.testing.assert_close(loss, want_loss, rtol=1e-5, atol=1e-6)
    for got, want in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    assert any(g.abs().sum() > 0 for g in grads)


def test_rows_without_pair_mode_are_read_from_their_shape() -> None:
    rows = [{k: v for k, v in r.items() if k != "provenance"} for r in mixed_rows()]
    auto = trainer("auto", rows, True)
    assert auto.collator(rows).pair_modes == ["text", "image", "both"]
    # other modes ignore pair modes, as before
    povid = trainer("povid", [rows[2]], True)
    assert povid.collator([rows[2]]).pair_modes is None


def test_single_modes_keep_their_one_line_errors() -> None:
    text, image, both = mixed_rows()
    with pytest.raises(TrainingDataError, match=r"'rejected' equals 'chosen'") as error:
        trainer("text", [image], True).collator([image])
    assert "\n" not in str(error.value)
    with pytest.raises(TrainingDataError, match="pair_mode 'text'") as error:
        trainer("image", [text], True).collator([text])
    assert "\n" not in str(error.value)
    # auto: a both row whose rejected image is missing, with no distorter, is named
    bare = {**both, "rejected_images": None}
    with pytest.raises(TrainingDataError, match="row row-2: mode 'auto' needs a rejected image"):
        trainer("auto", [text, bare], True).collator([bare])
    with pytest.raises(ValueError, match="mode 'auto' uses POVID's own loss"):
        DPOConfig(mode="auto", loss_type="ipo")


# ------------------------------------------------------------------------------------- the CLI


@pytest.fixture(scope="module")
def cli_inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    import datasets

    from povidgen.train.tiny import save_tiny_vlm

    root = tmp_path_factory.mktemp("pair-mode-cli")
    rows = mixed_rows() + mixed_rows()
    for i, row in enumerate(rows):
        row["id"] = f"row-{i}"
    datasets.Dataset.from_list(rows).save_to_disk(str(root / "mixed"))
    return save_tiny_vlm("llava", root / "model"), root / "mixed"


def train_cli(model: Path, data: Path, out: Path, *flags: str) -> int:
    from povidgen.cli import main

    argv = ["train", "--model", str(model), "--data", str(data), "--out", str(out)]
    argv += ["--batch-size", "3", "--lora-r", "4", "--lora-alpha", "8", "--device", "cpu"]
    return main([*argv, *flags])


def test_cli_mode_auto_trains_a_mixed_dataset(
    cli_inputs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, data = cli_inputs
    assert train_cli(model, data, tmp_path / "auto", "--mode", "auto", "--max-steps", "1") == 0
    assert (tmp_path / "auto" / "final").is_dir()
    capsys.readouterr()
    # the other modes keep their one-line refusals on the same data (exit 2, no traceback);
    # one batch of all six rows, so that it holds image rows whatever the shuffle
    flags = ("--mode", "text", "--max-steps", "1", "--batch-size", "6")
    assert train_cli(model, data, tmp_path / "text", *flags) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err  # progress bars may precede the one error line
    assert [line for line in err.splitlines() if "'rejected' equals 'chosen'" in line]
    assert train_cli(model, data, tmp_path / "ipo", "--mode", "auto", "--loss-type", "ipo") == 2
    err = capsys.readouterr().err
    assert "--mode auto uses POVID's own loss" in err
    assert len(err.strip().splitlines()) == 1  # refused before the model loads
