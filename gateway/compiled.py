"""Execute an operation over the Builder's value tree without graphql-core's resolver calls.

graphql-core calls a resolver, builds a resolve info and a path object for
every field of every record. Here each operation is compiled once into a
shape: per object the collected fields in response order, with fragments
flattened by type condition, ``@include``/``@skip`` applied, ``__typename``
a constant and each leaf's output coercion chosen in advance. Running the
shape over the tree of dicts from ``gateway.build`` returns the same data
and errors as ``graphql.execute_sync`` with a field resolver that reads each
value by response key:

- a value that is an exception instance is raised at its field, so the
  field is null and one error with its locations and path is added;
- null in a non-null position propagates to the nearest nullable field
  or list item, with graphql-core's own error messages;
- errors are in execution order, which is depth-first in response order.

NOTE: field arguments are not evaluated here, so graphql-core's error for
an argument that fails coercion at execution cannot occur. The planner has
already evaluated the arguments of every field that execution reaches and
rejects the request with HTTP 400 when one fails.

Shapes depend on the values of the variables that ``@include``/``@skip``
read, so one shape is compiled per document, operation and those values.
``tests/security/test_compiled_executor.py`` compares both executors on
generated operations, byte for byte.

NOTE: ``collect_fields``, ``collect_subfields`` and ``Executor.build`` are
graphql-core 3.3 internals, documented "for internal use only", so a
graphql-core upgrade can break this module. The differential test and the
tests in ``tests/gateway/test_compiled_shapes.py`` would then fail.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from graphql import (
    DirectiveNode,
    DocumentNode,
    FieldNode,
    GraphQLBoolean,
    GraphQLError,
    GraphQLID,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLOutputType,
    GraphQLScalarType,
    GraphQLSchema,
    GraphQLString,
    TypeNameMetaFieldDef,
    VariableNode,
    Visitor,
    is_leaf_type,
    is_list_type,
    is_non_null_type,
    is_object_type,
    located_error,
    visit,
)
from graphql.execution.collect_fields import FieldDetails, collect_fields, collect_subfields
from graphql.execution.executor import Executor
from graphql.pyutils import Undefined, inspect, is_iterable

log = logging.getLogger("gateway.execute")

# Kinds of a field, which pick the path in ``_Run.execute_fields``.
_TYPENAME, _LEAF, _OBJECT, _LIST_OF_OBJECTS, _OTHER = range(5)
# Built-in scalars whose output coercion returns a value of this Python type
# unchanged (graphql-core 3.3 ``serialize_string``, ``serialize_id`` and
# ``serialize_boolean``), so the call is skipped for such a value.
_PASS_THROUGH: tuple[tuple[GraphQLScalarType, type], ...] = (
    (GraphQLString, str), (GraphQLID, str), (GraphQLBoolean, bool))
# Values of the ``[gateway] executor`` setting.
EXECUTORS = ("compiled", "graphql-core")
_MAX_DOCUMENTS = 512
_MAX_SHAPES_PER_DOCUMENT = 64


class Unsupported(Exception):
    """The operation needs a feature the compiled executor does not implement."""


@dataclass(eq=False)
class _Type:
    """One layer of a field's output type: non-null, list, leaf or object."""

    graphql_type: GraphQLOutputType
    inner: _Type | None = None
    fields: list[_Field] = field(default_factory=list)
    pass_through: type | None = None


@dataclass(eq=False)
class _Field:
    """A response key of one selection set, with everything its execution needs."""

    key: str
    kind: int
    nodes: list[FieldNode]
    parent_name: str
    field_name: str
    output: _Type
    nullable: bool
    typename: str = ""
    pass_through: type | None = None
    # The leaf type's output coercion, for the fast path of a leaf.
    coerce: Callable[[Any], Any] | None = None
    # The object fields of an object or of a list's items, for the fast paths.
    fields: list[_Field] = field(default_factory=list)
    item_type: _Type | None = None
    item_non_null: bool = False


@dataclass(eq=False)
class Shape:
    """The compiled root selection set of one operation."""

    fields: list[_Field]


@dataclass
class CompiledResult:
    """The ``data`` and ``errors`` of one execution, as ``ExecutionResult`` has them."""

    data: dict[str, Any] | None
    errors: list[GraphQLError]


def execute_shape(shape: Shape, root: dict[str, Any]) -> CompiledResult:
    """Execute ``shape`` over ``root``, a tree of dicts keyed by response key."""
    run = _Run()
    try:
        data: dict[str, Any] | None = run.execute_fields(shape.fields, root, None)
    except GraphQLError as error:  # a non-null root field was null
        run.errors.append(error)
        data = None
    return CompiledResult(data, run.errors)


@dataclass
class _DocumentShapes:
    document: DocumentNode
    condition_variables: tuple[str, ...]
    shapes: dict[tuple[str | None, tuple[Any, ...]], Shape | str] = field(default_factory=dict)


class ShapeCache:
    """Compiled shapes per document, operation and ``@include``/``@skip`` variable values.

    A document stays cached while it is among the last 512 documents used,
    and keeps at most 64 shapes (one per combination of condition values).
    An operation the compiler does not support is cached as its reason.
    """

    def __init__(self, schema: GraphQLSchema) -> None:
        self._schema = schema
        self._documents: OrderedDict[int, _DocumentShapes] = OrderedDict()
        # Requests for which ``shape`` returned None.
        self.fallbacks = 0

    def __len__(self) -> int:
        """Return the number of documents with cached shapes."""
        return len(self._documents)

    def shape(self, document: DocumentNode, operation_name: str | None,
              variables: dict[str, Any] | None,
              coerced: dict[str, Any]) -> Shape | None:
        """Return the shape for this request, or None when graphql-core must execute it.

        ``variables`` are the request's raw values; ``coerced`` the values
        after coercion, which decide ``@include``/``@skip``.
        """
        entry = self._documents.get(id(document))
        if entry is None or entry.document is not document:
            entry = _DocumentShapes(document, _condition_variables(document))
            self._documents[id(document)] = entry
            if len(self._documents) > _MAX_DOCUMENTS:
                self._documents.popitem(last=False)
        else:
            self._documents.move_to_end(id(document))
        key = (operation_name, tuple(coerced.get(name) for name in entry.condition_variables))
        shape = entry.shapes.get(key)
        if shape is None:
            try:
                shape = compile_operation(self._schema, document, operation_name, variables)
            except Unsupported as exc:
                log.debug("operation %r is executed by graphql-core: %s", operation_name, exc)
                shape = str(exc)
            if len(entry.shapes) >= _MAX_SHAPES_PER_DOCUMENT:
                entry.shapes.clear()
            entry.shapes[key] = shape
        if isinstance(shape, str):
            self.fallbacks += 1
            return None
        return shape


def _condition_variables(document: DocumentNode) -> tuple[str, ...]:
    """Return the names of the variables that ``@include`` and ``@skip`` read."""
    names: dict[str, None] = {}

    class Conditions(Visitor):
        def enter_directive(self, node: DirectiveNode, *_: Any) -> None:
            if node.name.value not in ("include", "skip"):
                return
            for argument in node.arguments or ():
                if isinstance(argument.value, VariableNode):
                    names[argument.value.name.value] = None

    visit(document, Conditions())
    return tuple(names)


def compile_operation(schema: GraphQLSchema, document: DocumentNode,
                      operation_name: str | None, variables: dict[str, Any] | None) -> Shape:
    """Compile the operation for these variables; raise Unsupported if it cannot be.

    Fields are collected by graphql-core's own ``collect_fields``, so
    grouping, fragment type conditions and directives match its executor.
    """
    executor = Executor.build(schema, document, raw_variable_values=variables,
                              operation_name=operation_name)
    if isinstance(executor, list):
        raise Unsupported(f"the request has errors: {executor[0].message}")
    if not executor.error_propagation:
        raise Unsupported("error propagation is disabled")
    if executor.operation.operation.value != "query":
        raise Unsupported(f"{executor.operation.operation.value} operations")
    root_type = schema.query_type
    assert root_type is not None  # validation passed, so the schema has a query type
    collected = collect_fields(schema, executor.fragments, executor.variable_values, root_type,
                               executor.operation)
    compiler = _Compiler(schema, executor)
    return Shape(compiler.fields(root_type, collected.grouped_field_set))


class _Compiler:
    def __init__(self, schema: GraphQLSchema, executor: Executor[Any]) -> None:
        self._schema = schema
        self._executor = executor

    def fields(self, parent: GraphQLObjectType,
               grouped: dict[str, list[FieldDetails]]) -> list[_Field]:
        compiled = []
        for key, details in grouped.items():
            nodes = [detail.node for detail in details]
            name = nodes[0].name.value
            definition = self._schema.get_field(parent, name)
            if definition is None:  # graphql-core leaves such a key out as well
                continue
            if definition is TypeNameMetaFieldDef:
                compiled.append(_Field(key, _TYPENAME, nodes, parent.name, name,
                                       _Type(definition.type), False, typename=parent.name))
                continue
            if definition.resolve is not None:
                raise Unsupported(f"{parent.name}.{name} has its own resolver")
            compiled.append(self._field(key, nodes, details, parent, name, definition.type))
        return compiled

    def _field(self, key: str, nodes: list[FieldNode], details: list[FieldDetails],
               parent: GraphQLObjectType, name: str, graphql_type: GraphQLOutputType) -> _Field:
        layers = self._type(graphql_type, details)
        nullable = not is_non_null_type(graphql_type)
        compiled = _Field(key, _OTHER, nodes, parent.name, name, layers, nullable)
        named = layers.inner if not nullable else layers
        assert named is not None
        if is_leaf_type(named.graphql_type):
            compiled.kind = _LEAF
            compiled.pass_through = named.pass_through
            compiled.coerce = named.graphql_type.coerce_output_value
        elif is_object_type(named.graphql_type):
            compiled.kind = _OBJECT
            compiled.fields = named.fields
        elif is_list_type(named.graphql_type):
            item = named.inner
            assert item is not None
            compiled.item_type = item
            compiled.item_non_null = is_non_null_type(item.graphql_type)
            item_named = item.inner if compiled.item_non_null else item
            assert item_named is not None
            if is_object_type(item_named.graphql_type):
                compiled.kind = _LIST_OF_OBJECTS
                compiled.fields = item_named.fields
        return compiled

    def _type(self, graphql_type: GraphQLOutputType, details: list[FieldDetails]) -> _Type:
        if isinstance(graphql_type, GraphQLNonNull | GraphQLList):
            return _Type(graphql_type, self._type(graphql_type.of_type, details))
        if is_leaf_type(graphql_type):
            unchanged = next((python_type for scalar, python_type in _PASS_THROUGH
                              if scalar is graphql_type), None)
            return _Type(graphql_type, pass_through=unchanged)
        if not isinstance(graphql_type, GraphQLObjectType):
            raise Unsupported(f"abstract type {graphql_type}")
        if graphql_type.is_type_of is not None:
            raise Unsupported(f"{graphql_type.name} has is_type_of")
        executor = self._executor
        collected = collect_subfields(self._schema, executor.fragments, executor.variable_values,
                                      executor.operation, graphql_type, details)
        return _Type(graphql_type, fields=self.fields(graphql_type, collected.grouped_field_set))


# A response path as a linked list of (parent, key) tuples, cheaper to build
# than graphql-core's Path; it becomes a list only for an error.
_Path = tuple[Any, str | int] | None


def _path_list(path: _Path) -> list[str | int]:
    keys: list[str | int] = []
    while path is not None:
        path, key = path
        keys.append(key)
    keys.reverse()
    return keys


class _Run:
    """The state of one execution: the errors in the order they occur."""

    def __init__(self) -> None:
        self.errors: list[GraphQLError] = []

    def execute_fields(self, fields: list[_Field], source: Any, path: _Path) -> dict[str, Any]:
        """Return the data of one object, following ``Executor.execute_fields``."""
        data: dict[str, Any] = {}
        is_dict = isinstance(source, dict)
        for compiled in fields:
            key = compiled.key
            kind = compiled.kind
            if kind == _TYPENAME:
                data[key] = compiled.typename
                continue
            value = source.get(key) if is_dict else None
            if value is None and compiled.nullable:
                data[key] = None
            elif kind == _LEAF and type(value) is compiled.pass_through:
                data[key] = value
            elif kind == _LEAF and value is not None and not isinstance(value, Exception):
                data[key] = self._leaf(compiled, value, (path, key))
            elif kind == _OBJECT and type(value) is dict:
                data[key] = self._object(compiled, value, (path, key))
            elif kind == _LIST_OF_OBJECTS and type(value) is list:
                data[key] = self._list_of_objects(compiled, value, (path, key))
            else:
                data[key] = self._field(compiled, value, (path, key))
        return data

    def _leaf(self, compiled: _Field, value: Any, path: _Path) -> Any:
        """Coerce a leaf value; on any failure let ``_field`` raise and locate the error."""
        assert compiled.coerce is not None
        try:
            coerced = compiled.coerce(value)
        except Exception:  # coercion is repeated below, where the error is located
            coerced = None
        if coerced is None or coerced is Undefined:
            return self._field(compiled, value, path)
        return coerced

    def _object(self, compiled: _Field, value: dict[str, Any], path: _Path) -> Any:
        try:
            return self.execute_fields(compiled.fields, value, path)
        except Exception as raw:
            return self._fail(compiled, raw, path, not compiled.nullable)

    def _list_of_objects(self, compiled: _Field, value: list[Any], path: _Path) -> Any:
        item_type = compiled.item_type
        assert item_type is not None
        items: list[Any] = []
        try:
            for index, item in enumerate(value):
                item_path = (path, index)
                try:
                    if type(item) is dict:
                        completed = self.execute_fields(compiled.fields, item, item_path)
                    else:
                        completed = self._complete(item_type, compiled, item, item_path)
                except Exception as raw:
                    completed = self._fail(compiled, raw, item_path, compiled.item_non_null)
                items.append(completed)
        except Exception as raw:
            return self._fail(compiled, raw, path, not compiled.nullable)
        return items

    def _field(self, compiled: _Field, value: Any, path: _Path) -> Any:
        try:
            return self._complete(compiled.output, compiled, value, path)
        except Exception as raw:
            return self._fail(compiled, raw, path, not compiled.nullable)

    def _fail(self, compiled: _Field, raw: Exception, path: _Path, non_null: bool) -> Any:
        """Locate an error as ``Executor.handle_field_error`` does: raise it or record it.

        Like graphql-core, the callers catch every exception, so that an
        unexpected value fails its own field instead of the whole request.
        """
        error = located_error(raw, compiled.nodes, _path_list(path))
        if non_null:
            raise error
        self.errors.append(error)
        return None

    def _complete(self, layer: _Type, compiled: _Field, value: Any, path: _Path) -> Any:
        """Complete a value of any type, following ``Executor.complete_value``."""
        if isinstance(value, Exception):
            raise value
        graphql_type = layer.graphql_type
        if isinstance(graphql_type, GraphQLNonNull):
            assert layer.inner is not None
            completed = self._complete(layer.inner, compiled, value, path)
            if completed is None:
                raise TypeError("Cannot return null for non-nullable field "
                                f"{compiled.parent_name}.{compiled.field_name}.")
            return completed
        if value is None or value is Undefined:
            return None
        if isinstance(graphql_type, GraphQLList):
            assert layer.inner is not None
            return self._complete_list(layer.inner, compiled, value, path)
        if isinstance(graphql_type, GraphQLObjectType):
            return self.execute_fields(layer.fields, value, path)
        if type(value) is layer.pass_through:
            return value
        coerced = graphql_type.coerce_output_value(value)  # type: ignore[union-attr]
        if coerced is Undefined or coerced is None:
            raise TypeError(f"Expected `{inspect(graphql_type)}.coerce_output_value("
                            f"{inspect(value)})` to return non-nullable value, returned:"
                            f" {inspect(coerced)}")
        return coerced

    def _complete_list(self, item_type: _Type, compiled: _Field, value: Any,
                       path: _Path) -> list[Any]:
        if not is_iterable(value):
            raise GraphQLError("Expected Iterable, but did not find one for field"
                               f" '{compiled.parent_name}.{compiled.field_name}'.")
        items: list[Any] = []
        item_non_null = isinstance(item_type.graphql_type, GraphQLNonNull)
        for index, item in enumerate(value):
            item_path = (path, index)
            try:
                completed = self._complete(item_type, compiled, item, item_path)
            except Exception as raw:
                completed = self._fail(compiled, raw, item_path, item_non_null)
            items.append(completed)
        return items
