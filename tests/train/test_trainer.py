"""DPOTrainer on tiny random VLMs of every supported family: the efficient step equals the plain
layouts, the references agree, POVID stage 2 equals the official six-forward step, guards."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
import torch
from torch import Tensor

pytest.importorskip("transformers")
pytest.importorskip("peft")

from povidgen.train import (
    DPOConfig,
    DPOTrainer,
    TrainingDataError,
    UnsupportedModelError,
)
from povidgen.train.collate import PreferenceBatch
from povidgen.train.tiny import TINY_FAMILIES, tiny_vlm
from tests.train.rows import make_rows

SMALL_LORA: dict[str, Any] = {"lora_r": 4, "lora_alpha": 8}


def perturb_adapter(trainer: DPOTrainer, seed: int = 0) -> None:
    """LoRA's B starts at zero (policy == reference); give it values so gradients and the
    policy/reference difference are not trivial."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in trainer.model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)


def make_trainer(family: str, mode: str, rows: list[dict[str, Any]], **options: Any) -> DPOTrainer:
    model, processor = tiny_vlm(family)
    config = DPOConfig(mode=mode, batch_size=len(rows), **{**SMALL_LORA, **options})
    trainer = DPOTrainer(model, processor, rows, config)
    perturb_adapter(trainer)
    return trainer


def loss_and_grads(trainer: DPOTrainer, batch: PreferenceBatch) -> tuple[Tensor, list[Tensor]]:
    trainer.model.zero_grad(set_to_none=True)
    loss, _ = trainer.compute_loss(batch)
    loss.backward()  # type: ignore[no-untyped-call]
    grads = [
        p.grad.clone() if p.grad is not None else torch.zeros_like(p)
        for p in trainer.trainable_parameters()
    ]
    return loss.detach(), grads


def rows_for(mode: str, n: int = 2) -> list[dict[str, Any]]:
    return make_rows(n, rejected_images=mode == "image")


# --------------------------------------------------------------------- efficient == plain layouts


@pytest.mark.parametrize("mode", ["text", "image", "povid"])
@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_packed_step_equals_plain_layouts(family: str, mode: str) -> None:
    rows = rows_for(mode)
    packed = make_trainer(family, mode, rows, packing=True)
    plain = make_trainer(family, mode, rows, packing=False)
    batch = packed.collator(rows)

    loss, grads = loss_and_grads(packed, batch)
    plain_loss, plain_grads = loss_and_grads(plain, batch)
    # one sequence at a time: the plain layout with batches of one pair, averaged
    single = [loss_and_grads(plain, plain.collator([row])) for row in rows]
    single_loss = torch.stack([s[0] for s in single]).mean()
    single_grads = [torch.stack(g).mean(0) for g in zip(*(s[1] for s in single), strict=True)]

    assert torch.isfinite(loss)
    torch.testing.assert_close(loss, plain_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss, single_loss, rtol=1e-5, atol=1e-6)
    assert any(g.abs().sum() > 0 for g in grads)
    for got, want, one in zip(grads, plain_grads, single_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(got, one, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_scores_of_each_layout_agree(family: str) -> None:
    rows = rows_for("povid", 3)
    trainer = make_trainer(family, "povid", rows)
    batch = trainer.collator(rows)
    with torch.no_grad():
        packed = trainer.scorer.score(trainer.model, batch)
        trainer.scorer.packing = False
        plain = trainer.scorer.score(trainer.model, batch)
    for name in ("chosen", "rejected", "noisy"):
        torch.testing.assert_close(
            getattr(packed, name), getattr(plain, name), rtol=1e-5, atol=1e-4
        )
    assert bool((packed.chosen < 0).all())
    assert packed.noisy is not None


# ------------------------------------------------------------------------------------ references


@pytest.mark.parametrize("mode", ["text", "povid"])
def test_adapter_disabled_reference_equals_a_separate_copy(mode: str) -> None:
    rows = rows_for(mode, 3)
    model, processor = tiny_vlm("llava")
    base = copy.deepcopy(model)
    config = DPOConfig(mode=mode, batch_size=3, **SMALL_LORA)
    adapter = DPOTrainer(model, processor, rows, config)
    perturb_adapter(adapter)
    copied = DPOTrainer(
        copy.deepcopy(base), processor, rows, config.model_copy(update={"ref": "copy"})
    )
    assert copied.ref_model is not None
    batch = adapter.collator(rows)
    got = adapter.reference_scores(batch)
    want = copied.reference_scores(batch)
    policy = adapter.scorer.score(adapter.model, batch)
    for name in ("chosen", "rejected", "noisy"):
        torch.testing.assert_close(getattr(got, name), getattr(want, name))
    # the adapter really is disabled: the perturbed policy scores differently
    assert not torch.allclose(policy.chosen, got.chosen)


def test_precomputed_reference_equals_live_and_is_reused(tmp_path: Any) -> None:
    rows = rows_for("povid", 4)
    cache = tmp_path / "cache"

    def trainer(reference: str, train_rows: list[dict[str, Any]]) -> DPOTrainer:
        model, processor = tiny_vlm("llava")
        config = DPOConfig(
            mode="povid", batch_size=2, ref=reference, ref_cache_dir=str(cache), **SMALL_LORA
        )
        made = DPOTrainer(model, processor, train_rows, config)
        perturb_adapter(made)
        return made

    first = trainer("precomputed", rows)
    assert first.precompute_reference() == 4
    live = trainer("adapter", rows)
    batch = first.collator(rows[:2])
    cached = first.reference_scores(batch)
    want = live.reference_scores(batch)
    for name in ("chosen", "rejected", "noisy"):
        torch.testing.assert_close(getattr(cached, name), getattr(want, name))

    again = trainer("precomputed", rows)
    assert again.precompute_reference() == 0  # every row already cached: no reference forward

    changed = [dict(r) for r in rows]
    changed[0]["chosen"] = [
        {"role": "assistant", "content": [{"type": "text", "text": "a green cat."}]}
    ]
    assert trainer("precomputed", changed).precompute_reference() == 2  # its batch misses


def test_precomputed_cache_misses_for_another_model(tmp_path: Any) -> None:
    rows = rows_for("text", 2)
    model, processor = tiny_vlm("llava")
    config = DPOConfig(batch_size=2, ref="precomputed", ref_cache_dir=str(tmp_path), **SMALL_LORA)
    assert DPOTrainer(model, processor, rows, config).precompute_reference() == 2
    other, _ = tiny_vlm("llava", seed=1)
    assert DPOTrainer(other, processor, rows, config).precompute_reference() == 2


# ------------------------------------------------------------- POVID stage 2 vs the official step


def _official_logps(
    model: torch.nn.Module,
    batch: PreferenceBatch,
    prompts: list[Tensor],
    vision_rows: list[dict[str, Tensor]],
    responses: list[Tensor],
) -> tuple[Tensor, Tensor]:
    """One full forward per sequence, full logits: per-position log-softmax and the labels."""
    out_logps, out_argmax = [], []
    for prompt, response, vision in zip(prompts, responses, vision_rows, strict=True):
        ids = torch.cat([prompt, response])[None]
        logits = model(input_ids=ids, **vision).logits[0, len(prompt) - 1 : -1].float()
        out_logps.append(torch.log_softmax(logits, -1))
        out_argmax.append(logits.argmax(-1))
    return out_logps, out_argmax  # type: ignore[return-value]


def official_stage2_loss(trainer: DPOTrainer, batch: PreferenceBatch, beta: float) -> Tensor:
    """A straightforward transcription of the official POVID stage-2 step: six forwards
    (policy and reference; clean chosen, clean rejected, noisy chosen), full logits."""
    assert batch.noisy_prompt_ids is not None
    assert batch.noisy_vision_rows is not None
    model = trainer.model

    def scores() -> tuple[Tensor, Tensor, Tensor]:
        chosen_lp, _ = _official_logps(
            model, batch, batch.prompt_ids, batch.vision_rows, batch.chosen_ids
        )
        rejected_lp, _ = _official_logps(
            model, batch, batch.prompt_ids, batch.vision_rows, batch.rejected_ids
        )
        with torch.no_grad():
            _, noisy_argmax = _official_logps(
                model, batch, batch.noisy_prompt_ids, batch.noisy_vision_rows, batch.chosen_ids
            )
        chosen = torch.stack(
            [
                lp.gather(1, c[:, None]).sum()
                for lp, c in zip(chosen_lp, batch.chosen_ids, strict=False)
            ]
        )
        rejected = torch.stack(
            [
                lp.gather(1, r[:, None]).sum()
                for lp, r in zip(rejected_lp, batch.rejected_ids, strict=False)
            ]
        )
        noisy = torch.stack(
            [lp.gather(1, t[:, None]).sum() for lp, t in zip(chosen_lp, noisy_argmax, strict=False)]
        )
        return chosen, rejected, noisy

    policy = scores()
    with torch.no_grad(), model.disable_adapter():  # type: ignore[operator]
        ref = scores()
    d_chosen = policy[0] - ref[0]
    d_text = policy[1] - ref[1]
    d_noisy = policy[2] - ref[2]
    logsig = torch.nn.functional.logsigmoid
    loss = 0.5 * -logsig(beta * (d_chosen - d_noisy)) + 0.5 * -logsig(beta * (d_chosen - d_text))
    return loss.mean()


@pytest.mark.parametrize("packing", [True, False])
def test_povid_mode_equals_the_official_six_forward_step(packing: bool) -> None:
    rows = rows_for("povid", 2)
    trainer = make_trainer("llava", "povid", rows, packing=packing, beta=0.5)
    batch = trainer.collator(rows)
    loss, grads = loss_and_grads(trainer, batch)

    trainer.model.zero_grad(set_to_none=True)
    official = official_stage2_loss(trainer, batch, beta=0.5)
    official.backward()  # type: ignore[no-untyped-call]
    official_grads = [p.grad for p in trainer.trainable_parameters()]

    torch.testing.assert_close(loss, official.detach(), rtol=1e-5, atol=1e-6)
    for got, want in zip(grads, official_grads, strict=True):
        assert want is not None
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_povid_noisy_score_differs_from_chosen() -> None:
    rows = rows_for("povid", 2)
    trainer = make_trainer("llava", "povid", rows)
    _, metrics = trainer.compute_loss(trainer.collator(rows))
    assert not torch.allclose(metrics["logps/noisy"], metrics["logps/chosen"])


@pytest.mark.parametrize("mode", ["text", "image", "povid", "auto"])
def test_rpo_alpha_adds_the_chosen_answers_token_nll(mode: str) -> None:
    """At the start (LoRA's B is zero, policy == reference) every DPO/POVID term is
    -log sigmoid(0) = log 2, so the loss is log 2 + alpha * (the chosen answers' summed NLL over
    their summed token counts), TRL's rpo_alpha."""
    rows = rows_for(mode, 2)
    model, processor = tiny_vlm("llava")
    config = DPOConfig(mode=mode, batch_size=2, rpo_alpha=0.5, **SMALL_LORA)
    trainer = DPOTrainer(model, processor, rows, config)  # not perturbed: policy == reference
    batch = trainer.collator(rows)
    loss, metrics = trainer.compute_loss(batch)
    chosen_lengths, _ = batch.response_lengths()
    nll = -metrics["logps/chosen"].sum() / chosen_lengths.sum()
    assert float(nll) > 0
    assert float(loss.detach()) == pytest.approx(math.log(2) + 0.5 * float(nll), rel=1e-5)
    per_pair = -metrics["logps/chosen"] / chosen_lengths
    torch.testing.assert_close(metrics["nll/chosen"], per_pair)

    model, processor = tiny_vlm("llava")
    plain = DPOTrainer(model, processor, rows, DPOConfig(mode=mode, batch_size=2, **SMALL_LORA))
    loss0, metrics0 = plain.compute_loss(plain.collator(rows))
    assert float(loss0.detach()) == pytest.approx(math.log(2), rel=1e-5)
    assert "nll/chosen" not in metrics0


# ------------------------------------------------------------------------------------ the loop


def test_loss_falls_on_a_tiny_overfit_set(tmp_path: Any) -> None:
    rows = rows_for("text", 4)
    model, processor = tiny_vlm("llava")
    config = DPOConfig(
        batch_size=4,
        max_steps=15,
        learning_rate=1e-2,
        warmup_ratio=0.0,
        lr_scheduler="constant",
        **SMALL_LORA,
    )
    trainer = DPOTrainer(model, processor, rows, config, output_dir=tmp_path)
    result = trainer.train()
    losses = [m["loss"] for m in result.metrics]
    assert len(losses) == 15
    assert losses[0] == pytest.approx(0.6931, abs=1e-3)  # policy == reference at step 0
    assert losses[-1] < losses[0] / 2
    assert result.metrics[-1]["rewards/accuracies"] == 1.0


def test_metrics_file_uses_trl_names(tmp_path: Any) -> None:
    import json

    rows = rows_for("povid", 2)
    model, processor = tiny_vlm("llava")
    config = DPOConfig(mode="povid", batch_size=1, grad_accum=2, max_steps=2, **SMALL_LORA)
    DPOTrainer(model, processor, rows, config, output_dir=tmp_path).train()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    for key in (
        "loss",
        "learning_rate",
        "logps/chosen",
        "logps/rejected",
        "logps/noisy",
        "rewards/chosen",
        "rewards/rejected",
        "rewards/noisy",
        "rewards/margins",
        "rewards/accuracies",
        "pairs_per_second",
        "tokens_per_second",
        "peak_memory_gib",
    ):
        assert key in records[0], key
    assert records[0]["pairs_per_second"] > 0
    assert (tmp_path / "checkpoints" / "step-2" / "trainable.pt").is_file()


def test_warmup_then_cosine_schedule() -> None:
    rows = rows_for("text", 2)
    model, processor = tiny_vlm("llava")
    config = DPOConfig(
        batch_size=1, max_steps=10, learning_rate=1.0, warmup_ratio=0.2, **SMALL_LORA
    )
    trainer = DPOTrainer(model, processor, rows, config)
    rates = [m["learning_rate"] for m in trainer.train().metrics]
    # 2 warm-up steps: (s + 1) / 3, then half a cosine over the remaining 8 steps
    expected = [1 / 3, 2 / 3] + [0.5 * (1 + math.cos(math.pi * k / 8)) for k in range(8)]
    assert rates == pytest.approx(expected)


# peft reads transformers' deprecated is_gradient_checkpointing when it loads an adapter
@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")
def test_save_gives_a_loadable_adapter_and_a_merged_model(tmp_path: Any) -> None:
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText, AutoProcessor

    rows = rows_for("text", 2)
    trainer = make_trainer("llava", "text", rows)
    batch = trainer.collator(rows)
    with torch.no_grad():
        want = trainer.scorer.score(trainer.model, batch).chosen
    trainer.save(tmp_path / "adapter")
    trainer.save(tmp_path / "merged", merge=True)

    base, _ = tiny_vlm("llava")
    loaded = PeftModel.from_pretrained(base, tmp_path / "adapter")
    merged = AutoModelForImageTextToText.from_pretrained(tmp_path / "merged")
    AutoProcessor.from_pretrained(tmp_path / "merged")
    with torch.no_grad():
        for model in (loaded, merged):
            got = trainer.scorer.score(model, batch).chosen
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)


# ---------------------------------------------------------------------------------------- guards


def test_unsupported_family_lists_the_supported_ones() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=32,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
        )
    )
    _, processor = tiny_vlm("llava")
    with pytest.raises(UnsupportedModelError, match=r"'llama'.*supported: llava, llava_next"):
        DPOTrainer(model, processor, make_rows(2), DPOConfig())


@pytest.mark.parametrize(
    ("mode", "drop", "needed"),
    [
        ("text", "rejected", "rejected"),
        ("povid", "rejected", "rejected"),
        ("text", "images", "images"),
        ("image", "rejected_images", "rejected_images"),
    ],
)
def test_missing_column_for_the_mode_is_named(mode: str, drop: str, needed: str) -> None:
    rows = [{k: v for k, v in r.items() if k != drop} for r in make_rows(2, rejected_images=True)]
    model, processor = tiny_vlm("llava")
    with pytest.raises(
        TrainingDataError, match=rf"mode '{mode}' needs the column\(s\) \['{needed}'\]"
    ):
        DPOTrainer(model, processor, rows, DPOConfig(mode=mode, **SMALL_LORA))


def test_image_mode_without_rejected_images_suggests_a_distorter() -> None:
    model, processor = tiny_vlm("llava")
    with pytest.raises(TrainingDataError, match="give a distorter"):
        DPOTrainer(model, processor, make_rows(2), DPOConfig(mode="image", **SMALL_LORA))
    # with a distorter the same data trains
    config = DPOConfig(mode="image", distorter="diffusion", **SMALL_LORA)
    trainer = DPOTrainer(model, processor, make_rows(2), config)
    assert trainer.collator(make_rows(1)).noisy_vision is not None


def test_max_length_that_cuts_image_tokens_names_the_row() -> None:
    rows = make_rows(2)
    model, processor = tiny_vlm("llava")
    trainer = DPOTrainer(model, processor, rows, DPOConfig(max_length=8, **SMALL_LORA))
    with pytest.raises(TrainingDataError, match=r"row row-0: the prompt is \d+ tokens"):
        trainer.collator(rows)


def test_max_length_truncates_responses_like_trl() -> None:
    rows = make_rows(1)
    full = make_trainer("llava", "text", rows).collator(rows)
    limit = len(full.prompt_ids[0]) + 3
    cut = make_trainer("llava", "text", rows, max_length=limit).collator(rows)
    assert cut.chosen_ids[0].tolist() == full.chosen_ids[0][:3].tolist()
    assert cut.rejected_ids[0].tolist() == full.rejected_ids[0][:3].tolist()


def test_image_token_and_feature_mismatch_is_refused() -> None:
    rows = make_rows(1)
    trainer = make_trainer("llava", "text", rows)
    batch = trainer.collator(rows)
    token = trainer.family.image_token_id(trainer.model)
    batch.prompt_ids[0] = torch.cat([batch.prompt_ids[0], torch.tensor([token])])
    with pytest.raises(TrainingDataError, match=r"row row-0: the prompt holds \d+ image tokens"):
        trainer.compute_loss(batch)


def test_multi_image_rows_are_refused() -> None:
    rows = make_rows(1)
    rows[0]["images"] = rows[0]["images"] * 2
    trainer = make_trainer("llava", "text", rows)
    with pytest.raises(TrainingDataError, match="exactly one image per pair"):
        trainer.collator(rows)


def test_empty_answer_is_refused() -> None:
    rows = make_rows(1)
    rows[0]["rejected"] = [{"role": "assistant", "content": [{"type": "text", "text": " "}]}]
    trainer = make_trainer("llava", "text", rows)
    with pytest.raises(TrainingDataError, match="row row-0: 'rejected' is empty"):
        trainer.collator(rows)


def test_config_rejects_bad_settings() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="unknown loss_type"):
        DPOConfig(loss_type="nope")
    with pytest.raises(ValidationError, match="ref='adapter' needs a LoRA adapter"):
        DPOConfig(full=True, ref="adapter")
    with pytest.raises(ValidationError, match="mode 'povid' uses POVID's own loss"):
        DPOConfig(mode="povid", loss_type="ipo")
    with pytest.raises(ValidationError):
        DPOConfig(beta=0)
    with pytest.raises(ValidationError):
        DPOConfig(bogus=1)  # type: ignore[call-arg]


def test_precomputed_reference_with_full_fine_tuning(tmp_path: Any) -> None:
    rows = rows_for("text", 2)
    model, processor = tiny_vlm("llava")
    config = DPOConfig(
        batch_size=2,
        full=True,
        ref="precomputed",
        ref_cache_dir=str(tmp_path),
        max_steps=2,
        learning_rate=1e-3,
    )
    trainer = DPOTrainer(model, processor, rows, config)
    batch = trainer.collator(rows)
    with torch.no_grad():
        before = trainer.scorer.score(trainer.model, batch)
    result = trainer.train()  # precomputes from the untrained model, then trains it
    assert result.metrics[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    cached = trainer.reference_scores(batch)
    torch.testing.assert_close(cached.chosen, before.chosen)
    other = dict(rows[0], id="new", chosen=rows[1]["rejected"])
    with pytest.raises(TrainingDataError, match="can no longer give them"):
        trainer.reference_scores(trainer.collator([other]))


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_gradient_checkpointing_gives_the_same_step(family: str) -> None:
    rows = rows_for("povid", 2)
    plain = make_trainer(family, "povid", rows)
    checkpointed = make_trainer(family, "povid", rows, gradient_checkpointing=True)
    batch = plain.collator(rows)
    loss, grads = loss_and_grads(plain, batch)
    loss_ckpt, grads_ckpt = loss_and_grads(checkpointed, batch)
    torch.testing.assert_close(loss, loss_ckpt)
    for got, want in zip(grads_ckpt, grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    ("mode", "packing", "images_per_pair"),
    [
        ("text", True, 1),  # once per pair, shared by policy and reference
        ("text", False, 4),  # TRL's layout: chosen and rejected rows, policy and reference
        ("povid", True, 2),  # clean and noisy image, once each
        ("povid", False, 6),  # the official layout's six forwards
    ],
)
def test_vision_tower_runs_once_per_image(mode: str, packing: bool, images_per_pair: int) -> None:
    rows = rows_for(mode, 2)
    trainer = make_trainer("llava", mode, rows, packing=packing)
    seen: list[int] = []
    tower = trainer.family.vlm(trainer.model).vision_tower
    handle = tower.register_forward_hook(lambda _m, args, _o: seen.append(args[0].shape[0]))
    try:
        trainer.compute_loss(trainer.collator(rows))
    finally:
        handle.remove()
    assert sum(seen) == images_per_pair * len(rows)


def test_save_never_replaces_a_folder_it_did_not_write(tmp_path: Any) -> None:
    rows = rows_for("text", 2)
    trainer = make_trainer("llava", "text", rows)
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match=r"not written by DPOTrainer\.save"):
        trainer.save(user)
    assert (user / "notes.txt").read_text() == "keep me"

    out = tmp_path / "model"
    trainer.save(out)
    assert (out / "adapter_config.json").is_file()
    trainer.save(out, merge=True)  # replaces its own earlier save, not mixing the two
    assert not (out / "adapter_config.json").exists()
    assert (out / "config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "model"]


def test_stop_ends_the_run_after_a_whole_step_with_a_checkpoint(tmp_path: Any) -> None:
    rows = rows_for("text", 4)
    model, processor = tiny_vlm("llava")
    config = DPOConfig(batch_size=2, max_steps=5, **SMALL_LORA)
    trainer = DPOTrainer(model, processor, rows, config, output_dir=tmp_path)
    result = trainer.train(stop=lambda: trainer.global_step >= 2)
    assert result.stopped
    assert result.global_step == 2
    assert (tmp_path / "checkpoints" / "step-2").is_dir()


def test_report_to_wandb_logs_every_record(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys
    import types

    logged: list[tuple[dict[str, float], int]] = []
    finished: list[bool] = []

    class Run:
        def log(self, record: dict[str, float], step: int) -> None:
            logged.append((record, step))

        def finish(self) -> None:
            finished.append(True)

    fake = types.ModuleType("wandb")
    fake.init = lambda **_: Run()  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "wandb", fake)
    rows = rows_for("text", 2)
    model, processor = tiny_vlm("llava")
    config = DPOConfig(batch_size=2, max_steps=2, report_to=["wandb"], **SMALL_LORA)
    DPOTrainer(model, processor, rows, config, output_dir=tmp_path).train()
    assert [step for _, step in logged] == [1, 2]
    assert "rewards/margins" in logged[0][0]
    assert finished == [True]


def test_dataloader_workers_give_the_same_run() -> None:
    rows = rows_for("povid", 4)
    losses = []
    for workers in (0, 2):
        model, processor = tiny_vlm("llava")
        config = DPOConfig(
            mode="povid", batch_size=2, max_steps=2, num_workers=workers, **SMALL_LORA
        )
        losses.append(
            [m["loss"] for m in DPOTrainer(model, processor, rows, config).train().metrics]
        )
    assert losses[0] == losses[1]


def test_bf16_model_trains_under_autocast_with_fp32_adapters() -> None:
    rows = rows_for("povid", 2)
    model, processor = tiny_vlm("llava")
    model.to(torch.bfloat16)
    config = DPOConfig(mode="povid", batch_size=2, max_steps=2, learning_rate=1e-3, **SMALL_LORA)
    trainer = DPOTrainer(model, processor, rows, config)
    assert {p.dtype for p in trainer.trainable_parameters()} == {torch.float32}
    seen: list[torch.dtype] = []
    decoder = trainer.family.decoder(trainer.model)
    lora_a = decoder.layers[0].self_attn.q_proj.lora_A["default"]
    handle = lora_a.register_forward_hook(lambda _m, _a, output: seen.append(output.dtype))
    try:
        metrics = trainer.train().metrics
    finally:
        handle.remove()
    assert all(math.isfinite(m["loss"]) for m in metrics)
    assert set(seen) == {torch.bfloat16}  # fp32 adapters, run (and saved) in bf16
