"""A pydantic model as the strict JSON schema that structured output needs.

OpenAI's strict mode (``response_format={"type": "json_schema", ..., "strict": true}``) and
Anthropic's ``output_config.format`` constrain decoding to a JSON schema, but only to a subset
of JSON Schema: every object must say ``additionalProperties: false`` and list all of its
properties as ``required``, and a ``$ref`` may not have sibling keywords. pydantic's
``model_json_schema()`` breaks the last two: a field with a default is not required, and a field
whose type is another model or an enum comes out as ``{"$ref": ..., "description": ...}``.

:func:`strict_json_schema` makes the one schema both providers get, live and in batches, so the
requests agree byte for byte. It is ours rather than the SDKs' helpers because those live in
private modules (``openai.lib._parsing``, ``anthropic.lib._parse``) that may change in any
release; for the models povidgen sends it gives the same schema as OpenAI's helper (a test
checks this while that helper exists).
"""

from __future__ import annotations

import copy
import functools
from typing import Any

from pydantic import BaseModel

__all__ = ["strict_json_schema"]


@functools.cache
def strict_json_schema(model: type[BaseModel]) -> dict[str, Any]:
    """``model``'s JSON schema made strict.

    * every object gets ``additionalProperties: false`` and all its properties ``required`` (so
      a field with a default must still be sent: declare ``X | None`` for an optional one);
    * a ``$ref`` with sibling keys (pydantic adds the field's ``description``) is replaced by the
      definition it points to, merged with the siblings (the siblings win); a bare ``$ref``
      stays a reference into ``$defs``;
    * ``allOf`` with a single entry is merged into its parent and a ``default`` of ``None`` is
      dropped, as OpenAI's helper does.

    Made once a model (a request body is built for every call); the result is shared, so treat
    it as read-only.

    Raises:
        ValueError: an object that allows extra keys of some type (a ``dict[str, X]`` field,
            ``extra="allow"``): strict mode cannot express it, and silently forbidding the keys
            would change what the model means.
    """
    root = model.model_json_schema()
    return _strict(root, root=root, path=model.__name__)


def _strict(node: dict[str, Any], *, root: dict[str, Any], path: str) -> dict[str, Any]:
    node = dict(node)  # a copy: pydantic's schema and shared $defs stay untouched

    if isinstance(node.get("$defs"), dict):
        node["$defs"] = {
            name: _strict(definition, root=root, path=f"{path}.$defs.{name}")
            for name, definition in node["$defs"].items()
        }

    if node.get("type") == "object":
        extra = node.setdefault("additionalProperties", False)
        if extra is not False:
            raise ValueError(
                f"{path}: an object with additionalProperties={extra!r} cannot be a strict "
                "schema; give it named fields"
            )
        properties = node.get("properties")
        if isinstance(properties, dict):
            node["required"] = list(properties)
            node["properties"] = {
                name: _strict(value, root=root, path=f"{path}.{name}")
                for name, value in properties.items()
            }

    if isinstance(node.get("items"), dict):
        node["items"] = _strict(node["items"], root=root, path=f"{path}[]")

    for keyword in ("anyOf", "oneOf"):
        if isinstance(node.get(keyword), list):
            node[keyword] = [
                _strict(choice, root=root, path=f"{path}.{keyword}[{i}]")
                for i, choice in enumerate(node[keyword])
            ]

    all_of = node.get("allOf")
    if isinstance(all_of, list):
        if len(all_of) == 1:
            del node["allOf"]
            node.update(_strict(all_of[0], root=root, path=f"{path}.allOf[0]"))
        else:
            node["allOf"] = [
                _strict(part, root=root, path=f"{path}.allOf[{i}]") for i, part in enumerate(all_of)
            ]

    if "default" in node and node["default"] is None:
        del node["default"]

    ref = node.get("$ref")
    if isinstance(ref, str) and len(node) > 1:
        # Strict mode rejects a $ref with siblings: inline what it points to, siblings winning
        # (the field's own description is more specific than the type's).
        target = _resolve(root, ref)
        del node["$ref"]
        merged = {**copy.deepcopy(target), **node}
        return _strict(merged, root=root, path=path)
    return node


def _resolve(root: dict[str, Any], ref: str) -> dict[str, Any]:
    """The definition a local ``$ref`` (``#/$defs/Name``) points to in ``root``."""
    if not ref.startswith("#/"):
        raise ValueError(f"only local references can be inlined, not {ref!r}")
    found: Any = root
    for part in ref[2:].split("/"):
        if not isinstance(found, dict) or part not in found:
            raise ValueError(f"the reference {ref!r} points nowhere")
        found = found[part]
    if not isinstance(found, dict):
        raise ValueError(f"the reference {ref!r} does not point to a schema")
    return found
