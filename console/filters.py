"""The filter line: what an operator types, turned into the job listing's query.

Words (see docs/console.md for the whole syntax)::

    state:running,pending   user:jellyfin   worker:node1   bin:ffmpeg
    is:active   is:failed   is:mine         "Big Buck"     bunny
    -bin:ffprobe   !state:completed   -sample            (a leading - or ! negates)

Everything goes to the coordinator (so the page and its total cover the whole
history): ``key:value`` words as filters, other words as a search of the jobs' file
names, ids, requesters and workers. Workers and users are matched on the console
side: their rows against the plain words. A state may be given by its beginning
(``state:run`` is ``running``), so a filter half typed already works; a word that
cannot mean anything yet (``state:xyz``) is left out and named in ``problems``, and
never reaches the coordinator.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field

STATES = ("pending", "assigned", "running", "canceling", "completed", "failed", "canceled")
ACTIVE = ("pending", "assigned", "running", "canceling")
KEYS = {
    "state": "state",
    "user": "requester",
    "requester": "requester",
    "worker": "worker",
    "bin": "binary",
    "binary": "binary",
}
VIEWS = ("active", "failed", "mine")


def words_of(text: str) -> list[str]:
    """Split like a shell (quotes keep a file name with spaces together); a quote still
    open while typing is taken as closed at the end."""
    for tail in ("", '"', "'"):
        try:
            return shlex.split(text + tail)
        except ValueError:
            continue
    return text.split()


@dataclass
class JobFilter:
    """A parsed filter line; ``params()`` is the query for ``GET /jobs``."""

    include: dict[str, list[str]] = field(default_factory=dict)
    exclude: dict[str, list[str]] = field(default_factory=dict)
    failed: bool | None = None
    search: list[str] = field(default_factory=list)
    not_search: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    text: str = ""

    @classmethod
    def parse(cls, text: str, me: str | None = None) -> JobFilter:
        result = cls(text=text)
        for word in words_of(text):
            negated = word[:1] in ("-", "!") and len(word) > 1
            body = word[1:] if negated else word
            key, sep, value = body.partition(":")
            key = key.lower()
            if sep and key == "is":
                result._view(value.lower(), negated, me)
            elif sep and key in KEYS:
                result._term(KEYS[key], value, negated, me)
            elif negated:
                result.not_search.append(body)
            else:
                result.search.append(word)
        return result

    def _add(self, key: str, values: list[str], negated: bool) -> None:
        target = self.exclude if negated else self.include
        merged = target.setdefault(key, [])
        merged.extend(v for v in values if v not in merged)

    def _term(self, key: str, value: str, negated: bool, me: str | None) -> None:
        values = [v for v in value.split(",") if v]
        if not values:
            return  # "state:" while typing: nothing to filter by yet
        if key == "state":
            states: list[str] = []
            for v in values:
                found = [s for s in STATES if s.startswith(v.lower())]
                if v.lower() == "active":
                    found = list(ACTIVE)
                if not found:
                    self.problems.append(f"no state starts with {v!r}")
                states += [s for s in found if s not in states]
            if not states:
                return
            values = states
        if key == "requester" and me is not None:
            values = [me if v == "me" else v for v in values]
        self._add(key, values, negated)

    def _view(self, view: str, negated: bool, me: str | None) -> None:
        if not view:
            return
        if view == "active":
            self._add("state", list(ACTIVE), negated)
        elif view == "failed":
            self.failed = not negated
        elif view == "mine" and me is not None:
            self._add("requester", [me], negated)
        else:
            self.problems.append(f"no view is:{view} (there are {', '.join(VIEWS)})")

    def params(self) -> list[tuple[str, str]]:
        """The query arguments of ``GET /jobs`` for this filter."""
        pairs = [(key, ",".join(values)) for key, values in sorted(self.include.items())]
        pairs += [(f"not_{key}", ",".join(values)) for key, values in sorted(self.exclude.items())]
        if self.failed is not None:
            pairs.append(("failed", "true" if self.failed else "false"))
        pairs += [("search", word) for word in self.search]
        pairs += [("not_search", word) for word in self.not_search]
        return pairs

    def matches(self, cells: list[str]) -> bool:
        """Whether a worker's or user's row matches the plain words of the line (its
        ``key:value`` words are about jobs)."""
        text = " ".join(cells).lower()
        return all(w.lower() in text for w in self.search) and not any(
            w.lower() in text for w in self.not_search
        )


def toggle(text: str, word: str) -> str:
    """The filter line with ``word`` added, or removed if it is there (a quick view key)."""
    words = words_of(text)
    if word in words:
        words = [w for w in words if w != word]
    else:
        # A quick view replaces a word of the same key: "worker:a" then "worker:b".
        key = word.lstrip("-!").partition(":")[0] + ":"
        if key != "is:":
            words = [w for w in words if not w.lstrip("-!").startswith(key)]
        words.append(word)
    return " ".join(shlex.quote(w) if " " in w else w for w in words)
