"""POVID's experiment in miniature, on CPU: make a tiny VLM hallucinate, measure it, train it
with povidgen's pairs (stage 1, then stage 2), measure it again. Three seeds.

    python examples/mini_povid/run.py [--out DIR] [--seeds 0 1 2] [--threads N] [--jobs N] [--quick]

Per seed:

1. **Scenes** (:func:`povidgen.sources.scenes.generate_scenes`): synthetic scenes whose object
   classes co-occur (cup with book, kite with umbrella...), split into train and test scenes.
   Their ``web_answer`` captions mention, some of the time, an absent object that co-occurs
   with one present, as web captions do. Captions list the groups by place
   (``Settings.group_order``).
2. **A tiny LLaVA from scratch**: ``LlavaForConditionalGeneration`` from a config (a CLIP
   vision tower, 64x64 images in 16x16 patches, and a small Llama), with the tokenizer and
   chat template of :func:`povidgen.train.tiny.tiny_vlm`.
3. **Vision pretraining**, standing in for LLaVA's pretrained CLIP: the vision tower learns to
   tell, for each place of the layout, the object, its colour and its count (linear heads on
   its patch features, dropped afterwards). It is then frozen, as LLaVA freezes CLIP.
4. **Supervised fine-tuning** (the loop below) of the projector and language model on the
   training scenes: web captions (some mention absent co-occurring objects) and exact
   question/answer rows. The model learns to caption, and to hallucinate as it was taught.
5. **Measure** on the test scenes: CHAIR_S, CHAIR_I and object recall of greedy captions,
   POPE (adversarial: absent objects that co-occur with those present) with
   :mod:`povidgen.eval`; 95% bootstrap intervals over images.
6. ``povidgen build`` on the training scenes' exact answers (the rule hallucinator swaps in
   co-occurring objects, wrong colours, counts, places, and with ``Settings.omissions`` leaves
   one group out of that share of the captions instead; diffusion noise at
   t = ``Settings.noise_step``, 500).
7. ``povidgen train --mode text`` (POVID stage 1), merged; measure. Both stages add an NLL
   term on the chosen answer (``--rpo-alpha``, ``Settings.rpo_alpha``).
8. ``povidgen train --mode povid`` (stage 2) from the merged stage-1 model, merged; measure.
9. With ``Settings.stage1_long``, stage 1 alone from the SFT model for as many steps as both
   stages together, measured: does stage 2 add anything a longer stage 1 would not?

Writes ``OUT/results.json`` (every figure and interval, per seed and stage), ``OUT/metrics.png``
(figures per stage with intervals), ``OUT/curves.png`` (training losses) and prints the table.
``--jobs N`` runs N seeds at once, each in a process of its own (``--threads`` torch threads
each, default 1). ``--quick`` runs the plumbing in seconds (tiny data, a few steps; its
numbers mean nothing).
The ``povidgen`` commands run in this process through :func:`povidgen.cli.main`, with the
arguments printed as a shell command would take them.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shlex
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

HERE = Path(__file__).resolve().parent
STAGES = ("sft", "stage1", "stage2")
STAGE_NAMES = {
    "sft": "before (SFT)",
    "stage1": "after stage 1",
    "stage2": "after stage 2",
    "stage1_long": "stage 1 only, as long",
}


def _stages(result: dict[str, Any]) -> tuple[str, ...]:
    """The stages measured: ``STAGES``, and ``stage1_long`` when it ran."""
    return (*STAGES, "stage1_long") if "stage1_long" in result else STAGES


CHAIR_KEYS = ("chair_s", "chair_i", "recall")
POPE_KEYS = ("accuracy", "precision", "recall", "f1", "yes_ratio")


@dataclass(frozen=True)
class Settings:
    """Everything the miniature's outcome depends on (recorded in ``results.json``)."""

    scenes: int = 4000  # scenes in all, train and test
    test_scenes: int = 300
    cooccurrence: float = 0.8  # P(a further object co-occurs with one already there)
    web_noise: float = 0.5  # P(a web caption also names an absent co-occurring object)
    group_order: Literal["random", "place"] = "place"  # povidgen scenes --group-order
    qa_per_scene: int = 2
    yes_no_per_scene: int = 0  # extra SFT rows per scene: "Is there a X in the image?" Yes./No.
    image_size: int = 64
    patch: int = 16
    vision_hidden: int = 64
    vision_layers: int = 2
    text_hidden: int = 128
    text_layers: int = 2
    pretrain_steps: int = 600
    pretrain_batch: int = 64
    pretrain_lr: float = 2e-3
    sft_steps: int = 4000
    sft_batch: int = 16
    sft_lr: float = 2e-3
    projector_lr_scale: float = 5.0
    pairs: int = 2400  # training rows made into pairs (--limit)
    omissions: float = 0.5  # the rule hallucinator's `omissions`: captions left incomplete
    noise_step: int = 500  # povidgen build --noise-step: the diffusion step of stage 2's image
    dpo_batch: int = 8
    stage1_steps: int = 300
    stage2_steps: int = 300
    dpo_lr: float = 2e-4
    beta: float = 0.2
    rpo_alpha: float = 4.0  # povidgen train --rpo-alpha: NLL of the chosen answer, both stages
    stage1_long: bool = True  # also run stage 1 alone for stage1_steps + stage2_steps
    lora_r: int = 16
    lora_alpha: int = 32
    pope_per_image: int = 3
    caption_tokens: int = 64
    answer_tokens: int = 12


QUICK = Settings(
    scenes=24,
    test_scenes=4,
    pretrain_steps=3,
    pretrain_batch=8,
    sft_steps=3,
    sft_batch=4,
    pairs=8,
    dpo_batch=2,
    stage1_steps=1,
    stage2_steps=1,
    stage1_long=True,
    yes_no_per_scene=2,
    pope_per_image=1,
    caption_tokens=8,
    answer_tokens=4,
)


# -- the model ------------------------------------------------------------------------------


def build_model(settings: Settings, seed: int) -> tuple[Any, Any]:
    """A randomly initialised tiny LLaVA and its processor (tokenizer from ``tiny_vlm``)."""
    import torch
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
    )

    from povidgen.train.tiny import tiny_vlm

    processor: Any = tiny_vlm("llava", seed=seed)[1]
    size = settings.image_size
    processor.image_processor.size = {"shortest_edge": size}
    processor.image_processor.crop_size = {"height": size, "width": size}
    processor.patch_size = settings.patch  # image tokens per image: (size / patch) ** 2
    tokenizer = processor.tokenizer
    vision = CLIPVisionConfig(
        hidden_size=settings.vision_hidden,
        intermediate_size=2 * settings.vision_hidden,
        num_hidden_layers=settings.vision_layers,
        num_attention_heads=4,
        image_size=size,
        patch_size=settings.patch,
        projection_dim=settings.vision_hidden,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=settings.text_hidden,
        intermediate_size=2 * settings.text_hidden,
        num_hidden_layers=settings.text_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default",  # drop CLS: one token per patch
        vision_feature_layer=-1,
        image_seq_length=(size // settings.patch) ** 2,
        tie_word_embeddings=False,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        llava: Any = LlavaForConditionalGeneration
        model = llava._from_config(config, attn_implementation="sdpa", dtype=torch.float32)
    generation = model.generation_config
    generation.bos_token_id = tokenizer.bos_token_id
    generation.eos_token_id = tokenizer.eos_token_id
    generation.pad_token_id = tokenizer.pad_token_id
    return model, processor


def _cosine(step: int, steps: int, peak: float, warmup: int = 30) -> float:
    """Linear warm-up then cosine decay to 0."""
    return peak * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / steps))


def pretrain_vision(
    model: Any, processor: Any, rows: list[dict[str, Any]], settings: Settings, seed: int
) -> list[float]:
    """Train the vision tower to read the layout: for each of the five places, which object
    (or none), its colour and its count, from its patch features. Returns the losses."""
    import torch

    from povidgen.sources.demo import COLORS, OBJECT_NAMES, POSITIONS, parse_scene

    tower = model.model.vision_tower
    scenes = {row["scene_id"]: row for row in rows}
    pixels, labels = [], []
    for row in scenes.values():
        pixels.append(
            processor.image_processor(row["image"], return_tensors="pt")["pixel_values"][0]
        )
        scene = parse_scene(row["scene"])
        label = []
        for place in POSITIONS:
            group = next((o for o in scene.objects if o.position == place), None)
            if group is None:
                label += [0, 0, 0]
            else:
                label += [
                    1 + OBJECT_NAMES.index(group.name),
                    1 + list(COLORS).index(group.color),
                    group.count,
                ]
        labels.append(label)
    x, y = torch.stack(pixels), torch.tensor(labels)  # (N, 3, S, S), (N, 15)
    tokens = (settings.image_size // settings.patch) ** 2
    sizes = [len(OBJECT_NAMES) + 1, len(COLORS) + 1, 6] * len(POSITIONS)
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        heads = torch.nn.ModuleList(
            torch.nn.Linear(tokens * settings.vision_hidden, k) for k in sizes
        )
    params = [*tower.parameters(), *heads.parameters()]
    optimizer = torch.optim.AdamW(params, lr=settings.pretrain_lr)
    losses = []
    tower.train()
    for step in range(settings.pretrain_steps):
        for param_group in optimizer.param_groups:
            param_group["lr"] = _cosine(step, settings.pretrain_steps, settings.pretrain_lr)
        pick = torch.randint(0, len(x), (settings.pretrain_batch,), generator=generator)
        features = tower(pixel_values=x[pick], output_hidden_states=True).hidden_states[-1]
        flat = features[:, 1:].flatten(1)  # patch tokens, CLS dropped as LLaVA drops it
        loss: Any = torch.stack(
            [
                torch.nn.functional.cross_entropy(head(flat), y[pick, j])
                for j, head in enumerate(heads)
            ]
        ).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    tower.requires_grad_(False)
    return losses


def _prompt(processor: Any, question: str) -> str:
    turn = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    text: str = processor.apply_chat_template(turn, add_generation_prompt=True, tokenize=False)
    return text


def yes_no_rows(rows: list[dict[str, Any]], settings: Settings, seed: int) -> list[dict[str, Any]]:
    """POPE-style existence questions for supervised fine-tuning, ``settings.yes_no_per_scene``
    per training scene, alternating present and absent objects: ``"Is there a cup in the
    image?"`` answered ``"Yes."`` or ``"No."``. An absent object is, where the scene has one,
    a class that co-occurs with one present (the objects adversarial POPE asks about)."""
    from povidgen.eval import POPE_TEMPLATE
    from povidgen.sources.demo import OBJECT_NAMES
    from povidgen.sources.scenes import COOCCURRENCE

    rng = random.Random(f"{seed}-yes-no")
    scenes = {row["scene_id"]: row for row in rows if row["task"] == "caption"}
    extra = []
    for scene_id, row in scenes.items():
        present = list(row["objects"])
        partners = sorted({c for o in present for c in COOCCURRENCE[o]} - set(present))
        absent = partners or [o for o in OBJECT_NAMES if o not in present]
        first = rng.random() < 0.5  # whether the scene's first question is a yes
        for j in range(settings.yes_no_per_scene):
            yes = (j % 2 == 0) == first
            name = rng.choice(present if yes else absent)
            extra.append(
                {
                    "scene_id": scene_id,
                    "image": row["image"],
                    "prompt": POPE_TEMPLATE.format(name),
                    "web_answer": "Yes." if yes else "No.",
                }
            )
    return extra


def supervised_finetune(
    model: Any, processor: Any, rows: list[dict[str, Any]], settings: Settings, seed: int
) -> list[float]:
    """Plain captioning / QA fine-tuning on ``web_answer``: next-token cross-entropy on the
    answer tokens, tokenised as ``povidgen train`` tokenises (the chat template's prompt with
    the image, then `` answer</s>``, no added special tokens). Returns the losses."""
    import torch

    tokenizer = processor.tokenizer
    pixels: dict[str, Any] = {}
    examples = []
    for row in [*rows, *yes_no_rows(rows, settings, seed)]:
        if row["scene_id"] not in pixels:
            pixels[row["scene_id"]] = processor.image_processor(row["image"], return_tensors="pt")[
                "pixel_values"
            ][0]
        prompt = processor(
            images=[[row["image"]]],
            text=[_prompt(processor, row["prompt"])],
            add_special_tokens=False,
            return_tensors="pt",
        )["input_ids"][0]
        answer = tokenizer(
            " " + row["web_answer"] + tokenizer.eos_token,
            add_special_tokens=False,
            return_tensors="pt",
        )["input_ids"][0]
        examples.append((pixels[row["scene_id"]], torch.cat([prompt, answer]), len(prompt)))

    projector = [p for n, p in model.named_parameters() if "multi_modal_projector" in n]
    language = [
        p
        for n, p in model.named_parameters()
        if p.requires_grad and "multi_modal_projector" not in n
    ]
    optimizer = torch.optim.AdamW(
        [
            {"params": projector, "scale": settings.projector_lr_scale},
            {"params": language, "scale": 1.0},
        ],
        lr=settings.sft_lr,
    )
    order = random.Random(seed)
    losses = []
    model.train()
    for step in range(settings.sft_steps):
        for group in optimizer.param_groups:
            group["lr"] = _cosine(step, settings.sft_steps, settings.sft_lr) * group["scale"]
        batch = order.sample(examples, settings.sft_batch)
        length = max(len(ids) for _, ids, _ in batch)
        input_ids = torch.full((len(batch), length), tokenizer.pad_token_id)
        labels = torch.full((len(batch), length), -100)
        mask = torch.zeros((len(batch), length), dtype=torch.long)
        for i, (_, ids, start) in enumerate(batch):
            input_ids[i, : len(ids)] = ids
            mask[i, : len(ids)] = 1
            labels[i, start : len(ids)] = ids[start:]  # the answer only
        loss = model(
            input_ids=input_ids,
            attention_mask=mask,
            pixel_values=torch.stack([p for p, _, _ in batch]),
            labels=labels,
        ).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    return losses


# -- measuring --------------------------------------------------------------------------------


def measure(
    model_dir: Path, test: list[dict[str, Any]], settings: Settings, seed: int
) -> dict[str, Any]:
    """CHAIR (greedy captions) and adversarial POPE of the model in ``model_dir``."""
    from povidgen.eval import SCENE_VOCABULARY, evaluate_chair, evaluate_pope, hf_generate
    from povidgen.sources.demo import CAPTION_PROMPT, OBJECT_NAMES

    images = [row["image"] for row in test]
    objects = [row["objects"] for row in test]
    captioner = hf_generate(
        model_dir, device="cpu", max_new_tokens=settings.caption_tokens, batch_size=64
    )
    chair = evaluate_chair(
        captioner,
        images,
        objects,
        prompt=CAPTION_PROMPT,
        vocabulary=SCENE_VOCABULARY,
        chunk_size=256,
        seed=seed,
    )
    answerer = hf_generate(
        model_dir, device="cpu", max_new_tokens=settings.answer_tokens, batch_size=64
    )
    pope = evaluate_pope(
        answerer,
        images,
        objects,
        strategy="adversarial",
        n_per_image=settings.pope_per_image,
        vocabulary=OBJECT_NAMES,
        chunk_size=256,
        seed=seed,
    )
    return {
        "chair": {k: getattr(chair, k) for k in CHAIR_KEYS},
        "chair_intervals": {k: list(v) for k, v in chair.intervals.items()},
        "pope": {k: getattr(pope, k) for k in POPE_KEYS},
        "pope_intervals": {k: list(v) for k, v in pope.intervals.items()},
        "examples": [c.caption for c in chair.captions[:5]],
    }


# -- the povidgen commands --------------------------------------------------------------------


def povidgen(*argv: str) -> None:
    """Run ``povidgen ARGV`` in this process; stop the experiment if it fails."""
    from povidgen.cli import main

    print("$ povidgen " + shlex.join(argv), flush=True)
    code = main(list(argv))
    if code != 0:
        raise SystemExit(f"povidgen {argv[0]} failed with exit code {code}")


def read_losses(run: Path) -> list[float]:
    lines = (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [float(json.loads(line)["loss"]) for line in lines if line.strip()]


def preference_stages(
    settings: Settings,
    seed: int,
    folder: Path,
    sft_dir: Path,
    scenes_dir: Path,
    test: list[dict[str, Any]],
) -> dict[str, Any]:
    """``povidgen build`` on the training scenes, then stage 1 and stage 2 from ``sft_dir``
    (and, with ``settings.stage1_long``, stage 1 alone for as many steps as both), each
    measured."""
    results: dict[str, Any] = {}
    pairs = folder / "pairs"
    common = [
        "--seed",
        str(seed),
        "--batch-size",
        str(settings.dpo_batch),
        "--learning-rate",
        str(settings.dpo_lr),
        "--beta",
        str(settings.beta),
        "--rpo-alpha",
        str(settings.rpo_alpha),
        "--lora-r",
        str(settings.lora_r),
        "--lora-alpha",
        str(settings.lora_alpha),
        "--device",
        "cpu",
        "--merge",
    ]
    povidgen(
        "build",
        "--dataset",
        str(scenes_dir / "train"),
        "--id-column",
        "id",
        "--out",
        str(pairs),
        "--seed",
        str(seed),
        "--limit",
        str(settings.pairs),
        *(
            ["--hallucinator-option", f"omissions={settings.omissions}"]
            if settings.omissions
            else []
        ),
        "--noise-step",
        str(settings.noise_step),
        "--overwrite",
    )

    def train(start: Path, stage: str, mode: str, steps: int) -> None:
        """``povidgen train`` from ``start`` into ``folder/stage``; measured after."""
        povidgen(
            "train",
            "--model",
            str(start),
            "--data",
            str(pairs),
            "--out",
            str(folder / stage),
            "--mode",
            mode,
            "--max-steps",
            str(steps),
            *common,
        )
        results[stage.replace("-", "_")] = measure(folder / stage / "final", test, settings, seed)

    train(sft_dir, "stage1", "text", settings.stage1_steps)
    train(folder / "stage1" / "final", "stage2", "povid", settings.stage2_steps)
    if settings.stage1_long:
        train(sft_dir, "stage1-long", "text", settings.stage1_steps + settings.stage2_steps)
    return results


# -- one seed -----------------------------------------------------------------------------------


def run_seed(settings: Settings, seed: int, out: Path) -> dict[str, Any]:
    from povidgen.sources.scenes import generate_scenes

    started = time.time()
    folder = out / f"seed-{seed}"
    scenes_dir = folder / "scenes"
    scenes = generate_scenes(
        settings.scenes,
        seed=seed,
        held_out=settings.test_scenes / settings.scenes,
        cooccurrence=settings.cooccurrence,
        web_noise=settings.web_noise,
        qa_per_scene=settings.qa_per_scene,
        size=settings.image_size,
        group_order=settings.group_order,
        out_dir=scenes_dir,
        overwrite=True,
    )
    train = list(scenes["train"])
    test = [row for row in scenes["test"] if row["task"] == "caption"]
    noisy = sum(r["web_answer"] != r["answer"] for r in train) / sum(
        r["task"] == "caption" for r in train
    )
    print(
        f"[seed {seed}] {len(train)} training rows ({noisy:.0%} of the captions name an "
        f"absent object), {len(test)} test scenes",
        flush=True,
    )

    model, processor = build_model(settings, seed)
    pretrain = pretrain_vision(model, processor, train, settings, seed)
    sft = supervised_finetune(model, processor, train, settings, seed)
    sft_dir = folder / "sft"
    model.save_pretrained(sft_dir)
    processor.save_pretrained(sft_dir)
    print(
        f"[seed {seed}] pretraining loss {pretrain[-1]:.3f}, SFT loss {sft[-1]:.3f} "
        f"({time.time() - started:.0f}s)",
        flush=True,
    )
    del model
    results: dict[str, Any] = {"sft": measure(sft_dir, test, settings, seed)}

    results.update(preference_stages(settings, seed, folder, sft_dir, scenes_dir, test))
    results["curves"] = {
        "pretrain": pretrain,
        "sft": sft,
        "stage1": read_losses(folder / "stage1"),
        "stage2": read_losses(folder / "stage2"),
    }
    if settings.stage1_long:
        results["curves"]["stage1_long"] = read_losses(folder / "stage1-long")
    results["seconds"] = time.time() - started
    return results


def _run_seed_in_process(
    settings: Settings, seed: int, out: Path, threads: int | None
) -> dict[str, Any]:
    """:func:`run_seed` in a worker process of ``--jobs`` (its own torch threads)."""
    import torch

    torch.set_num_threads(threads or 1)
    return run_seed(settings, seed, out)


# -- reporting ------------------------------------------------------------------------------------


def _cell(result: dict[str, Any], metric: str, key: str) -> str:
    value = result[metric][key]
    low, high = result[f"{metric}_intervals"][key]
    return f"{100 * value:5.1f} [{100 * low:4.1f}, {100 * high:4.1f}]"


def table(seeds: dict[int, dict[str, Any]]) -> str:
    rows = [
        ("CHAIR_S", "chair", "chair_s"),
        ("CHAIR_I", "chair", "chair_i"),
        ("recall", "chair", "recall"),
        ("POPE acc", "pope", "accuracy"),
        ("POPE F1", "pope", "f1"),
        ("POPE yes", "pope", "yes_ratio"),
    ]
    lines = []
    for seed, result in seeds.items():
        stages = _stages(result)
        lines.append(f"seed {seed}" + "".join(f" | {STAGE_NAMES[s]:>22}" for s in stages))
        for label, metric, key in rows:
            lines.append(
                f"{label:<8}" + "".join(f" | {_cell(result[s], metric, key):>22}" for s in stages)
            )
        lines.append("")
    return "\n".join(lines)


def verdict(seeds: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """The issue's must-show, checked per seed."""
    separated, recall_kept, stage2_adds, stage2_beats_long = [], [], [], []
    for result in seeds.values():
        before, after = result["sft"], result["stage2"]
        low_before = before["chair_intervals"]["chair_s"][0]
        high_after = after["chair_intervals"]["chair_s"][1]
        separated.append(high_after < low_before)
        recall_kept.append(abs(after["chair"]["recall"] - before["chair"]["recall"]) <= 0.05)
        stage2_adds.append(after["chair"]["chair_s"] < result["stage1"]["chair"]["chair_s"])
        if "stage1_long" in result:
            long = result["stage1_long"]["chair"]["chair_s"]
            stage2_beats_long.append(after["chair"]["chair_s"] < long)
    checks: dict[str, Any] = {
        "chair_s_intervals_separate": separated,
        "chair_s_significant_on_2_of_3": sum(separated) >= 2,
        "recall_within_5_points": recall_kept,
        "stage2_lower_chair_s_than_stage1": stage2_adds,
    }
    if stage2_beats_long:
        checks["stage2_lower_chair_s_than_stage1_as_long"] = stage2_beats_long
    return checks


def plot(seeds: dict[int, dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("chair", "chair_s", "CHAIR_S (lower is better)"),
        ("chair", "chair_i", "CHAIR_I (lower is better)"),
        ("chair", "recall", "object recall"),
        ("pope", "f1", "POPE F1 (adversarial)"),
    ]
    figure, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.4))
    width = 0.8 / len(seeds)
    stages = _stages(next(iter(seeds.values())))
    labels = {
        "sft": "SFT",
        "stage1": "stage 1",
        "stage2": "stage 2",
        "stage1_long": "stage 1\nas long",
    }
    for ax, (metric, key, title) in zip(axes, panels, strict=True):
        for i, (seed, result) in enumerate(seeds.items()):
            xs = [j + (i - (len(seeds) - 1) / 2) * width for j in range(len(stages))]
            values = [100 * result[s][metric][key] for s in stages]
            lows = [100 * result[s][f"{metric}_intervals"][key][0] for s in stages]
            highs = [100 * result[s][f"{metric}_intervals"][key][1] for s in stages]
            errors = [
                [v - lo for v, lo in zip(values, lows, strict=True)],
                [hi - v for v, hi in zip(values, highs, strict=True)],
            ]
            ax.bar(xs, values, width, yerr=errors, capsize=2, label=f"seed {seed}")
        ax.set_xticks(range(len(stages)), [labels[s] for s in stages])
        ax.set_title(title, fontsize=10)
        ax.set_ylim(0, 100)
    axes[0].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(out / "metrics.png", dpi=110)
    plt.close(figure)

    figure, axes = plt.subplots(1, 4, figsize=(16, 3.2))
    for ax, name, title in zip(
        axes,
        ("pretrain", "sft", "stage1", "stage2"),
        (
            "vision pretraining",
            "SFT (web captions)",
            "stage 1 (--mode text)",
            "stage 2 (--mode povid)",
        ),
        strict=True,
    ):
        for seed, result in seeds.items():
            ax.plot(result["curves"][name], label=f"seed {seed}", linewidth=0.8)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
    axes[0].set_ylabel("loss")
    axes[0].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(out / "curves.png", dpi=110)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "out")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--quick", action="store_true", help="a smoke test of the plumbing")
    parser.add_argument(
        "--jobs", type=int, default=1, help="seeds run at once, in processes of their own"
    )
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    settings = QUICK if args.quick else Settings()
    seeds = args.seeds[:1] if args.quick else args.seeds
    args.out.mkdir(parents=True, exist_ok=True)
    if args.jobs > 1 and len(seeds) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(min(args.jobs, len(seeds)), mp_context=context) as pool:
            futures = {
                seed: pool.submit(_run_seed_in_process, settings, seed, args.out, args.threads)
                for seed in seeds
            }
            results = {seed: future.result() for seed, future in futures.items()}
    else:
        results = {seed: run_seed(settings, seed, args.out) for seed in seeds}
    summary = {
        "settings": asdict(settings),
        "quick": args.quick,
        "seeds": results,
        "verdict": verdict(results),
    }
    (args.out / "results.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    plot(results, args.out)
    print()
    print(table(results))
    print(json.dumps(summary["verdict"]))
    print(f"results, metrics.png and curves.png written to {args.out}")


if __name__ == "__main__":
    main()
