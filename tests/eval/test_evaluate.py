"""evaluate_chair / evaluate_pope with plain-Python models: what the model sees and says."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import pytest
from PIL import Image

from povidgen.eval import SCENE_VOCABULARY, evaluate_chair, evaluate_pope
from povidgen.sources.demo import caption, make_scene, render_scene

SCENES = [make_scene(i, seed=1) for i in range(6)]
OBJECTS = [scene.names() for scene in SCENES]


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


class Oracle:
    """Knows each scene by its pixels: captions it exactly and answers POPE truthfully."""

    def __init__(self) -> None:
        self.by_pixels = {render_scene(s).tobytes(): s for s in SCENES}
        self.calls: list[int] = []

    def __call__(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> list[str]:
        self.calls.append(len(prompts))
        answers = []
        for image, prompt in zip(images, prompts, strict=True):
            scene = self.by_pixels[image.tobytes()]
            if prompt.startswith("Is there a "):
                name = prompt.removeprefix("Is there a ").removesuffix(" in the image?")
                answers.append("Yes, there is." if name in scene.names() else "No, there is not.")
            else:
                answers.append(caption(scene))
        return answers


def test_an_exact_captioner_scores_zero(tmp_path: Path) -> None:
    # images as PIL, as paths and as encoded bytes
    paths = []
    for i, scene in enumerate(SCENES[:2]):
        render_scene(scene).save(tmp_path / f"{i}.png")
        paths.append(tmp_path / f"{i}.png")
    images = [*paths, png(render_scene(SCENES[2])), *(render_scene(s) for s in SCENES[3:])]
    oracle = Oracle()
    result = evaluate_chair(oracle, images, OBJECTS, vocabulary=SCENE_VOCABULARY, chunk_size=4)
    assert (result.chair_s, result.chair_i, result.recall) == (0.0, 0.0, 1.0)
    assert oracle.calls == [4, 2]
    assert [c.caption for c in result.captions] == [caption(s) for s in SCENES]


def test_a_truthful_answerer_and_a_yes_man() -> None:
    images = [png(render_scene(s)) for s in SCENES]
    truthful = evaluate_pope(Oracle(), images, OBJECTS, strategy="adversarial", seed=2)
    assert truthful.accuracy == 1.0
    assert truthful.yes_ratio == 0.5
    assert len(truthful.questions) == truthful.n == len(truthful.answers)
    assert all(q.label is p for q, p in zip(truthful.questions, truthful.predictions, strict=True))

    def yes_man(images: Sequence[Image.Image], prompts: Sequence[str]) -> list[str]:
        return ["Yes"] * len(prompts)

    agreeable = evaluate_pope(yes_man, images, OBJECTS, strategy="adversarial", seed=2)
    assert agreeable.questions == truthful.questions
    assert (agreeable.accuracy, agreeable.recall, agreeable.yes_ratio) == (0.5, 1.0, 1.0)


def test_a_generate_that_miscounts_is_refused() -> None:
    def short(images: Sequence[Image.Image], prompts: Sequence[str]) -> list[str]:
        return ["A cup."]

    with pytest.raises(ValueError, match="generate returned 1 texts for 2 prompts"):
        evaluate_chair(short, [render_scene(s) for s in SCENES[:2]], OBJECTS[:2])
    with pytest.raises(ValueError, match="2 images but 1 object lists"):
        evaluate_chair(short, [render_scene(s) for s in SCENES[:2]], OBJECTS[:1])
    with pytest.raises(ValueError, match="'lamp' is not an object"):  # before any generation
        evaluate_chair(short, [render_scene(SCENES[0])], [["lamp"]])
