"""The base of cpmai's typed result documents (what `--json` prints).

A leaf: imports nothing of cpmai's. A document's fields are declared in the order its JSON
shows them; `to_json()` is the one way to turn it into what is printed.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, SerializerFunctionWrapHandler, model_serializer


class Doc(BaseModel):
    """A part of a result document. Keys named in `OMIT_UNSET` appear in the JSON only when
    they were given (a key that is sometimes absent, not null); everything else always does."""

    model_config = ConfigDict(
        extra="forbid", serialize_by_alias=True, validate_by_name=True, validate_by_alias=True
    )
    OMIT_UNSET: ClassVar[frozenset[str]] = frozenset()

    @model_serializer(mode="wrap")
    def _leave_out_unset(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        for key in self.OMIT_UNSET - self.model_fields_set:
            data.pop(key, None)
        return data

    def to_json(self) -> dict[str, Any]:
        """The document as plain JSON values, keys as printed."""
        return self.model_dump(mode="json", by_alias=True)
