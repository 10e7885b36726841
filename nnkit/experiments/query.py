"""The ``--where`` language of the experiment store, compiled to parameterised SQL.

    updater.lr<0.01 and test_error<=0.05
    (owner = "ann" or tag = baseline) and not status = failed

A comparison is ``KEY OP VALUE`` with OP one of ``< <= > >= = == !=``; comparisons combine with
``and``, ``or``, ``not`` and parentheses. KEY is a record column (``name``, ``owner``,
``status``, ``host``, ``step``, ``config_hash``, ``git_commit``, ``nnkit_version``), ``tag``, a
metric name (``test_error``: its latest value, as in MLflow's search) or a flattened job-config field (``updater.lr``,
``model.layer.1.dense.output_dim``); a metric and a config field of the same name both match.
VALUE is a number, a quoted string or a bare word. Keys and values become SQL parameters, never
SQL text: the only text pasted is the operators and column names of the tables above.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

#: Record columns a ``where`` key (or a sort) may name directly.
COLUMNS = ("name", "owner", "status", "host", "step", "config_hash", "git_commit", "nnkit_version")
OPERATORS = {"<": "<", "<=": "<=", ">": ">", ">=": ">=", "=": "=", "==": "=", "!=": "!="}

_TOKEN = re.compile(r"""\s*(?:
    (?P<op><=|>=|==|!=|<|>|=)
  | (?P<paren>[()])
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
  | (?P<word>[A-Za-z0-9_.\-+/:\[\]]+)
)""", re.X)


@dataclass(frozen=True)
class _Token:
    kind: str
    text: str
    at: int


def _tokens(text: str) -> list[_Token]:
    tokens, position = [], 0
    while position < len(text):
        if text[position:].strip() == "":
            break
        match = _TOKEN.match(text, position)
        if match is None or match.end() == position:
            raise ValueError(f"where: cannot read {text[position:].strip()[:20]!r} at character {position + 1} "
                             f"of {text!r}")
        kind = match.lastgroup or "word"
        tokens.append(_Token(kind, match.group(kind), match.start(kind)))
        position = match.end()
    return tokens


def _value(token: _Token) -> Any:
    if token.kind == "string":
        return re.sub(r"\\(.)", r"\1", token.text[1:-1])
    try:
        return float(token.text)
    except ValueError:
        return token.text


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokens(text)
        self.i = 0

    def fail(self, message: str) -> ValueError:
        where = (f"at {self.tokens[self.i].text!r} (character {self.tokens[self.i].at + 1})"
                 if self.i < len(self.tokens) else "at the end")
        return ValueError(f"where {self.text!r}: {message} {where}")

    def peek_word(self, *words: str) -> bool:
        return (self.i < len(self.tokens) and self.tokens[self.i].kind == "word"
                and self.tokens[self.i].text.lower() in words)

    def parse(self) -> tuple[str, list[Any]]:
        if not self.tokens:
            raise ValueError("where: the expression is empty")
        sql, params = self.disjunction()
        if self.i != len(self.tokens):
            raise self.fail("expected 'and', 'or' or the end")
        return sql, params

    def disjunction(self) -> tuple[str, list[Any]]:
        return self._chain("or", self.conjunction)

    def conjunction(self) -> tuple[str, list[Any]]:
        return self._chain("and", self.negation)

    def _chain(self, word: str, part: Any) -> tuple[str, list[Any]]:
        sql, params = part()
        while self.peek_word(word):
            self.i += 1
            more_sql, more = part()
            sql, params = f"({sql} {word.upper()} {more_sql})", params + more
        return sql, params

    def negation(self) -> tuple[str, list[Any]]:
        if self.peek_word("not"):
            self.i += 1
            sql, params = self.negation()
            return f"(NOT {sql})", params
        if self.i < len(self.tokens) and self.tokens[self.i].text == "(":
            self.i += 1
            sql, params = self.disjunction()
            if self.i >= len(self.tokens) or self.tokens[self.i].text != ")":
                raise self.fail("expected ')'")
            self.i += 1
            return sql, params
        return self.comparison()

    def comparison(self) -> tuple[str, list[Any]]:
        if self.i >= len(self.tokens) or self.tokens[self.i].kind != "word" or self.peek_word("and", "or", "not"):
            raise self.fail("expected a key (a config field, metric or column)")
        key = self.tokens[self.i].text
        self.i += 1
        if self.i >= len(self.tokens) or self.tokens[self.i].kind != "op":
            raise self.fail(f"expected an operator (< <= > >= = !=) after {key!r}")
        op = OPERATORS[self.tokens[self.i].text]
        self.i += 1
        if self.i >= len(self.tokens) or self.tokens[self.i].kind not in ("word", "string"):
            raise self.fail(f"expected a value after {key} {op}")
        value = _value(self.tokens[self.i])
        self.i += 1
        return compile_comparison(key, op, value)


def compile_comparison(key: str, op: str, value: Any) -> tuple[str, list[Any]]:
    """One ``KEY OP VALUE`` as SQL over the ``runs`` table (aliased ``runs``) and its parameters."""
    if key in COLUMNS:
        if key == "step" and not isinstance(value, float):
            raise ValueError(f"where: step {op} {value!r}: step is a number")
        return f"(runs.{key} {op} ?)", [value]
    if key == "tag":
        if op not in ("=", "!="):
            raise ValueError(f"where: tag {op} {value!r}: a tag compares with = or != only")
        exists = "EXISTS (SELECT 1 FROM tags t WHERE t.run_id = runs.id AND t.tag = ?)"
        return (exists if op == "=" else f"NOT {exists}"), [str(value)]
    if isinstance(value, float):
        # A metric, or a config field holding a number.
        return (f"(EXISTS (SELECT 1 FROM metrics m WHERE m.run_id = runs.id AND m.key = ? AND m.value {op} ?)"
                f" OR EXISTS (SELECT 1 FROM params p WHERE p.run_id = runs.id AND p.key = ? AND p.num {op} ?))",
                [key, value, key, value])
    return (f"EXISTS (SELECT 1 FROM params p WHERE p.run_id = runs.id AND p.key = ? AND p.value {op} ?)",
            [key, value])


def compile_where(text: str) -> tuple[str, list[Any]]:
    """The SQL condition and parameters of a ``where`` expression; ``ValueError`` names the bad part."""
    return _Parser(text).parse()
