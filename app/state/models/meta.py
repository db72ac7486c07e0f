"""Node-wide key/value facts (e.g. the node id generated on first start)."""

from __future__ import annotations

from sqlmodel import Field, SQLModel


class NodeFact(SQLModel, table=True):
    __tablename__ = "node_fact"

    key: str = Field(primary_key=True, max_length=200)
    value: str
