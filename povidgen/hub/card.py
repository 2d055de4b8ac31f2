"""The dataset card povidgen writes: Hub metadata plus a provenance section.

The card is a ``huggingface_hub.DatasetCard``. Its YAML metadata is what the Hub reads
(license, task categories, tags, size category, ``configs`` naming the data files); its body
holds povidgen's section between :data:`START` and :data:`END`: the source, the hallucinator
and distorter with their parameters, seeds, counts, failures, edits by kind, pair modes, cost,
time, three examples with their injected spans marked, the preview picture, how to load and
train on the data, and how to cite POVID.

A later push regenerates only that section (and povidgen's metadata keys): whatever the user
wrote around it, and metadata keys povidgen does not set, are kept.
"""

from __future__ import annotations

import html
import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from huggingface_hub import DatasetCard, DatasetCardData

from povidgen.pairs.duplicates import DROP_KINDS
from povidgen.pairs.modes import PAIR_MODES, pair_mode_of
from povidgen.pairs.trl_format import edit_spans

__all__ = [
    "END",
    "START",
    "TAGS",
    "TASK_CATEGORIES",
    "CardFacts",
    "EditCounter",
    "dropped_of",
    "mark_spans",
    "render_card",
    "size_category",
]

START = "<!-- povidgen:start -->"
"""Where povidgen's section of the card begins."""
END = "<!-- povidgen:end -->"
"""Where povidgen's section of the card ends."""

TAGS = ("povidgen", "dpo", "vision-language", "preference", "povid")
"""Tags every card carries (a user's own tags are kept beside them)."""
TASK_CATEGORIES = ("image-text-to-text", "visual-question-answering")
"""The Hub task categories of a pairs dataset."""

DATA_FILES = "data/train-*"
"""The ``configs`` pattern that names the data files."""

PREVIEW = "preview.png"
"""The preview picture's path in the repository."""

CITATION = """\
@article{zhou2024povid,
  title   = {Aligning Modalities in Vision Large Language Models via Preference Fine-tuning},
  author  = {Zhou, Yiyang and Cui, Chenhang and Rafailov, Rafael and Finn, Chelsea and Yao, Huaxiu},
  journal = {arXiv preprint arXiv:2402.11411},
  year    = {2024}
}"""

_PLACEHOLDER = "---\nlicense: other\n---\n"  # a metadata block, replaced before the card is written
_SIZES = (
    (1_000, "n<1K"),
    (10_000, "1K<n<10K"),
    (100_000, "10K<n<100K"),
    (1_000_000, "100K<n<1M"),
    (10_000_000, "1M<n<10M"),
    (100_000_000, "10M<n<100M"),
    (1_000_000_000, "100M<n<1B"),
)


def size_category(pairs: int) -> str:
    """The Hub's ``size_categories`` value for ``pairs`` rows."""
    for limit, name in _SIZES:
        if pairs < limit:
            return name
    return "n>1B"


@dataclass
class EditCounter:
    """Counts over the published rows: edits by kind and pair modes.

    ``text_contrast`` counts rows whose rejected text differs from chosen, ``image_contrast``
    rows with a stored rejected image, ``modes`` rows by pair mode (``provenance.pair_mode``,
    or read from the row: :func:`povidgen.pairs.modes.pair_mode_of`).
    """

    edits: Counter[str] = field(default_factory=Counter)
    text_contrast: int = 0
    image_contrast: int = 0
    rows: int = 0
    modes: Counter[str] = field(default_factory=Counter)

    def add(self, row: Mapping[str, Any]) -> None:
        """Count one row (a pairs row, as a dict)."""
        self.rows += 1
        self.modes[pair_mode_of(row)] += 1
        provenance = row.get("provenance") or {}
        for edit in provenance.get("edits") or ():
            self.edits[str(edit.get("kind"))] += 1
        if _text(row.get("rejected")) != _text(row.get("chosen")):
            self.text_contrast += 1
        if row.get("rejected_images"):
            self.image_contrast += 1


@dataclass
class CardFacts:
    """Everything the card states, gathered by :func:`povidgen.publish`."""

    repo_id: str
    source: str
    source_license: str
    license: str
    hallucinator: str | None
    hallucinator_params: Mapping[str, Any]
    distorter: str | None
    distorter_params: Mapping[str, Any] | None
    seed: int | None
    rows_in: int
    pairs: int
    failed: int
    failures: Mapping[str, Mapping[str, int]]
    counts: EditCounter
    cost_usd: float | None
    seconds: float | None
    built_with: str | None
    published_with: str
    examples: Sequence[Mapping[str, Any]]
    has_preview: bool
    from_summary: bool
    dropped: Mapping[str, int] | None = None
    """Rows the build dropped by kind (``near_duplicate``, ``repeated``), or ``None`` when it
    did not look for duplicates or is not known (:func:`dropped_of`)."""


def dropped_of(summary: Mapping[str, Any]) -> dict[str, int] | None:
    """The dropped rows a build's ``summary.json`` counts, or ``None`` when the build did not
    drop duplicates (its configuration says so)."""
    pairs = (summary.get("configuration") or {}).get("pairs") or {}
    if not pairs.get("drop_duplicates"):
        return None
    recorded = summary.get("dropped") or {}
    return {kind: int(recorded.get(kind) or 0) for kind in DROP_KINDS.values()}


def render_card(facts: CardFacts, existing: str | None = None) -> str:
    """The card's text for ``facts``; ``existing`` (the card already published) keeps its
    user text and its metadata keys povidgen does not set."""
    section = _section(facts)
    if existing is None:
        card = DatasetCard(f"{_PLACEHOLDER}\n# {facts.repo_id.split('/')[-1]}\n\n{section}\n")
        user_data: dict[str, Any] = {}
    else:
        if not existing.startswith("---"):  # a card without metadata: the text is kept
            existing = f"{_PLACEHOLDER}{existing}"
        card = DatasetCard(existing)
        user_data = card.data.to_dict()  # type: ignore[no-untyped-call]
        card.text = _splice(card.text, section)
    metadata: dict[str, Any] = dict(user_data)
    metadata["license"] = facts.license
    metadata["task_categories"] = sorted(
        {*(user_data.get("task_categories") or ()), *TASK_CATEGORIES}
    )
    user_tags = [t for t in user_data.get("tags") or () if t not in TAGS]
    metadata["tags"] = [*TAGS, *user_tags]
    metadata["size_categories"] = [size_category(facts.pairs)]
    metadata["configs"] = [
        {"config_name": "default", "data_files": [{"split": "train", "path": DATA_FILES}]}
    ]
    if not user_data.get("pretty_name"):
        metadata["pretty_name"] = facts.repo_id.split("/")[-1]
    data = DatasetCardData(**metadata)
    card.data = data
    return str(card.content).rstrip("\n") + "\n"


def _splice(text: str, section: str) -> str:
    """``text`` with povidgen's section replaced (or appended when it has none)."""
    start, end = text.find(START), text.find(END)
    if start >= 0 and end > start:
        return text[:start] + section + text[end + len(END) :]
    return text.rstrip("\n") + "\n\n" + section + "\n"


def mark_spans(rejected: str, edits: Iterable[Mapping[str, Any]]) -> str:
    """``rejected`` as HTML-escaped text with each edit's injected span in ``<mark>``.

    An edit whose ``start:end`` does not hold its injected text is looked up by text, and
    skipped when it is not there; overlapping spans keep the first.
    """
    spans = edit_spans(rejected, edits)
    out, at = [], 0
    for start, end, kind in sorted(spans):
        if start < at:
            continue
        out.append(html.escape(rejected[at:start]))
        out.append(f'<mark title="{html.escape(kind)}">{html.escape(rejected[start:end])}</mark>')
        at = end
    out.append(html.escape(rejected[at:]))
    return "".join(out)


def _section(facts: CardFacts) -> str:
    parts = [START, "## How this dataset was made", ""]
    parts.append(
        "Preference pairs for vision-language models in the style of POVID "
        "([arXiv 2402.11411](https://arxiv.org/abs/2402.11411)), made with "
        "povidgen: the chosen answer is the source's "
        "answer; the rejected answer is a rewrite with injected hallucinations"
        + (", and the rejected image a distorted copy of the image." if facts.distorter else ".")
    )
    if facts.counts.modes.get("image") or (
        facts.counts.modes.get("text") and facts.counts.modes.get("both")
    ):
        parts[-1] += (
            " Pairs differ in what they contrast (the pair modes below): a text pair has a "
            "rewritten answer and no rejected image; an image pair keeps the answer (`rejected` "
            "repeats `chosen`) and has a distorted rejected image; a both pair has both. "
            "`provenance.pair_mode` says which."
        )
    parts += ["", "| | |", "| --- | --- |"]
    rows = [
        ("Source dataset", f"`{facts.source}`"),
        ("Source license", facts.source_license),
        ("Hallucinator", f"`{facts.hallucinator}`" if facts.hallucinator else "not recorded"),
    ]
    model = facts.hallucinator_params.get("model")
    if model is not None:
        rows.append(("Model", f"`{model}`"))
    for key, label in (
        ("prompt_version", "Prompt version"),
        ("prompt_fingerprint", "Prompt fingerprint"),
    ):
        if facts.hallucinator_params.get(key) is not None:
            rows.append((label, f"`{facts.hallucinator_params[key]}`"))
    rows += [
        ("Distorter", f"`{facts.distorter}`" if facts.distorter else "none"),
        ("Seed", "not recorded" if facts.seed is None else str(facts.seed)),
        ("Rows in", str(facts.rows_in)),
        ("Pairs out", str(facts.pairs)),
        ("Rows failed", str(facts.failed) if facts.from_summary else "not recorded"),
        ("Text-contrast pairs", str(facts.counts.text_contrast)),
        ("Image-contrast pairs", str(facts.counts.image_contrast)),
        ("Pair modes", _modes(facts)),
        ("Rows dropped", _dropped(facts)),
        ("Cost", _cost(facts)),
        ("Time", _seconds(facts)),
        ("Built with", f"povidgen {facts.built_with}" if facts.built_with else "not recorded"),
        ("Published with", f"povidgen {facts.published_with}"),
    ]
    parts += [f"| {label} | {value} |" for label, value in rows]
    parts += ["", "### Settings", ""]
    parts += [
        "Hallucinator parameters:",
        "",
        "```json",
        json.dumps(dict(facts.hallucinator_params), indent=2, sort_keys=True),
        "```",
        "",
    ]
    if facts.distorter is not None:
        parts += [
            "Distorter parameters:",
            "",
            "```json",
            json.dumps(dict(facts.distorter_params or {}), indent=2, sort_keys=True),
            "```",
            "",
        ]
    parts += ["### Edits by kind", ""]
    if facts.counts.edits:
        parts += ["| kind | edits |", "| --- | --- |"]
        parts += [f"| {kind} | {n} |" for kind, n in sorted(facts.counts.edits.items())]
    else:
        parts.append("No typed edits were recorded.")
    parts += ["", "### Failures by stage and reason", ""]
    if not facts.from_summary:
        parts.append("Not recorded (published from a `Dataset`, not a build folder).")
    elif facts.failures:
        parts += ["| stage | reason | rows |", "| --- | --- | --- |"]
        for stage, reasons in sorted(facts.failures.items()):
            parts += [
                f"| {stage} | {_cell(reason)} | {n} |" for reason, n in sorted(reasons.items())
            ]
    else:
        parts.append("None: every row became a pair.")
    parts += ["", "### Examples", "", "Injected hallucinations are <mark>marked</mark>.", ""]
    for number, example in enumerate(facts.examples, 1):
        parts += [
            f"**{number}. `{html.escape(str(example.get('id')))}`**",
            "",
            f"- Prompt: {_inline(_text(example.get('prompt')))}",
            f"- Chosen: {_inline(_text(example.get('chosen')))}",
            "- Rejected: "
            + mark_spans(
                _text(example.get("rejected")),
                (example.get("provenance") or {}).get("edits") or (),
            ).replace("\n", " "),
            "",
        ]
    if facts.has_preview:
        parts += ["### Preview", "", f"![pairs, with the injected spans marked]({PREVIEW})", ""]
    parts += [
        "### Load it",
        "",
        "```python",
        "from datasets import load_dataset",
        "",
        f'pairs = load_dataset("{facts.repo_id}", split="train")',
        "```",
        "",
        "The columns are TRL's vision preference format (`images`, `prompt`, `chosen`, "
        "`rejected`), plus `rejected_images` when there is a distorter and `provenance` "
        "(the hallucinator, distorter, seeds and edits of each row).",
        "",
        "### Train on it",
        "",
        "With TRL:",
        "",
        "```python",
        "from trl import DPOConfig, DPOTrainer",
        "",
        'train = pairs.select_columns(["images", "prompt", "chosen", "rejected"])',
        'trainer = DPOTrainer(model=model, args=DPOConfig(output_dir="dpo"),',
        "                     train_dataset=train, processing_class=processor)",
        "trainer.train()",
        "```",
        "",
        "With povidgen (POVID's two-stage loss):",
        "",
        "```bash",
        f"hf download {facts.repo_id} --repo-type dataset --local-dir pairs",
        "povidgen train --model PATH --data pairs/data --out run --mode povid",
        "```",
        "",
        "### Citation",
        "",
        "```bibtex",
        CITATION,
        "```",
        END,
    ]
    return "\n".join(parts)


def _text(messages: Any) -> str:
    if not isinstance(messages, Sequence) or isinstance(messages, str):
        return "" if messages is None else str(messages)
    return "".join(
        str(part.get("text"))
        for message in messages
        for part in (message.get("content") or ())
        if part.get("type") == "text" and part.get("text") is not None
    )


def _inline(text: str) -> str:
    return html.escape(text).replace("\n", " ")


def _cell(text: str) -> str:
    return _inline(text).replace("|", "\\|")


def _modes(facts: CardFacts) -> str:
    """``text 9, image 5, both 6``: every mode with a row, in order."""
    modes = facts.counts.modes
    return ", ".join(f"{mode} {modes[mode]}" for mode in PAIR_MODES if modes[mode]) or "none"


def _dropped(facts: CardFacts) -> str:
    if not facts.from_summary:
        return "not recorded"
    if facts.dropped is None:
        return "none (duplicates were not dropped)"
    total = sum(facts.dropped.values())
    kinds = ", ".join(f"{kind.replace('_', '-')} {n}" for kind, n in facts.dropped.items())
    return f"{total} ({kinds})"


def _cost(facts: CardFacts) -> str:
    if not facts.from_summary:
        return "not recorded"
    if facts.cost_usd is None:
        return "none (no paid calls)"
    return f"${facts.cost_usd:.4f}"


def _seconds(facts: CardFacts) -> str:
    if facts.seconds is None:
        return "not recorded"
    return f"{facts.seconds:.1f} s"
