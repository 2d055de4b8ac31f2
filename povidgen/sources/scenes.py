"""Synthetic scenes at scale: the demo scenes in any number, split into train and held-out sets.

:func:`generate_scenes` draws ``n`` distinct scenes of :mod:`povidgen.sources.demo` (groups of
objects of known class, colour, count and position, drawn with Pillow), renders them, and
writes for each scene one caption row and ``qa_per_scene`` question/answer rows, all exactly
true. A seeded shuffle puts ``held_out`` of the scenes (whole scenes, never single rows) into
the ``test`` split and the rest into ``train``; no scene appears twice, so no test image is a
copy of a training image. The result is a ``datasets.DatasetDict`` that ``povidgen build
--dataset DIR`` reads as it is (``save_to_disk`` layout; the default ``--prompt-column
prompt`` and ``--answer-column answer``; ``--id-column id``; ``--split train`` is the default).

Two options make the data behave like web data, for hallucination experiments
(``examples/mini_povid``):

* ``cooccurrence`` (``p`` in ``[0, 1]``): object classes come in pairs that go together
  (:data:`COOCCURRENCE`: cup and book, kite and umbrella...). After the first group, each
  further group of a scene is, with probability ``p``, a class that co-occurs with a group
  already there (uniformly among those not yet in the scene; when there is none, any class),
  and otherwise any class not yet in the scene. ``p = 0`` gives exactly the scenes of
  :func:`povidgen.sources.demo.make_scene`.
* ``web_noise`` (``q`` in ``[0, 1]``): the ``web_answer`` column of a caption row is, with
  probability ``q``, the caption of the scene with one more group that is **not** in the image:
  a class that co-occurs with a group that is (as web captions mention what usually goes with
  what they show), with a random colour and count, at a free position, listed at a random
  place. When every class that co-occurs with the scene's groups is already there, the caption
  stays true. ``answer`` always holds the exact caption; QA rows have ``web_answer == answer``.

``group_order`` (``"random"`` or ``"place"``) sets the order in which a scene's groups are
listed (in ``scene`` and in the captions): as drawn, or by place (left, right, top, bottom,
center). The scenes, pictures and splits do not change with it.

Columns (one row per caption or question): ``id`` (``"scene-000042"`` for the caption,
``"scene-000042-qa0"``... for the questions), ``scene_id``, ``image`` (a ``datasets.Image``,
PNG), ``prompt``, ``answer``, ``web_answer``, ``task`` (``"caption"`` or ``"qa"``),
``question_type`` (``"caption"`` or one of :data:`~povidgen.sources.demo.QUESTION_TYPES`),
``objects`` (the object classes in the image, sorted: the ground truth of CHAIR and POPE;
score with ``povidgen.eval.SCENE_VOCABULARY``) and ``scene`` (the scene as JSON, see
:func:`~povidgen.sources.demo.parse_scene`).

Everything is deterministic: the same arguments give the same rows and the same PNG bytes.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import random
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from povidgen.pairs.output import OutputFolderError
from povidgen.seeding import derive_seed
from povidgen.sources.demo import (
    BACKGROUND_COLORS,
    CAPTION_PROMPT,
    COLORS,
    OBJECT_NAMES,
    POSITIONS,
    ObjectName,
    Scene,
    SceneObject,
    caption,
    make_scene,
    question_answer,
    render_scene,
)

if TYPE_CHECKING:
    import datasets

__all__ = [
    "COOCCURRENCE",
    "SCENES_MARKER",
    "SceneSettings",
    "generate_scenes",
    "save_scenes",
    "scene_rows",
    "web_caption",
]

logger = logging.getLogger("povidgen")

SCENES_MARKER = "povidgen-scenes.json"
"""The file that marks a folder as written by :func:`save_scenes` (its settings and counts)."""

COOCCURRENCE: dict[str, tuple[ObjectName, ...]] = {
    "apple": ("book", "cup"),
    "ball": ("kite",),
    "book": ("apple", "clock", "cup"),
    "cup": ("apple", "book", "bottle", "clock"),
    "clock": ("book", "cup"),
    "kite": ("ball", "umbrella"),
    "umbrella": ("kite",),
    "bottle": ("cup",),
}
"""Which scene classes go together: the scene classes' entries of the rule hallucinator's
co-occurrence table (``povidgen/hallucinate/data/cooccurrence.json``) restricted to scene
classes and made symmetric, so the objects a web caption adds are the objects the rule
hallucinator swaps in."""

_SPLITS = ("train", "test")


class SceneSettings(BaseModel):
    """The settings of :func:`generate_scenes` (recorded in :data:`SCENES_MARKER`).

    Attributes:
        n: scenes in all (train and test together), at least 2.
        seed: the seed every scene, split and caption derives from.
        held_out: the share of scenes in the ``test`` split, rounded, at least one scene in
            each split.
        cooccurrence: the probability that a further group co-occurs with one already there.
        web_noise: the probability that a caption's ``web_answer`` adds an absent object.
        qa_per_scene: question/answer rows per scene besides its caption.
        size: the images' width and height in pixels.
        group_order: the order of a scene's groups, in its captions and ``scene`` JSON:
            ``random`` (as drawn) or ``place`` (left, right, top, bottom, center; a web
            caption's added group still goes anywhere in the list).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    n: Annotated[int, Field(ge=2)]
    seed: Annotated[int, Field(ge=0, lt=2**63)] = 0
    held_out: Annotated[float, Field(gt=0, lt=1)] = 0.2
    cooccurrence: Annotated[float, Field(ge=0, le=1)] = 0.0
    web_noise: Annotated[float, Field(ge=0, le=1)] = 0.0
    qa_per_scene: Annotated[int, Field(ge=0, le=64)] = 1
    size: Annotated[int, Field(ge=64, le=1024)] = 256
    group_order: Literal["random", "place"] = "random"

    @property
    def test_scenes(self) -> int:
        """How many scenes go to the ``test`` split: ``round(n * held_out)`` in ``[1, n-1]``."""
        return min(max(round(self.n * self.held_out), 1), self.n - 1)


# ---------------------------------------------------------------------------------------------
# Scenes


def _cooccurring_scene(index: int, seed: int, p: float, size: int) -> Scene:
    """Scene ``index``: as :func:`~povidgen.sources.demo.make_scene` draws it, except that
    each group after the first is, with probability ``p``, a partner of a group already there."""
    rng = random.Random(derive_seed(seed, "scene", index))
    k = rng.choices((1, 2, 3), weights=(1, 2, 2))[0]
    names: list[ObjectName] = [rng.choice(OBJECT_NAMES)]
    while len(names) < k:
        partners = sorted({c for name in names for c in COOCCURRENCE[name]} - set(names))
        others = [name for name in OBJECT_NAMES if name not in names]
        pool = partners if partners and rng.random() < p else others
        names.append(rng.choice(pool))
    colors = rng.sample(list(COLORS), k)
    background = rng.choice(list(BACKGROUND_COLORS))
    while True:
        positions = rng.sample(POSITIONS, k)
        objects = [
            SceneObject(name=n, color=c, count=rng.randint(1, 5), position=pos)
            for n, c, pos in zip(names, colors, positions, strict=True)
        ]
        scene = Scene(objects=objects, background=background, width=size, height=size)
        if k == 1 or scene.relation() is not None:
            return scene


def _scene(index: int, settings: SceneSettings) -> Scene:
    if settings.cooccurrence == 0:
        scene = make_scene(index, settings.seed)
        if settings.size != scene.width or settings.size != scene.height:
            scene = scene.model_copy(update={"width": settings.size, "height": settings.size})
    else:
        scene = _cooccurring_scene(index, settings.seed, settings.cooccurrence, settings.size)
    if settings.group_order == "place":
        # the same scene (same picture), its groups listed in a fixed order of places
        groups = sorted(scene.objects, key=lambda group: POSITIONS.index(group.position))
        scene = scene.model_copy(update={"objects": groups})
    return scene


def _distinct_scenes(settings: SceneSettings) -> Iterator[tuple[int, Scene]]:
    """``(index, scene)`` for the first ``n`` distinct scenes of the stream, in order.

    Scenes are drawn at indices 0, 1, 2... and a scene equal to an earlier one is skipped (with
    one to three groups, equal scenes are rare but occur), so the splits share no image.
    """
    seen: set[str] = set()
    index = 0
    # a bound no sane setting reaches: the scene space holds millions of scenes
    limit = 1000 * settings.n + 10_000
    while len(seen) < settings.n:
        if index >= limit:
            raise ValueError(f"could not draw {settings.n} distinct scenes")
        scene = _scene(index, settings)
        key = scene.model_dump_json()
        if key not in seen:
            seen.add(key)
            yield index, scene
        index += 1


def web_caption(scene: Scene, rng: random.Random) -> str | None:
    """The caption of ``scene`` with one absent object that co-occurs with a present one.

    The added group has a class from :data:`COOCCURRENCE` of the scene's groups that is not in
    the scene, a colour none of the groups has, a count from one to five and a free position,
    and is listed at a random place among the groups (the relation sentence is that of the
    scene with it, so it may name it too). ``None`` when no such class is left.
    """
    present = set(scene.names())
    partners = sorted({c for name in scene.names() for c in COOCCURRENCE[name]} - present)
    free = [p for p in POSITIONS if p not in scene.positions()]
    if not partners or not free:
        return None
    colours = [c for c in COLORS if c not in scene.colors()]
    extra = SceneObject(
        name=rng.choice(partners),
        color=rng.choice(colours),
        count=rng.randint(1, 5),
        position=rng.choice(free),
    )
    objects = list(scene.objects)
    objects.insert(rng.randint(0, len(objects)), extra)
    return caption(scene.model_copy(update={"objects": objects}))


# ---------------------------------------------------------------------------------------------
# Rows


def scene_rows(index: int, scene: Scene, settings: SceneSettings) -> list[dict[str, Any]]:
    """The rows of scene ``index``: its caption, then ``settings.qa_per_scene`` questions.

    Question ``j`` of the scene is :func:`~povidgen.sources.demo.question_answer` number
    ``index * qa_per_scene + j``, so the question types cycle over the scenes.
    """
    buffer = io.BytesIO()
    render_scene(scene).save(buffer, format="PNG")
    image = {"bytes": buffer.getvalue(), "path": None}
    scene_id = f"scene-{index:06d}"
    objects = sorted(scene.names())
    scene_json = scene.model_dump_json()
    exact = caption(scene)
    web = exact
    rng = random.Random(derive_seed(settings.seed, "web-caption", index))
    if settings.web_noise > 0 and rng.random() < settings.web_noise:
        web = web_caption(scene, rng) or exact
    rows = [
        {
            "id": scene_id,
            "scene_id": scene_id,
            "image": image,
            "prompt": CAPTION_PROMPT,
            "answer": exact,
            "web_answer": web,
            "task": "caption",
            "question_type": "caption",
            "objects": objects,
            "scene": scene_json,
        }
    ]
    for j in range(settings.qa_per_scene):
        kind, question, answer = question_answer(
            scene, index * settings.qa_per_scene + j, settings.seed
        )
        rows.append(
            {
                "id": f"{scene_id}-qa{j}",
                "scene_id": scene_id,
                "image": image,
                "prompt": question,
                "answer": answer,
                "web_answer": answer,
                "task": "qa",
                "question_type": kind,
                "objects": objects,
                "scene": scene_json,
            }
        )
    return rows


def _features() -> datasets.Features:
    import datasets

    text = datasets.Value("string")
    return datasets.Features(
        {
            "id": text,
            "scene_id": text,
            "image": datasets.Image(),
            "prompt": text,
            "answer": text,
            "web_answer": text,
            "task": text,
            "question_type": text,
            "objects": datasets.Sequence(text),
            "scene": text,
        }
    )


def generate_scenes(
    n: int,
    *,
    seed: int = 0,
    held_out: float = 0.2,
    cooccurrence: float = 0.0,
    web_noise: float = 0.0,
    qa_per_scene: int = 1,
    size: int = 256,
    group_order: Literal["random", "place"] = "random",
    out_dir: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
) -> datasets.DatasetDict:
    """``n`` distinct synthetic scenes as a ``DatasetDict`` with ``train`` and ``test`` splits.

    See the module docstring for the rows, the columns and the two web-data options; the
    arguments are those of :class:`SceneSettings`. Of the ``n`` scenes, ``round(n *
    held_out)`` (at least one, at most ``n - 1``) go to ``test``, chosen by a shuffle seeded
    with ``seed``; each split keeps the scenes in drawing order. With ``out_dir`` the result is
    also written there with :func:`save_scenes`.

    Raises:
        ValueError: a setting out of range (a ``pydantic.ValidationError``).
        povidgen.pairs.output.OutputFolderError: ``out_dir`` holds something else (see
            :func:`save_scenes`).
    """
    import datasets

    settings = SceneSettings(
        n=n,
        seed=seed,
        held_out=held_out,
        cooccurrence=cooccurrence,
        web_noise=web_noise,
        qa_per_scene=qa_per_scene,
        size=size,
        group_order=group_order,
    )
    if out_dir is not None:
        _check_out(Path(out_dir), overwrite=overwrite)
    scenes = list(_distinct_scenes(settings))
    order = list(range(len(scenes)))
    random.Random(derive_seed(settings.seed, "scene-split")).shuffle(order)
    held = set(order[: settings.test_scenes])
    splits: dict[str, list[dict[str, Any]]] = {name: [] for name in _SPLITS}
    for position, (index, scene) in enumerate(scenes):
        split = "test" if position in held else "train"
        splits[split].extend(scene_rows(index, scene, settings))
    features = _features()
    result = datasets.DatasetDict(
        {name: datasets.Dataset.from_list(rows, features=features) for name, rows in splits.items()}
    )
    logger.info(
        "generated %d scenes (%d train, %d test) with seed %d",
        settings.n,
        settings.n - settings.test_scenes,
        settings.test_scenes,
        settings.seed,
    )
    if out_dir is not None:
        save_scenes(result, out_dir, settings, overwrite=overwrite)
    return result


def _check_out(out: Path, *, overwrite: bool) -> None:
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise OutputFolderError(f"{out} is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not (out / SCENES_MARKER).is_file():
            raise OutputFolderError(
                f"{out} is not empty and was not written by generate_scenes (no "
                f"{SCENES_MARKER}); choose a new or empty folder"
            )
        if not overwrite:
            raise OutputFolderError(
                f"{out} already holds scenes; pass overwrite (--overwrite) to replace them"
            )


@contextlib.contextmanager
def _quiet_datasets() -> Iterator[None]:
    """``datasets``' progress bars off within the block (the library never prints)."""
    import datasets

    if datasets.are_progress_bars_disabled():
        yield
        return
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        datasets.enable_progress_bars()


def save_scenes(
    scenes: datasets.DatasetDict,
    out_dir: str | os.PathLike[str],
    settings: SceneSettings,
    *,
    overwrite: bool = False,
) -> Path:
    """Write ``scenes`` to ``out_dir`` with ``save_to_disk``, plus :data:`SCENES_MARKER`.

    The marker holds the settings and the rows and scenes per split. The folder is written
    beside ``out_dir`` and renamed into place, so a failure leaves no half-written folder.
    ``out_dir`` must be new or empty, or (with ``overwrite``) hold an earlier marker.

    Raises:
        povidgen.pairs.output.OutputFolderError: ``out_dir`` is a file, or holds other
            things, or earlier scenes without ``overwrite``.
    """
    out = Path(out_dir)
    _check_out(out, overwrite=overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        with _quiet_datasets():
            scenes.save_to_disk(str(staging / "data"))
        data = staging / "data"
        marker = {
            "settings": settings.model_dump(mode="json"),
            "splits": {
                name: {
                    "rows": len(split),
                    "scenes": len(set(split["scene_id"])),
                }
                for name, split in scenes.items()
            },
        }
        (data / SCENES_MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        os.replace(data, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out
