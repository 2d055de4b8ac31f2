"""Tiny preference rows in TRL's vision format, shared by the trainer tests."""

from __future__ import annotations

from typing import Any

from povidgen.train.tiny import tiny_image

ANSWERS = [
    ("a red cat sits on a mat.", "two blue dogs sit on a sofa."),
    ("there are three apples on the table.", "there is one banana on the chair."),
    ("the kite is on the left of the tree.", "the kite is on the right of the house."),
    ("yes, a cup stands next to the plate.", "no, there is no cup in the image."),
]


def message(role: str, text: str, *, image: bool = False) -> list[dict[str, Any]]:
    content: list[dict[str, Any]] = [{"type": "image"}] if image else []
    content.append({"type": "text", "text": text})
    return [{"role": role, "content": content}]


def make_rows(n: int, *, rejected_images: bool = False) -> list[dict[str, Any]]:
    """``n`` rows with different images, questions and answers."""
    rows = []
    for i in range(n):
        chosen, rejected = ANSWERS[i % len(ANSWERS)]
        row: dict[str, Any] = {
            "id": f"row-{i}",
            "images": [tiny_image(i)],
            "prompt": message("user", f"what do you see in picture {i}?", image=True),
            "chosen": message("assistant", chosen),
            "rejected": message("assistant", rejected),
        }
        if rejected_images:
            row["rejected_images"] = [tiny_image(1000 + i)]
        rows.append(row)
    return rows
