"""Multi-turn conversations: one pair per assistant turn, with the turns before it as context.

A LLaVA-style record holds a conversation that alternates user and assistant turns::

    {"id": "42", "image": "42.jpg",
     "conversations": [{"from": "human", "value": "<image>\\nWhat is on the table?"},
                       {"from": "gpt",   "value": "Two red apples."},       # exchange 0
                       {"from": "human", "value": "And to the left?"},
                       {"from": "gpt",   "value": "A cup."}]}              # exchange 1

Exchange ``k`` (0-based) is the ``k``-th question with its answer. ``turns`` picks the exchanges
that become pairs: ``"first"`` (exchange 0; the default, and what povidgen did before it read
later turns), ``"last"`` (exchange ``n - 1``) or ``"all"`` (every one). For exchange ``k``:

* the hallucinator corrupts only answer ``k``; its :class:`povidgen.Example` has question ``k``
  as ``prompt``, answer ``k`` as ``answer`` and exchanges ``0..k-1`` as ``context``;
* the pair's prompt is ``[user (image, question 0), assistant (answer 0), ..., user (question
  k)]`` in TRL's conversational format, ``chosen``/``rejected`` the final assistant message
  (:func:`povidgen.pairs.trl_format.prompt_messages`);
* its id is the record's id for ``k = 0`` and ``"<id>#turn<k>"`` otherwise (:func:`turn_id`),
  so each pair's id, seed and output are the same whichever ``turns`` made it, and a
  ``turns="first"`` build is the same as one of single-turn records; ``provenance.turn`` is
  ``k``.

Roles are ``human``/``user`` and ``gpt``/``assistant`` (under ``from``/``value``, or
``role``/``content``); the image belongs to the first question (its ``<image>`` placeholder,
wherever it was, is removed). A conversation that is not a list of such turns, does not
alternate (starting with a user turn and ending with an assistant one), has an empty turn, has
no assistant turn or holds several ``<image>`` placeholders becomes one
:class:`povidgen.RowError` (stage ``input``) with the reason; it is never dropped.

:class:`ConversationRows` does this to a dataset lazily, as :meth:`povidgen.PairBuilder.
from_dataset` reads it: each record becomes one row per chosen exchange (or one row carrying
its error), with the exchange in the prompt and answer columns and a :class:`ConversationTurn`
under :data:`TURN_KEY`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import datasets

from povidgen.errors import InvalidExampleError
from povidgen.schema import Exchange

__all__ = [
    "CONVERSATIONS_COLUMN",
    "TURNS",
    "TURN_KEY",
    "ConversationRows",
    "ConversationTurn",
    "Turns",
    "parse_conversation",
    "select_turns",
    "turn_id",
    "turn_of",
]

Turns = Literal["first", "last", "all"]
"""Which exchanges of a conversation become pairs."""

TURNS: tuple[Turns, ...] = get_args(Turns)

CONVERSATIONS_COLUMN = "conversations"
"""The column holding a record's turns: a list of ``{"from", "value"}`` mappings, or that list
as JSON text (as :func:`povidgen.sources.files.llava_to_rows` stores it)."""

TURN_KEY = "__povidgen_turn__"
"""The key under which an expanded row carries its :class:`ConversationTurn`."""

_IMAGE_PLACEHOLDER = "<image>"
_USER = frozenset({"human", "user"})
_ASSISTANT = frozenset({"gpt", "assistant"})


@dataclass(frozen=True)
class ConversationTurn:
    """Which exchange of which record an expanded row is.

    Attributes:
        record: the record's position in the input.
        turn: the exchange's 0-based index (0 for a record whose conversation is bad).
        context: the exchanges before it, oldest first.
        error: why the record's conversation cannot be used, if it cannot; the row then
            becomes a :class:`povidgen.RowError`.
    """

    record: int
    turn: int
    context: tuple[Exchange, ...] = ()
    error: str | None = None


def parse_conversation(conversation: object) -> list[Exchange]:
    """The exchanges of a conversation, each question without its ``<image>`` placeholder
    and stripped of surrounding whitespace (answers are kept as they are).

    Raises:
        InvalidExampleError: the conversation is not a non-empty list of alternating
            user/assistant turns with text (the message says which turn and why).
    """
    if isinstance(conversation, str):
        try:
            conversation = json.loads(conversation)
        except json.JSONDecodeError as error:
            raise InvalidExampleError(f"conversations is not valid JSON ({error.msg})") from None
    if not isinstance(conversation, list):
        kind = type(conversation).__name__
        raise InvalidExampleError(f"conversations is not a list of turns (got {kind})")
    if not conversation:
        raise InvalidExampleError("the conversation has no turns")
    turns = [_turn(position, turn) for position, turn in enumerate(conversation)]
    if not any(role == "assistant" for role, _ in turns):
        raise InvalidExampleError("the conversation has no assistant (gpt) turn to corrupt")
    for position, (role, _) in enumerate(turns):
        expected = "user" if position % 2 == 0 else "assistant"
        if role != expected:
            wanted = "a user (human)" if expected == "user" else "an assistant (gpt)"
            raise InvalidExampleError(
                f"conversations[{position}] is {role!r} where {wanted} turn was expected: turns "
                "must alternate user, assistant, user, ..., starting with the user"
            )
    if len(turns) % 2:
        raise InvalidExampleError(
            f"conversations[{len(turns) - 1}] is a user turn with no assistant answer after it"
        )
    placeholders = sum(text.count(_IMAGE_PLACEHOLDER) for _, text in turns)
    if placeholders > 1:
        raise InvalidExampleError(
            f"the conversation has {placeholders} {_IMAGE_PLACEHOLDER} placeholders; "
            "multi-image rows are not supported"
        )
    exchanges = []
    for position in range(0, len(turns), 2):
        question = turns[position][1].replace(_IMAGE_PLACEHOLDER, "").strip()
        if not question:
            raise InvalidExampleError(f"conversations[{position}] is empty besides <image>")
        exchanges.append(Exchange(question=question, answer=turns[position + 1][1]))
    return exchanges


def _turn(position: int, turn: object) -> tuple[str, str]:
    """``(role, text)`` of one turn, ``role`` being ``"user"`` or ``"assistant"``."""
    if not isinstance(turn, Mapping):
        raise InvalidExampleError(
            f"conversations[{position}] is not a {{'from', 'value'}} turn "
            f"(got {type(turn).__name__})"
        )
    role = turn.get("from", turn.get("role"))
    text = turn.get("value", turn.get("content"))
    if role in _USER:
        role = "user"
    elif role in _ASSISTANT:
        role = "assistant"
    else:
        raise InvalidExampleError(
            f"conversations[{position}] is from {role!r}; only human/user and gpt/assistant "
            "turns are supported"
        )
    if not isinstance(text, str):
        raise InvalidExampleError(
            f"conversations[{position}] has no text value (got {type(text).__name__})"
        )
    if not text.strip():
        raise InvalidExampleError(f"conversations[{position}] ({role}) is empty")
    return role, text


def select_turns(exchanges: int, turns: Turns) -> range:
    """The indices of the exchanges that ``turns`` picks out of ``exchanges`` (at least 1)."""
    if turns == "first":
        return range(min(1, exchanges))
    if turns == "last":
        return range(exchanges - 1, exchanges)
    if turns == "all":
        return range(exchanges)
    raise ValueError(f"turns must be one of {', '.join(TURNS)}; got {turns!r}")


def turn_id(record_id: str, turn: int) -> str:
    """The id of exchange ``turn``'s pair: the record's own id for the first exchange (so a
    first-turn build is the same as before multi-turn support), ``"<id>#turn<k>"`` after."""
    return record_id if turn == 0 else f"{record_id}#turn{turn}"


def turn_of(row: Mapping[str, Any]) -> ConversationTurn | None:
    """The :class:`ConversationTurn` an expanded row carries, or ``None`` for a plain row."""
    turn = row.get(TURN_KEY)
    return turn if isinstance(turn, ConversationTurn) else None


class ConversationRows:
    """The rows of ``rows`` (records with a ``conversations`` column), one per chosen exchange.

    Iterating is lazy and can be repeated (each pass reads ``rows`` again). Each row is a copy
    of its record with ``prompt_column`` and ``answer_column`` set to the exchange's question
    and answer and a :class:`ConversationTurn` under :data:`TURN_KEY`; a record whose
    conversation is bad gives one row with empty prompt and answer and the error.

    ``len()`` is the number of rows: the number of records for ``"first"`` and ``"last"``; for
    ``"all"``, counted by reading the conversations column (a ``TypeError`` for an
    ``IterableDataset`` or any other input without a length).
    """

    def __init__(
        self,
        rows: Iterable[Mapping[str, Any]],
        *,
        turns: Turns,
        prompt_column: str,
        answer_column: str,
        column: str = CONVERSATIONS_COLUMN,
    ) -> None:
        if turns not in TURNS:
            raise ValueError(f"turns must be one of {', '.join(TURNS)}; got {turns!r}")
        self.rows = rows
        self.turns: Turns = turns
        self.prompt_column = prompt_column
        self.answer_column = answer_column
        self.column = column
        self._length: int | None = None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for record, row in enumerate(self.rows):
            try:
                exchanges = parse_conversation(row.get(self.column))
            except InvalidExampleError as error:
                yield self._row(row, ConversationTurn(record, 0, error=str(error)), "", "")
                continue
            for turn in select_turns(len(exchanges), self.turns):
                exchange = exchanges[turn]
                context = ConversationTurn(record, turn, tuple(exchanges[:turn]))
                yield self._row(row, context, exchange.question, exchange.answer)

    def _row(
        self, row: Mapping[str, Any], turn: ConversationTurn, prompt: str, answer: str
    ) -> dict[str, Any]:
        out = dict(row)
        out[self.prompt_column] = prompt
        out[self.answer_column] = answer
        out[TURN_KEY] = turn
        return out

    def __len__(self) -> int:
        rows = self.rows
        if self.turns != "all":
            return len(rows)  # type: ignore[arg-type]  # TypeError when it has none
        if self._length is None:
            if isinstance(rows, datasets.Dataset):
                conversations: Iterable[Any] = rows.select_columns([self.column])
                cells = (cell[self.column] for cell in conversations)
            elif isinstance(rows, Sequence):
                cells = (row.get(self.column) for row in rows)
            else:
                raise TypeError("the number of exchanges of a streamed dataset is not known")
            self._length = sum(_exchange_count(cell) for cell in cells)
        return self._length


def _exchange_count(conversation: object) -> int:
    """The rows ``turns="all"`` makes of one record (1 for a bad one: its error)."""
    try:
        return len(parse_conversation(conversation))
    except InvalidExampleError:
        return 1
