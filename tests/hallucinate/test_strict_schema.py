"""povidgen's own strict JSON schema (no private SDK helper), and that the live and batch
requests of both providers carry exactly it."""

from __future__ import annotations

import importlib
import inspect
import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from pydantic import BaseModel, Field

from povidgen.hallucinate.anthropic_api import AnthropicHallucinator
from povidgen.hallucinate.llm import LLMHallucinator
from povidgen.hallucinate.openai_api import OpenAIHallucinator
from povidgen.hallucinate.prompts import ReplyEdit, RewriteReply
from povidgen.hallucinate.strict_schema import strict_json_schema
from povidgen.schema import EditKind, Example
from tests.fakes.llm_server import FakeLLMServer

HALLUCINATE = Path(__file__).resolve().parents[2] / "povidgen" / "hallucinate"
KINDS = ["object", "attribute", "count", "relation", "spatial", "text", "reasoning"]


def _doc(model: type) -> str:
    return inspect.cleandoc(model.__doc__ or "")


def test_rewrite_reply_schema_by_hand() -> None:
    edit_kind = {
        "description": "The type of the injected error.",  # the field's, over the enum's own
        "enum": KINDS,
        "title": "EditKind",
        "type": "string",
    }
    reply_edit = {
        "additionalProperties": False,
        "description": _doc(ReplyEdit),
        "properties": {
            "kind": edit_kind,
            "original": {
                "description": (
                    'The replaced phrase, verbatim from the original answer; "" for an insertion.'
                ),
                "title": "Original",
                "type": "string",
            },
            "injected": {
                "description": "The new phrase, exactly as it appears in the rewrite.",
                "title": "Injected",
                "type": "string",
            },
        },
        "required": ["kind", "original", "injected"],
        "title": "ReplyEdit",
        "type": "object",
    }
    expected = {
        "$defs": {
            "EditKind": {
                "description": _doc(EditKind),
                "enum": KINDS,
                "title": "EditKind",
                "type": "string",
            },
            "ReplyEdit": reply_edit,
        },
        "additionalProperties": False,
        "description": _doc(RewriteReply),
        "properties": {
            "rejected": {
                "description": "The rewritten answer with the injected errors.",
                "title": "Rejected",
                "type": "string",
            },
            "edits": {
                "description": "One entry per injected error.",
                "items": {"$ref": "#/$defs/ReplyEdit"},  # a bare $ref stays a reference
                "title": "Edits",
                "type": "array",
            },
        },
        "required": ["rejected", "edits"],
        "title": "RewriteReply",
        "type": "object",
    }
    assert strict_json_schema(RewriteReply) == expected


class _Inner(BaseModel):
    """An inner object."""

    size: int = 3


class _Loose(BaseModel):
    name: str
    note: str | None = None
    inner: _Inner = Field(default_factory=_Inner, description="The inner part.")
    inners: list[_Inner] = []


def test_defaults_become_required_and_referenced_models_closed() -> None:
    schema = strict_json_schema(_Loose)
    assert schema["additionalProperties"] is False
    assert schema["required"] == ["name", "note", "inner", "inners"]
    assert "default" not in schema["properties"]["note"]  # a None default is dropped
    inner = schema["properties"]["inner"]
    assert "$ref" not in inner  # a $ref with a sibling is inlined, the sibling winning
    assert inner["description"] == "The inner part."
    assert (inner["additionalProperties"], inner["required"]) == (False, ["size"])
    assert schema["$defs"]["_Inner"]["required"] == ["size"]
    assert schema["$defs"]["_Inner"]["additionalProperties"] is False
    assert "required" not in _Loose.model_json_schema()["$defs"]["_Inner"]  # pydantic's untouched


def test_an_open_mapping_cannot_be_strict() -> None:
    class Mapping(BaseModel):
        scores: dict[str, float]

    with pytest.raises(ValueError, match=r"Mapping\.scores.*additionalProperties"):
        strict_json_schema(Mapping)


def test_the_schema_equals_the_openai_sdks_own_helper_while_it_exists() -> None:
    try:
        completions = importlib.import_module("openai.lib._parsing._completions")
    except ImportError:
        pytest.skip("the OpenAI SDK's private schema helper is gone (nothing to compare)")
    helper = getattr(completions, "type_to_response_format_param", None)
    if helper is None:
        pytest.skip("the OpenAI SDK's private schema helper is gone (nothing to compare)")
    for model in (RewriteReply, _Loose):
        made = helper(model)
        assert made["json_schema"]["schema"] == strict_json_schema(model)


def test_no_private_sdk_module_is_imported() -> None:
    for module in ("openai_api.py", "anthropic_api.py"):
        source = (HALLUCINATE / module).read_text(encoding="utf-8")
        for line in source.splitlines():
            if line.strip().startswith(("import ", "from ")) and (
                "openai" in line or "anthropic" in line
            ):
                assert "._" not in line, f"{module}: {line.strip()}"
                assert "lib." not in line, f"{module}: {line.strip()}"


# ---- live and batch requests carry the same schema ---------------------------------------------


def _example() -> Example:
    return Example(
        id="a",
        image=Image.new("RGB", (16, 16), "red"),
        prompt="How many apples are there?",
        answer="There are two red apples on the wooden table.",
    )


def _make(provider: str, server: FakeLLMServer, **options: Any) -> LLMHallucinator:
    if provider == "openai":
        return OpenAIHallucinator(base_url=server.openai_base_url, api_key="sk-x", **options)
    return AnthropicHallucinator(base_url=server.anthropic_base_url, api_key="sk-x", **options)


def _live_schema(provider: str, body: dict[str, Any]) -> Any:
    if provider == "openai":
        assert body["response_format"]["json_schema"]["name"] == "RewriteReply"
        assert body["response_format"]["json_schema"]["strict"] is True
        return body["response_format"]["json_schema"]["schema"]
    assert body["output_config"]["format"]["type"] == "json_schema"
    return body["output_config"]["format"]["schema"]


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_live_and_batch_requests_carry_the_identical_schema(provider: str, tmp_path: Path) -> None:
    with FakeLLMServer(batch_polls_until_done=0) as server:
        [live] = _make(provider, server, cache=False).hallucinate_many([_example()])
        assert not isinstance(live, Exception), live
        [sent] = server.generation_requests(provider)
        live_schema = _live_schema(provider, sent.body)

        batch = _make(
            provider, server, cache=False, mode="batch", batch_dir=tmp_path, poll_interval=0.01
        )
        [batched] = batch.hallucinate_many([_example()])
        assert not isinstance(batched, Exception), batched
        if provider == "openai":
            [upload] = [f for f in server.files.values() if f.purpose == "batch"]
            [line] = upload.content.decode("utf-8").splitlines()
            batch_body = json.loads(line)["body"]
        else:
            [create] = [r for r in server.requests if r.path == "/v1/messages/batches"]
            batch_body = create.body["requests"][0]["params"]
        batch_schema = _live_schema(provider, batch_body)

    assert live_schema == batch_schema == strict_json_schema(RewriteReply)
    assert json.dumps(live_schema) == json.dumps(batch_schema)  # key order too
