"""Step-0 log-probs equal TRL 1.x's ``DPOTrainer`` on the same tiny VLM and the same rows.

povidgen's collator copies the tokenisation of TRL's ``DataCollatorForVisionPreference``
(prompt/response split of the chat template, ``add_special_tokens=False``, ``keep_start``
truncation; see :mod:`povidgen.train.collate`), and its scorer sums the response tokens'
log-probs in a packed ``[prompt | chosen | rejected]`` layout (or, with ``packing=False``, in
TRL's own ``[prompt | response]`` rows). Here both trainers get the same model weights, the
same processor and the same 4 rows, stored in a ``datasets.Dataset`` (images as the Image
feature, typed content as structs), and the per-row ``logps/chosen`` and ``logps/rejected``
at step 0 must agree.

TRL's side is computed the way ``trl.DPOTrainer._compute_loss`` does: ``trainer.data_collator``
on the rows, then ``model(**inputs, labels=..., fused_lm_head=True).log_probs`` summed over
the completion. TRL's own logged batch means (``_compute_loss``'s ``logps/chosen`` and
``logps/rejected`` metrics) are checked too. povidgen's side: ``trainer.collator(rows)``, then
``trainer.scorer.score`` and ``trainer.compute_loss`` (LoRA's B starts at zero, so the adapter
is a no-op at step 0).

Tolerance: 1e-4 absolute on the summed log-probs (about -20 to -90 over 3 to 12 tokens, fp32);
the layouts differ (TRL left-pads the prompts and flushes them left, povidgen packs), which
changes float32 rounding only: the differences seen are below 2e-5.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("peft")
trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

from povidgen.train import DPOConfig, DPOTrainer  # noqa: E402
from povidgen.train.collate import PreferenceCollator  # noqa: E402
from povidgen.train.families import family_of  # noqa: E402
from povidgen.train.step import Scorer  # noqa: E402
from povidgen.train.tiny import TINY_FAMILIES, tiny_image, tiny_vlm  # noqa: E402

TOL: dict[str, Any] = {"rtol": 0.0, "atol": 1e-4}

# different image sizes (so LLaVA-NeXT and Qwen give different numbers of image tokens),
# questions and answers of different lengths, capitals and punctuation
ROWS = [
    ((40, 32), "What is in the picture?", "A red car on the road.", "A blue boat in the water."),
    ((32, 48), "Describe the image.", "Two cats sitting on a table.", "A dog eating food."),
    ((64, 40), "What color is the sky?", "The sky is blue.", "The sky is green, with clouds!"),
    ((24, 24), "Is there a dog?", "Yes, a brown dog.", "No, there is a cat."),
]


def make_dataset() -> Any:
    """The rows in TRL's vision preference format, as a ``datasets.Dataset``."""
    rows = [
        {
            "id": f"row-{i}",
            "images": [tiny_image(i, size=size)],
            "prompt": [
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}
            ],
            "chosen": [{"role": "assistant", "content": [{"type": "text", "text": c}]}],
            "rejected": [{"role": "assistant", "content": [{"type": "text", "text": r}]}],
        }
        for i, (size, q, c, r) in enumerate(ROWS)
    ]
    return datasets.Dataset.from_list(rows)


def trl_logps(
    model: Any, processor: Any, dataset: Any, output_dir: str, max_length: int | None
) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """TRL's per-row chosen and rejected log-probs, and its logged batch means."""
    args = trl.DPOConfig(
        output_dir=output_dir,
        per_device_train_batch_size=len(dataset),
        max_length=max_length,
        report_to=[],
        bf16=False,
        use_cpu=True,
        # TRL's default gradient_checkpointing=True is transformers 5's deprecated alias of
        # activation_checkpointing (a FutureWarning); no checkpointing is needed here
        activation_checkpointing=False,
    )
    trainer = trl.DPOTrainer(
        model=model,
        ref_model=copy.deepcopy(model),  # else TRL loads the reference by the model's name
        args=args,
        train_dataset=dataset,
        processing_class=processor,
    )
    inputs = trainer.data_collator([dataset[i] for i in range(len(dataset))])
    # as in DPOTrainer._compute_loss
    completion_mask = inputs["completion_mask"]
    model_kwargs = {k: v for k, v in inputs.items() if k != "completion_mask"}
    labels = inputs["input_ids"].masked_fill(completion_mask == 0, -100)
    with torch.no_grad():
        outputs = trainer.model(**model_kwargs, use_cache=False, labels=labels, fused_lm_head=True)
        per_token = outputs.log_probs[:, -(completion_mask.size(1) - 1) :]
        chosen, rejected = per_token.sum(dim=1).chunk(2, dim=0)
        with warnings.catch_warnings():
            # TRL 1.16's disable_gradient_checkpointing reads model.is_gradient_checkpointing,
            # deprecated in transformers 5 (FutureWarning); nothing to do about it here
            warnings.filterwarnings(
                "ignore",
                message="`is_gradient_checkpointing` is deprecated",
                category=FutureWarning,
            )
            trainer._compute_loss(trainer.model, inputs, return_outputs=False)
    mode = "train" if trainer.model.training else "eval"
    logged = {name: trainer._metrics[mode][name][-1] for name in ("logps/chosen", "logps/rejected")}
    return chosen, rejected, logged


# every family in full; truncation (TRL's keep_start) on a 1-D and a 3-D (mRoPE) position family
CASES = [(family, False) for family in TINY_FAMILIES] + [("llava", True), ("qwen2_vl", True)]


@pytest.mark.parametrize(
    ("family", "truncate"), CASES, ids=[f"{f}-{'max_length' if t else 'full'}" for f, t in CASES]
)
def test_step0_logps_equal_trl(family: str, truncate: bool, tmp_path: Any) -> None:
    dataset = make_dataset()
    rows = [dataset[i] for i in range(len(dataset))]
    model, processor = tiny_vlm(family)
    full = PreferenceCollator(processor, family_of(model))(rows)
    # room for 3 response tokens after the longest prompt: most responses get cut
    max_length = max(len(p) for p in full.prompt_ids) + 3 if truncate else None
    trl_chosen, trl_rejected, logged = trl_logps(
        copy.deepcopy(model), processor, dataset, str(tmp_path), max_length
    )

    config = DPOConfig(
        mode="text", batch_size=len(rows), lora_r=4, lora_alpha=8, max_length=max_length
    )
    trainer = DPOTrainer(model, processor, dataset, config)
    batch = trainer.collator(rows)
    cut = [len(r) < len(f) for r, f in zip(batch.rejected_ids, full.rejected_ids, strict=True)]
    assert any(cut) == truncate
    plain = Scorer(
        trainer.family, mode="text", packing=False, pad_token_id=trainer.scorer.pad_token_id
    )
    with torch.no_grad():
        packed_scores = trainer.scorer.score(trainer.model, batch)
        plain_scores = plain.score(trainer.model, batch)
        _, metrics = trainer.compute_loss(batch)

    for name, scores in (("packed", packed_scores), ("plain", plain_scores)):
        torch.testing.assert_close(scores.chosen, trl_chosen, **TOL, msg=f"{name} chosen")
        torch.testing.assert_close(scores.rejected, trl_rejected, **TOL, msg=f"{name} rejected")
    torch.testing.assert_close(metrics["logps/chosen"], trl_chosen, **TOL)
    torch.testing.assert_close(metrics["logps/rejected"], trl_rejected, **TOL)
    assert float(metrics["logps/chosen"].mean()) == pytest.approx(logged["logps/chosen"], abs=1e-4)
    assert float(metrics["logps/rejected"].mean()) == pytest.approx(
        logged["logps/rejected"], abs=1e-4
    )
