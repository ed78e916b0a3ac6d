"""Validate simulator responses against Omnisend's published OpenAPI contracts (2026-03-15)."""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import jsonschema

CONTRACTS = Path(__file__).parent / "data" / "omnisend-openapi"


def _nullable_to_jsonschema(node: Any) -> Any:
    """OpenAPI 3.0 `nullable: true` is `type: [T, "null"]` in JSON Schema."""
    if isinstance(node, dict):
        out = {k: _nullable_to_jsonschema(v) for k, v in node.items() if k != "nullable"}
        if node.get("nullable") and "type" in node:
            out["type"] = [node["type"], "null"]
        return out
    if isinstance(node, list):
        return [_nullable_to_jsonschema(v) for v in node]
    return node


@cache
def _operations() -> list[tuple[str, re.Pattern[str], dict[str, Any], dict[str, Any]]]:
    ops = []
    for path in sorted(CONTRACTS.glob("*.json")):
        doc = _nullable_to_jsonschema(json.loads(path.read_text()))
        for template, methods in doc["paths"].items():
            pattern = re.compile("^/api" + re.sub(r"\{[^}]+\}", "[^/]+", template) + "$")
            for method, op in methods.items():
                ops.append((method.upper(), pattern, op["responses"], doc))
    # Literal paths before templated ones: /contacts/tags must not match /contacts/{id}.
    ops.sort(key=lambda o: o[1].pattern.count("[^/]+"))
    return ops


def schema_for(method: str, path: str, status: int) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """The response schema the contract declares, with the document to resolve `$ref`s in.

    A status the operation does not declare (401, 410 or 429 on batches, for example) uses the
    contract's `Problem` or `RateLimitProblem` schema."""
    for op_method, pattern, responses, doc in _operations():
        if op_method == method and pattern.match(path):
            declared = responses.get(str(status))
            if declared is not None:
                content = declared.get("content", {}).get("application/json")
                return (content["schema"] if content else None), doc
            name = "RateLimitProblem" if status == 429 else "Problem"
            return {"$ref": f"#/components/schemas/{name}"}, doc
    # Not an operation of the contract at all: Omnisend answers with its generic problem.
    doc = _operations()[0][3]
    return {"$ref": "#/components/schemas/Problem"}, doc


def assert_matches_contract(response: httpx.Response) -> None:
    request = response.request
    schema, doc = schema_for(request.method, request.url.path, response.status_code)
    if schema is None:
        assert response.content == b"", f"{response.status_code} declares no body"
        return
    wrapped = {**schema, "components": doc["components"]}
    jsonschema.validate(response.json(), wrapped)
    if response.status_code >= 400:
        body = response.json()
        for key in ("type", "title", "status", "detail", "instance"):
            assert key in body, f"problem body lacks {key}: {body}"
        assert body["status"] == response.status_code
