"""Running a model over images and scoring it: CHAIR on its captions, POPE on its answers.

Both take the model as a :data:`~povidgen.eval.generate.Generate` callable, so any model
works: :func:`~povidgen.eval.hf_generate` for a local Hugging Face VLM, or a function that
calls an API. Images may be PIL images, file paths or encoded bytes; those are decoded
``chunk_size`` at a time, so a large set never sits in memory whole.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping, Sequence

from PIL import Image

from povidgen.eval.bootstrap import DEFAULT_CONFIDENCE, DEFAULT_RESAMPLES
from povidgen.eval.chair import ChairResult, chair, resolve_vocabulary
from povidgen.eval.generate import Generate
from povidgen.eval.pope import PopeQuestion, PopeResult, Strategy, pope, pope_questions
from povidgen.eval.vocabulary import Vocabulary
from povidgen.sources.images import open_image

__all__ = ["CHAIR_PROMPT", "ImageInput", "evaluate_chair", "evaluate_pope"]

CHAIR_PROMPT = "Describe this image in detail."
"""The caption prompt of :func:`evaluate_chair` (LLaVA-style CHAIR evaluations use it)."""

ImageInput = Image.Image | str | os.PathLike[str] | bytes
"""An image, the path of an image file, or an encoded image (PNG, JPEG... bytes)."""


def _run(
    generate: Generate,
    images: Sequence[ImageInput],
    prompts: Sequence[str],
    chunk_size: int,
) -> list[str]:
    """``generate`` over ``(images[i], prompts[i])``, ``chunk_size`` at a time."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    texts: list[str] = []
    for start in range(0, len(prompts), chunk_size):
        stop = min(start + chunk_size, len(prompts))
        decoded: dict[int, Image.Image] = {}  # POPE asks several questions about one image
        batch = []
        for image in images[start:stop]:
            if not isinstance(image, Image.Image):
                if id(image) not in decoded:
                    decoded[id(image)] = open_image(image).image
                image = decoded[id(image)]
            batch.append(image)
        answers = list(generate(batch, list(prompts[start:stop])))
        if len(answers) != stop - start:
            raise ValueError(f"generate returned {len(answers)} texts for {stop - start} prompts")
        texts.extend(str(answer) for answer in answers)
    return texts


def evaluate_chair(
    generate: Generate,
    images: Sequence[ImageInput],
    objects: Sequence[Iterable[str]],
    *,
    prompt: str = CHAIR_PROMPT,
    vocabulary: Vocabulary | Mapping[str, str] | None = None,
    chunk_size: int = 32,
    resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> ChairResult:
    """Caption every image with ``prompt`` and score the captions with :func:`chair`.

    The objects are checked against the vocabulary before the model runs.

    Raises:
        ValueError: ``images`` and ``objects`` differ in length, or an object is not in the
            vocabulary.
    """
    if len(images) != len(objects):
        raise ValueError(f"{len(images)} images but {len(objects)} object lists")
    vocab = resolve_vocabulary(vocabulary)
    for names in objects:
        vocab.categories_of(names)
    captions = _run(generate, images, [prompt] * len(images), chunk_size)
    return chair(
        captions,
        objects,
        vocabulary=vocab,
        resamples=resamples,
        confidence=confidence,
        seed=seed,
    )


def evaluate_pope(
    generate: Generate,
    images: Sequence[ImageInput],
    objects: Sequence[Iterable[str]],
    *,
    strategy: Strategy = "random",
    n_per_image: int = 3,
    vocabulary: Iterable[str] | None = None,
    questions: Sequence[PopeQuestion] | None = None,
    chunk_size: int = 32,
    resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> PopeResult:
    """Ask :func:`pope_questions` about every image and score the answers with :func:`pope`.

    The bootstrap resamples images (each image's questions together). The result's
    ``questions`` and ``answers`` hold what was asked and answered.

    Args:
        questions: ask these instead (their ``image_index`` into ``images``), e.g. the
            questions of a larger annotation set kept for the images evaluated; then
            ``strategy``, ``n_per_image`` and ``vocabulary`` are not used.

    Raises:
        ValueError: ``images`` and ``objects`` differ in length, no image has an object to
            ask about, or a question's image is not in ``images``.
    """
    if len(images) != len(objects):
        raise ValueError(f"{len(images)} images but {len(objects)} object lists")
    if questions is None:
        questions = pope_questions(
            objects, vocabulary=vocabulary, n_per_image=n_per_image, strategy=strategy, seed=seed
        )
    elif any(not 0 <= q.image_index < len(images) for q in questions):
        raise ValueError(f"a question's image_index is not one of the {len(images)} images")
    if not questions:
        raise ValueError("no POPE question to ask: no image has an object (and an absent one)")
    answers = _run(
        generate,
        [images[q.image_index] for q in questions],
        [q.question for q in questions],
        chunk_size,
    )
    result = pope(
        answers,
        [q.label for q in questions],
        groups=[q.image_index for q in questions],
        resamples=resamples,
        confidence=confidence,
        seed=seed,
    )
    return dataclasses.replace(result, questions=tuple(questions))
