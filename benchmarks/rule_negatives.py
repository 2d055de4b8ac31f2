"""How good RuleHallucinator's negatives are on the demo scenes, judged against the scene.

Run:  python benchmarks/rule_negatives.py                 # seeds 0-4, 64 rows per seed
      python benchmarks/rule_negatives.py --show 5        # and five failures of each kind

The rows are those of ``povidgen build --demo`` (``demo_dataset(n, seed)``: even rows are
captions, odd rows questions), each corrupted as the builder does it (example seed
``derive_seed(seed, id)``). Two shares are printed:

* **question rows** whose rejected answer (1) still talks about the asked object (for a
  relation question, both objects), (2) changes what was asked (the count, the colour, the
  position, the yes/no conclusion, the relation) against the scene's truth, and (3) stays
  coherent: every quantity agrees with its noun ("one kite", "three kites") and its verb
  ("there is one", "there are three"), "the kites are" / "the kite is", and a yes/no answer
  says what its first word says ("No" with the object negated and never asserted, "Yes" with
  it asserted and never negated). Target: at least 90%.
* **caption rows** with at least two edits that :func:`povidgen.sources.demo.contradicts`
  verifies against the scene. Target: all.

The judgment is independent of the hallucinator: the rejected answer is parsed again here with
the demo's small vocabulary (its objects, colour words, number words and digits, position
words), and compared with the scene; nothing the hallucinator decided (its edit kinds, what it
thought was asked) enters the question share. A row the hallucinator refused (an error) counts
as a failure. The script runs against any povidgen version with the same demo module, so the
numbers before and after a change of the hallucinator come from the same judge.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

import povidgen
from povidgen import Example, Hallucination, RuleHallucinator
from povidgen.seeding import derive_seed
from povidgen.sources.demo import (
    OBJECT_NAMES,
    Scene,
    contradicts,
    demo_dataset,
    parse_scene,
    question_answer,
)

_IMAGE = Image.new("RGB", (8, 8))

_NUMBER_WORDS = [
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
    "nineteen", "twenty",
]  # fmt: skip
_QUANTITIES: dict[str, int] = {w: i for i, w in enumerate(_NUMBER_WORDS)} | {
    "a": 1,
    "an": 1,
    "no": 0,
}
_COLOURS = frozenset(
    [
        "red", "green", "blue", "yellow", "orange", "purple", "pink", "white", "black", "brown",
        "gray", "grey", "silver", "gold", "golden", "beige", "turquoise", "cyan", "magenta",
        "violet", "navy", "maroon", "tan", "teal", "crimson", "lime", "indigo",
    ]
)  # fmt: skip
_POSITIONS = {
    "left": "left",
    "right": "right",
    "top": "top",
    "upper": "top",
    "bottom": "bottom",
    "lower": "bottom",
    "center": "center",
    "centre": "center",
    "middle": "center",
    "corner": "corner",
    "foreground": "foreground",
    "background": "background",
}
# Relation phrases, each with the relation it states (synonyms state the same one).
_RELATIONS = {
    "above": "above",
    "over": "above",
    "on top of": "above",
    "below": "below",
    "beneath": "below",
    "under": "below",
    "underneath": "below",
    "to the left of": "left of",
    "to the right of": "right of",
}
_QUANTITY = r"(?P<q>\d+|" + "|".join(_QUANTITIES) + r")"
_ADJECTIVES = r"(?:(?:" + "|".join(sorted(_COLOURS)) + r"|large|small|big|tiny)\s+)*"


def _noun(name: str) -> str:
    """A pattern for the singular or plural demo noun, capturing which."""
    return rf"(?P<noun>{name}s?)\b"


def _value(quantity: str) -> int:
    return int(quantity) if quantity.isdigit() else _QUANTITIES[quantity]


@dataclass
class Judgment:
    """The judge's reading of one rejected answer to one question."""

    kept: bool
    changed: bool
    coherent: bool
    why: list[str] = field(default_factory=list)

    @property
    def good(self) -> bool:
        return self.kept and self.changed and self.coherent


def _mentions(text: str, name: str) -> bool:
    return re.search(rf"\b{name}s?\b", text) is not None


def _quantified(text: str, name: str) -> list[tuple[int, bool, re.Match[str]]]:
    """Every "<quantity> <adjectives> <name(s)>" in ``text``: (value, plural noun, match)."""
    pattern = rf"\b{_QUANTITY}\s+{_ADJECTIVES}{_noun(name)}"
    return [
        (_value(m.group("q")), m.group("noun").endswith("s"), m) for m in re.finditer(pattern, text)
    ]


def _negated(text: str, name: str) -> bool:
    """Whether ``text`` says that there is no ``name``."""
    return (
        re.search(rf"\bno\s+{_ADJECTIVES}{name}s?\b", text) is not None
        or re.search(rf"\b(?:not|n't)\b[^.;]*?\b(?:any|a|an)\s+{_ADJECTIVES}{name}s?\b", text)
        is not None
    )


def _asserted(text: str, name: str) -> bool:
    """Whether ``text`` says that there is at least one ``name``."""
    if any(value >= 1 for value, _, _ in _quantified(text, name)):
        return True
    return re.search(rf"\bthe\s+{_ADJECTIVES}{name}s?\s+(?:is|are)\b", text) is not None


def _agreement_problems(text: str) -> list[str]:
    """Quantities that disagree with their noun or verb, for every demo object."""
    problems = []
    for name in OBJECT_NAMES:
        for value, plural, match in _quantified(text, name):
            if value == 1 and plural:
                problems.append(f"'{match.group()}' (one, plural noun)")
            if value >= 2 and not plural:
                problems.append(f"'{match.group()}' (several, singular noun)")
            before = text[max(0, match.start() - 12) : match.start()]
            verb = re.search(r"\b(is|are)\s+\Z", before)
            if verb is not None and value != 0:
                if verb.group(1) == "is" and value >= 2:
                    problems.append(f"'is {match.group()}'")
                if verb.group(1) == "are" and value == 1:
                    problems.append(f"'are {match.group()}'")
        for match in re.finditer(rf"\bthe\s+{_ADJECTIVES}{_noun(name)}\s+(?P<verb>is|are)\b", text):
            plural = match.group("noun").endswith("s")
            if plural != (match.group("verb") == "are"):
                problems.append(f"'{match.group()}'")
    return problems


def _colours_of(text: str, name: str) -> set[str]:
    """The colours ``text`` gives the ``name`` objects."""
    found = set()
    for match in re.finditer(rf"\b(?P<c>[a-z]+)\s+{_noun(name)}", text):
        if match.group("c") in _COLOURS:
            found.add(match.group("c"))
    for match in re.finditer(rf"\b{name}s?\s+(?:is|are)\s+(?P<c>[a-z]+)\b", text):
        if match.group("c") in _COLOURS:
            found.add(match.group("c"))
    return found


def _sentence_about(text: str, name: str) -> str:
    """The first clause (split at . ; !) that mentions ``name``, or the empty string."""
    for clause in re.split(r"[.;!]", text):
        if _mentions(clause, name):
            return clause
    return ""


def _positions_in(clause: str) -> set[str]:
    return {_POSITIONS[w] for w in re.findall(r"[a-z]+", clause) if w in _POSITIONS}


def _relation_in(text: str, subject: str, other: str) -> str | None:
    match = re.search(rf"\b{subject}s?\s+(?:is|are)\s+(?P<r>.+?)\s+the\s+{other}s?\b", text)
    if match is None:
        return None
    words = match.group("r")
    return next(
        (
            stated
            for phrase, stated in _RELATIONS.items()
            if re.fullmatch(rf"(?:\w+\s+)*{phrase}", words)
        ),
        words,
    )


def judge(scene: Scene, kind: str, question: str, rejected: str) -> Judgment:
    """Whether ``rejected`` keeps the asked object, changes what was asked and is coherent."""
    text = rejected.lower()
    why: list[str] = []
    if kind == "relation":
        found = re.match(r"where (?:is|are) the (\w+?)s? relative to the (\w+?)s?\?", question)
        assert found is not None, question
        subject, other = found.group(1), found.group(2)
        kept = _mentions(text, subject) and _mentions(text, other)
        relation = scene.relation()
        assert relation is not None, question
        truth = _RELATIONS[relation[1]]
        said = _relation_in(text, subject, other)
        changed = said is not None and said in _RELATIONS.values() and said != truth
        if not changed:
            why.append(f"relation {said!r} (truth {truth!r})")
    else:
        found = re.search(
            r"(?:how many|color (?:is|are) the|where (?:is|are) the|is there an?) (\w+?)s?\b",
            question,
        )
        assert found is not None, question
        name = found.group(1)
        truth_group = scene.find(name)
        kept = _mentions(text, name)
        if kind == "count":
            assert truth_group is not None
            values = {value for value, _, _ in _quantified(text, name)}
            changed = bool(values) and truth_group.count not in values
            if not changed:
                why.append(f"count {sorted(values)} (truth {truth_group.count})")
        elif kind == "color":
            assert truth_group is not None
            colours = _colours_of(text, name)
            changed = bool(colours) and truth_group.color not in colours
            if not changed:
                why.append(f"colour {sorted(colours)} (truth {truth_group.color})")
        elif kind == "position":
            assert truth_group is not None
            stated = _positions_in(_sentence_about(text, name))
            changed = bool(stated) and truth_group.position not in stated
            if not changed:
                why.append(f"position {sorted(stated)} (truth {truth_group.position})")
        else:  # presence (truth: yes) or absence (truth: no)
            says_no = text.lstrip().startswith("no") or (
                _negated(text, name) and not _asserted(text, name)
            )
            says_yes = text.lstrip().startswith("yes") or (
                _asserted(text, name) and not _negated(text, name)
            )
            changed = says_no if kind == "presence" else says_yes
            if not changed:
                why.append("yes/no conclusion unchanged")
            if text.lstrip().startswith("no") and (
                not _negated(text, name) or _asserted(text, name)
            ):
                why.append("'No' but the object is asserted or not negated")
            if text.lstrip().startswith("yes") and (
                _negated(text, name) or not _asserted(text, name)
            ):
                why.append("'Yes' but the object is negated or not asserted")
        if not kept:
            why.append(f"asked object {name!r} gone")
    problems = _agreement_problems(text)
    why.extend(problems)
    coherent = not problems and not any("'No' but" in w or "'Yes' but" in w for w in why)
    if kind == "relation" and not kept:
        why.append("an object of the relation is gone")
    return Judgment(kept=kept, changed=changed, coherent=coherent, why=why)


@dataclass
class Tally:
    question_rows: int = 0
    question_good: int = 0
    question_errors: int = 0
    by_type: Counter[str] = field(default_factory=Counter)
    good_by_type: Counter[str] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)
    caption_rows: int = 0
    caption_good: int = 0
    caption_errors: int = 0
    examples: dict[str, list[str]] = field(default_factory=dict)

    def keep(self, what: str, line: str, limit: int) -> None:
        shown = self.examples.setdefault(what, [])
        if len(shown) < limit:
            shown.append(line)


def run(seeds: list[int], n: int, show: int) -> Tally:
    tally = Tally()
    hallucinator = RuleHallucinator()
    for seed in seeds:
        rows = demo_dataset(n=n, seed=seed).remove_columns("image")
        examples = [
            Example(
                id=row["id"],
                image=_IMAGE,
                prompt=row["question"],
                answer=row["answer"],
                seed=derive_seed(seed, row["id"]),
            )
            for row in rows
        ]
        results = hallucinator.hallucinate_many(examples, concurrency=8)
        for index, (row, result) in enumerate(zip(rows, results, strict=True)):
            scene = parse_scene(row["scene"])
            label = f"seed {seed} {row['id']}"
            if row["task"] == "caption":
                tally.caption_rows += 1
                if not isinstance(result, Hallucination):
                    tally.caption_errors += 1
                    tally.keep("caption error", f"{label}: {result}", show)
                    continue
                verified = [e for e in result.edits if contradicts(scene, str(e.kind), e.injected)]
                if len(verified) >= 2:
                    tally.caption_good += 1
                else:
                    tally.keep(
                        "caption with fewer than two verified edits",
                        f"{label}: {row['answer']!r} -> {result.rejected!r}",
                        show,
                    )
                continue
            kind, question, _ = question_answer(scene, index // 2, seed)
            assert question == row["question"]
            tally.question_rows += 1
            tally.by_type[kind] += 1
            if not isinstance(result, Hallucination):
                tally.question_errors += 1
                tally.failures["row error"] += 1
                tally.keep("question row error", f"{label}: {question} {result}", show)
                continue
            verdict = judge(scene, kind, question.lower(), result.rejected)
            if verdict.good:
                tally.question_good += 1
                tally.good_by_type[kind] += 1
                continue
            for flag, what in (
                (verdict.kept, "asked object gone"),
                (verdict.changed, "what was asked unchanged"),
                (verdict.coherent, "incoherent"),
            ):
                if not flag:
                    tally.failures[what] += 1
                    tally.keep(
                        what,
                        f"{label}: {question} {row['answer']!r} -> {result.rejected!r} "
                        f"[{'; '.join(verdict.why)}]",
                        show,
                    )
    return tally


def _share(part: int, whole: int) -> str:
    return f"{part}/{whole} ({100 * part / whole:.1f}%)" if whole else "0/0"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--n", type=int, default=64, help="demo rows per seed (default 64)")
    parser.add_argument("--show", type=int, default=0, help="failures to print of each kind")
    args = parser.parse_args()
    tally = run(args.seeds, args.n, args.show)
    seeds = ",".join(str(s) for s in args.seeds)
    where = Path(povidgen.__file__).resolve().parent
    print(f"povidgen {povidgen.__version__} ({where}): RuleHallucinator on the demo scenes")
    print(f"seeds {seeds}, {args.n} rows per seed")
    print()
    print(
        "question rows that keep the asked object, change what was asked and stay coherent: "
        f"{_share(tally.question_good, tally.question_rows)}  (target >= 90%)"
    )
    for kind in sorted(tally.by_type):
        print(f"  {kind:<9} {_share(tally.good_by_type[kind], tally.by_type[kind])}")
    for what, count in sorted(tally.failures.items()):
        print(f"  failed: {what}: {count}")
    print(
        "caption rows with at least two edits that contradicts() verifies: "
        f"{_share(tally.caption_good, tally.caption_rows)}  (target: all)"
    )
    if tally.caption_errors:
        print(f"  caption row errors: {tally.caption_errors}")
    for what, lines in tally.examples.items():
        print()
        print(f"{what}:")
        for line in lines:
            print(f"  {line}")


if __name__ == "__main__":
    main()
