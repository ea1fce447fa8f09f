"""OpenAPI documentation for routes that read their multipart form themselves (to bound it)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


def multipart_doc(model: type[BaseModel] | None, *files: str, required: tuple[str, ...] | None = None) -> dict[str, Any]:
    """`openapi_extra` for a multipart body: the model's fields plus binary file fields."""
    props: dict[str, Any] = dict(model.model_json_schema().get("properties", {})) if model else {}
    for f in files:
        props[f] = {"type": "string", "format": "binary"}
    schema = {"type": "object", "properties": props, "required": list(files if required is None else required)}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}}
