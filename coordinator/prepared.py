"""The hot Core statements, compiled once per database and run through the driver.

A statement run through SQLAlchemy's ``Connection.execute`` costs about ten times what
the driver spends on it: a cache-key lookup, an execution context, parameter
processing and a result object, each built anew (23 µs against 2.5 µs for a read by
primary key on SQLite; a trivial job runs about forty such statements). ``core``
(coordinator/db.py) hands the statements every job runs many times to ``execute``
here, which keeps what SQLAlchemy computes once (the SQL text for this dialect, the
order of the parameters, their type processors and the result columns' ones) and runs
the statement on the session's own connection, in its transaction: the same SQL, the
same values, the same rows.

What it cannot reproduce exactly it leaves to SQLAlchemy (``UNSUPPORTED``): a statement
that needs Python-side column defaults, returns generated values, takes a list of
values for an ``IN`` from the caller, or whose bind names must be escaped, or
parameters without one the statement requires. A list of parameters (an insert of
many rows) is the driver's ``executemany`` on SQLite. The
engine's statement events fire as for SQLAlchemy's own statements (the statement log,
coordinator/statement_log.py, sees every statement there is). A driver error goes
through SQLAlchemy's own handling, so it is raised as the same exception, the engine's
``handle_error`` listeners see it, and a lost connection is invalidated.
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Callable, Generator, Iterator, Mapping
from typing import Any

from sqlalchemy import Connection, Delete, Insert, Select, Update
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import MultipleResultsFound, NoResultFound
from sqlalchemy.sql.elements import BindParameter

# What ``Prepared.run`` returns when SQLAlchemy must run the statement after all.
UNSUPPORTED: Any = object()

Processor = Callable[[Any], Any] | None


class Rows:
    """The part of SQLAlchemy's result API the callers of ``core`` use, over rows read
    whole (every hot read is by key or limited)."""

    __slots__ = ("_rows", "rowcount")

    def __init__(self, rows: list[Any], rowcount: int) -> None:
        self._rows = rows
        self.rowcount = rowcount

    def __iter__(self) -> Iterator[Any]:
        return iter(self._rows)

    def all(self) -> list[Any]:
        return list(self._rows)

    def first(self) -> Any:
        return self._rows[0] if self._rows else None

    def one_or_none(self) -> Any:
        if len(self._rows) > 1:
            raise MultipleResultsFound("Multiple rows were found when one or none was required")
        return self.first()

    def one(self) -> Any:
        if not self._rows:
            raise NoResultFound("No row was found when one was required")
        return self.one_or_none()

    def scalar_one(self) -> Any:
        return self.one()[0]

    def scalar_one_or_none(self) -> Any:
        row = self.one_or_none()
        return None if row is None else row[0]


class Prepared:
    """One statement compiled for one dialect and one set of parameter names."""

    def __init__(self, statement: Any, dialect: Dialect, keys: frozenset[str]) -> None:
        self.statement = statement
        self.supported = False
        dml = isinstance(statement, Insert | Update | Delete)
        if not (dml or isinstance(statement, Select)):
            return
        # An INSERT's or UPDATE's columns are the parameters given, as SQLAlchemy
        # compiles them at execution.
        compiled = statement.compile(dialect=dialect, column_keys=sorted(keys) if dml else None)
        if (
            compiled.insert_prefetch
            or compiled.update_prefetch
            or getattr(compiled, "effective_returning", None)
            or compiled.escaped_bind_names
        ):
            return
        binds: dict[str, BindParameter[Any]] = {n: b for b, n in compiled.bind_names.items()}
        if any(b.expanding and (n in keys or b.required) for n, b in binds.items()):
            return  # an IN list from the caller: its length changes the SQL text
        if any(b.callable is not None for b in binds.values()):
            return  # a value computed at each execution
        required = frozenset(n for n, b in binds.items() if b.required)
        if not required <= keys:
            return  # SQLAlchemy raises its own error for the missing value
        # The statement's own IN lists are constants: expanded once, into one bound
        # parameter per value, as SQLAlchemy expands them on every execution.
        expanded = compiled.construct_expanded_state(dict.fromkeys(keys))
        self.sql = expanded.statement
        names = expanded.positiontup if compiled.positional else list(expanded.parameters)
        assert names is not None
        self.positional = compiled.positional
        self.names = tuple(names)
        # Per parameter: the caller's (its name and processor) or a constant (processed).
        self.slots: list[tuple[str, bool, Processor, Any]] = []
        for name in self.names:
            # An expanded value (``state_1_2``) has the type of its list (``state_1``).
            bind = binds[name] if name in binds else binds[name.rsplit("_", 1)[0]]
            processor = bind.type._cached_bind_processor(dialect)
            if name in keys:
                self.slots.append((name, True, processor, None))
            else:
                value = expanded.parameters[name]
                self.slots.append((name, False, None, processor(value) if processor else value))
        self.row: Any = None
        if isinstance(statement, Select):
            columns = list(statement.selected_columns)
            self.row = namedtuple("Row", [c.key for c in columns], rename=True)  # type: ignore[misc]
            self.results: tuple[Processor, ...] = tuple(
                c.type._cached_result_processor(dialect, None) for c in columns
            )
            self.processed = any(self.results)
        self.supported = True

    def run(self, connection: Connection, params: Mapping[str, Any]) -> Any:
        args = self._args(params)
        cursor = self._execute(connection, args)
        try:
            if self.row is None:
                return Rows([], cursor.rowcount)
            rows = self._rows(cursor.fetchall())
            return Rows(rows, len(rows))
        except connection.dialect.loaded_dbapi.Error as exc:
            connection._handle_dbapi_exception(exc, self.sql, args, cursor, None)
        finally:
            cursor.close()

    def run_many(self, connection: Connection, rows: list[Mapping[str, Any]]) -> Any:
        """An INSERT or UPDATE once per row of parameters, in one driver call."""
        cursor = self._execute(connection, [self._args(row) for row in rows], many=True)
        try:
            return Rows([], cursor.rowcount)
        finally:
            cursor.close()

    def iterate(
        self, connection: Connection, params: Mapping[str, Any], batch: int
    ) -> Generator[Any, None, None]:
        """The rows of a read, fetched ``batch`` at a time (SQLite's cursor steps
        through them as they are fetched: memory holds one batch)."""
        args = self._args(params)
        cursor = self._execute(connection, args)
        try:
            while True:
                try:
                    raw = cursor.fetchmany(batch)
                except connection.dialect.loaded_dbapi.Error as exc:
                    connection._handle_dbapi_exception(exc, self.sql, args, cursor, None)
                if not raw:
                    return
                yield from self._rows(raw)
        finally:
            cursor.close()

    def _execute(self, connection: Connection, args: Any, many: bool = False) -> Any:
        """A cursor that ran the statement with the driver's ``args`` (a list of them
        with ``many``); the caller closes it."""
        dbapi_connection: Any = connection.connection.driver_connection
        cursor = dbapi_connection.cursor()
        # The engine's statement listeners (the statement log) see these statements as
        # they see SQLAlchemy's own.
        dispatch = connection.dispatch
        try:
            if dispatch.before_cursor_execute:
                dispatch.before_cursor_execute(connection, cursor, self.sql, args, None, many)
            if many:
                cursor.executemany(self.sql, args)
            else:
                cursor.execute(self.sql, args)
            if dispatch.after_cursor_execute:
                dispatch.after_cursor_execute(connection, cursor, self.sql, args, None, many)
        except connection.dialect.loaded_dbapi.Error as exc:
            cursor.close()
            connection._handle_dbapi_exception(exc, self.sql, args, cursor, None)
        except BaseException:
            cursor.close()
            raise
        return cursor

    def _args(self, params: Mapping[str, Any]) -> Any:
        """The driver's parameters: the caller's processed, the statement's own."""
        values = [
            (processor(params[name]) if processor else params[name]) if given else constant
            for name, given, processor, constant in self.slots
        ]
        return values if self.positional else dict(zip(self.names, values, strict=True))

    def _rows(self, raw: list[Any]) -> list[Any]:
        make = self.row._make
        if not self.processed:
            return [make(r) for r in raw]
        results = self.results
        return [make([p(v) if p else v for p, v in zip(results, r, strict=True)]) for r in raw]


def _prepared(connection: Connection, statement: Any, params: Mapping[str, Any]) -> Any:
    """The statement's ``Prepared`` for this dialect and these parameter names, or None."""
    dialect = connection.dialect
    cache: dict[tuple[int, frozenset[str]], Prepared] | None = dialect.__dict__.get(
        "_dffmpeg_prepared"
    )
    if cache is None:
        cache = dialect.__dict__.setdefault("_dffmpeg_prepared", {})
    keys = frozenset(params)
    prepared = cache.get((id(statement), keys))
    if prepared is None or prepared.statement is not statement:
        prepared = Prepared(statement, dialect, keys)
        cache[(id(statement), keys)] = prepared
    return prepared if prepared.supported else None


def execute(connection: Connection, statement: Any, params: Any) -> Any:
    """``statement`` run through the driver on ``connection``, or ``UNSUPPORTED``.
    ``params``: a mapping, or a list of mappings with the same keys (an INSERT or
    UPDATE run once for each, as the driver's ``executemany``)."""
    if params is None:
        params = {}
    if isinstance(params, list):
        # SQLite's executemany steps one prepared statement; on the server databases
        # SQLAlchemy sends many rows as one multi-row INSERT, one round trip.
        if not params or isinstance(statement, Select) or connection.dialect.name != "sqlite":
            return UNSUPPORTED
        keys = params[0].keys()
        if not all(isinstance(p, Mapping) and p.keys() == keys for p in params):
            return UNSUPPORTED
        prepared = _prepared(connection, statement, params[0])
        return UNSUPPORTED if prepared is None else prepared.run_many(connection, params)
    if not isinstance(params, Mapping):
        return UNSUPPORTED
    prepared = _prepared(connection, statement, params)
    if prepared is None:
        return UNSUPPORTED
    return prepared.run(connection, params)


def iterate(
    connection: Connection, statement: Any, params: Mapping[str, Any], batch: int
) -> Generator[Any, None, None] | None:
    """The rows of a read that may be long, through the driver: on SQLite only, whose
    cursor fetches rows as they are asked for. The server databases' drivers would
    hold the whole result in memory (SQLAlchemy's ``yield_per`` uses server-side
    cursors there), so None: SQLAlchemy reads it."""
    if connection.dialect.name != "sqlite" or not isinstance(statement, Select):
        return None
    prepared = _prepared(connection, statement, params)
    if prepared is None:
        return None
    return prepared.iterate(connection, params, batch)
