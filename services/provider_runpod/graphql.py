"""GraphQL documents with inline literals, as RunPod's API takes them, printed by graphql-core.

The ``runpod`` package interpolates strings into its queries without escaping (a quote or a newline in a value
breaks the query), and its pod mutation cannot send ``minCudaVersion``; the documents that need either are built
here as a syntax tree and printed, so every value is a correctly escaped literal.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from graphql.language import (
    ArgumentNode,
    BooleanValueNode,
    DocumentNode,
    EnumValueNode,
    FieldNode,
    FloatValueNode,
    IntValueNode,
    ListValueNode,
    NameNode,
    NullValueNode,
    ObjectFieldNode,
    ObjectValueNode,
    OperationDefinitionNode,
    OperationType,
    SelectionSetNode,
    StringValueNode,
    ValueNode,
    print_ast,
)


class Enum(str):
    """A bare enum literal (``cloudType: ALL``), not a string."""


#: A selection: field names, or (name, sub-selection) pairs.
Selection = Sequence["str | tuple[str, Selection]"]


def literal(value: Any) -> ValueNode:
    if value is None:
        return NullValueNode()
    if isinstance(value, Enum):
        return EnumValueNode(value=str(value))
    if isinstance(value, bool):
        return BooleanValueNode(value=value)
    if isinstance(value, int):
        return IntValueNode(value=str(value))
    if isinstance(value, float):
        return FloatValueNode(value=repr(value))
    if isinstance(value, str):
        return StringValueNode(value=value)
    if isinstance(value, dict):
        return ObjectValueNode(fields=tuple(ObjectFieldNode(name=NameNode(value=k), value=literal(v))
                                            for k, v in value.items()))
    if isinstance(value, list | tuple):
        return ListValueNode(values=tuple(literal(v) for v in value))
    raise TypeError(f"no GraphQL literal for {type(value).__name__}")


def _selection(fields: Selection) -> SelectionSetNode:
    nodes = []
    for item in fields:
        if isinstance(item, tuple):
            nodes.append(FieldNode(name=NameNode(value=item[0]), selection_set=_selection(item[1])))
        else:
            nodes.append(FieldNode(name=NameNode(value=item)))
    return SelectionSetNode(selections=tuple(nodes))


def document(operation: str, field: str, arguments: dict[str, Any], selection: Selection | None = None) -> str:
    """``operation { field(arg: literal, ...) { selection } }`` as text."""
    node = FieldNode(name=NameNode(value=field),
                     arguments=tuple(ArgumentNode(name=NameNode(value=k), value=literal(v))
                                     for k, v in arguments.items()),
                     selection_set=_selection(selection) if selection else None)
    op = OperationDefinitionNode(operation=OperationType(operation), selection_set=SelectionSetNode(selections=(node,)))
    return print_ast(DocumentNode(definitions=(op,)))
