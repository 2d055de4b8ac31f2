"""POVID's two-stage recipe with povidgen: build pairs, DPO on hallucinated text (stage 1),
merge the adapter, then DPO with the model's own answers under a noisy image added (stage 2).

    python examples/povid_two_stage.py OUT [--pairs DIR] [--model PATH] [--steps N]

Without ``--model`` it runs on a tiny random LLaVA built offline (so the recipe can be tried,
and tested, anywhere); without ``--pairs`` it builds pairs from povidgen's demo scenes. For the
paper's set-up give LLaVA-1.5-7B and POVID's 17K pairs, and use the official settings:
``DPOConfig(learning_rate=1e-7, lora_r=128, lora_alpha=256, beta=0.1)``, ``epochs=3`` for
stage 1 and ``epochs=1`` for stage 2 (``--steps 0`` runs whole epochs).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import povidgen
from povidgen import DiffusionNoise, PairBuilder, RuleHallucinator
from povidgen.train import DPOConfig, DPOTrainer


def load_model(path: str | None) -> tuple[Any, Any]:
    if path is None:
        from povidgen.train.tiny import tiny_vlm

        return tiny_vlm("llava")
    from transformers import AutoModelForImageTextToText, AutoProcessor

    return AutoModelForImageTextToText.from_pretrained(path), AutoProcessor.from_pretrained(path)


def pairs_from(path: str | None) -> Any:
    if path is not None:
        return povidgen.load_pairs(path)
    from povidgen.sources.demo import demo_dataset

    return PairBuilder.from_dataset(
        demo_dataset(n=16, seed=0),
        hallucinator=RuleHallucinator(),
        prompt_column="question",
        distorter=None,  # stage 2 makes its noisy images in the collator, from the seed
        seed=0,
    ).build()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--pairs", default=None, help="a `povidgen build` output folder")
    parser.add_argument("--model", default=None, help="a local transformers VLM folder")
    parser.add_argument("--steps", type=int, default=4, help="steps per stage (0: whole epochs)")
    args = parser.parse_args()

    model, processor = load_model(args.model)
    pairs = pairs_from(args.pairs)
    common: dict[str, Any] = {"batch_size": 2, "seed": 0}
    if args.model is None:  # the tiny model learns nothing at POVID's 1e-7
        common.update(learning_rate=1e-3, lora_r=8, lora_alpha=16)
    steps = args.steps or None

    # Stage 1: chosen vs hallucinated text, same image; 3 epochs in the paper
    stage1 = DPOTrainer(
        model,
        processor,
        pairs,
        DPOConfig(mode="text", epochs=3, max_steps=steps, **common),
        output_dir=args.out / "stage1",
    )
    first = stage1.train()
    merged = stage1.merged_model()  # the adapter becomes part of the weights

    # Stage 2: POVID's dual-rejected loss; the noisy image is DiffusionNoise(step=500)
    stage2 = DPOTrainer(
        merged,
        processor,
        pairs,
        DPOConfig(mode="povid", epochs=1, max_steps=steps, **common),
        output_dir=args.out / "stage2",
        distorter=DiffusionNoise(step=500),
    )
    second = stage2.train()
    stage2.save(args.out / "final", merge=True)
    print(
        f"stage 1: {first.global_step} steps, loss {first.metrics[-1]['loss']:.4f}; "
        f"stage 2: {second.global_step} steps, loss {second.metrics[-1]['loss']:.4f}; "
        f"model written to {args.out / 'final'}"
    )


if __name__ == "__main__":
    main()
