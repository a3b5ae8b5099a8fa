"""Which jobs a listing shows: the filters of ``GET /jobs`` as SQL conditions.

Every filter has a negated form (``not_state``, ``not_requester``...), so an operator
can ask for "everything but the ffprobes" or "not completed". ``search`` words are
matched, case-insensitively, against the job's file names, id, requester, worker and
binary; every word must match, and a ``not_search`` word must match none of them. A
``search`` argument may be given several times, each one word or phrase
(``search=Big Buck Bunny``: a file name with spaces).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import ColumnElement, and_, func, not_, or_

from coordinator.errors import BadRequest
from coordinator.models import Job
from dffmpeg.wire import JobState

STATES = {s.value for s in JobState}
MAX_WORDS = 16
MAX_WORD = 255
SEARCHED = (Job.input_name, Job.output_name, Job.id, Job.requester, Job.worker_id, Job.binary)


def _values(args: Mapping[str, str], name: str) -> list[str]:
    return [v for v in args.get(name, "").split(",") if v]


def _states(args: Mapping[str, str], name: str) -> list[str]:
    states = _values(args, name)
    unknown = set(states) - STATES
    if unknown:
        raise BadRequest(f"unknown state {', '.join(sorted(unknown))}")
    return states


def _words(args: Any, name: str) -> list[str]:
    words = [w.strip() for w in args.getlist(name) if w.strip()]
    if len(words) > MAX_WORDS or any(len(w) > MAX_WORD for w in words):
        raise BadRequest(
            f"query argument {name!r}: at most {MAX_WORDS} words of {MAX_WORD} characters"
        )
    return words


def _matches(word: str) -> ColumnElement[bool]:
    # coalesce: a job with no output (ffprobe) must still be found, or excluded, by the
    # other columns; a NULL would make the negated match unknown, and drop the row.
    return or_(*(func.coalesce(col, "").icontains(word, autoescape=True) for col in SEARCHED))


def failed() -> ColumnElement[bool]:
    """A job that did not succeed: failed, or ran to the end with a non-zero exit code."""
    return or_(
        Job.state == JobState.FAILED.value,
        and_(Job.state == JobState.COMPLETED.value, func.coalesce(Job.exit_code, 0) != 0),
    )


def conditions(args: Any, admin: bool, caller: str) -> list[Any]:
    """The WHERE conditions of a listing (a client only ever sees its own jobs).

    ``args``: the request's query arguments (a werkzeug ``MultiDict``)."""
    where: list[Any] = []
    if not admin:
        where.append(Job.requester == caller)
    pairs: list[tuple[str, Any]] = [("binary", Job.binary), ("worker", Job.worker_id)]
    if admin:  # a client's requester filters are ignored: it sees its own jobs, always
        pairs.append(("requester", Job.requester))
    for name, col in pairs:
        wanted = _values(args, name)
        if wanted:
            where.append(col.in_(wanted))
        unwanted = _values(args, f"not_{name}")
        if unwanted:
            # A job with no worker yet is "not on node1": NULL must count as different.
            where.append(or_(col.is_(None), col.not_in(unwanted)))
    states = _states(args, "state")
    if states:
        where.append(Job.state.in_(states))
    not_states = _states(args, "not_state")
    if not_states:
        where.append(Job.state.not_in(not_states))
    outcome = args.get("failed")
    if outcome is not None:
        if outcome not in ("true", "false", "1", "0"):
            raise BadRequest("query argument 'failed' must be true or false")
        where.append(failed() if outcome in ("true", "1") else not_(failed()))
    for word in _words(args, "search"):
        where.append(_matches(word))
    for word in _words(args, "not_search"):
        where.append(not_(_matches(word)))
    return where
