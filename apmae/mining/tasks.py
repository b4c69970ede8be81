"""Completion tasks: each picks candidate hole spans in a Java file.

A task is either a tree-sitter query (every capture whose name does not start
with ``_`` is a candidate span) or a function of a :class:`FileContext`
returning ``(start_byte, end_byte)`` spans. Built-in tasks follow the paper:
tree-sitter node kinds (identifiers, literals, method names), token patterns
(brackets, end of line, keywords, operators) matched on real tokens of the
syntax tree -- never inside strings or comments -- a random 3-10 token span,
and ``noise`` (random token ids, no source).

Add a task without editing the package::

    from apmae.mining.tasks import register_task
    register_task("lambda_params", "(lambda_expression parameters: (identifier) @p)")

Span offsets are UTF-8 byte offsets into the file, as tree-sitter reports them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import tree_sitter_java
from tree_sitter import Language, Query

from apmae.mining.offsets import char_to_byte_table, code_points, is_whitespace

Span = tuple[int, int]  # (start_byte, end_byte), end exclusive


@dataclass
class FileContext:
    """Everything a task function may look at for one file (parsed and tokenized once)."""

    source_id: str
    data: bytes  # UTF-8 content; spans index it
    text: str  # decoded content
    tree: Any  # tree_sitter.Tree
    token_char_offsets: list[tuple[int, int]]  # (start, end) character offsets of the file's tokens
    rng: random.Random  # seeded from (seed, source id, task): deterministic per file
    _char_to_byte: np.ndarray | None = field(default=None, repr=False)

    def chars_to_bytes(self, char_offsets: np.ndarray) -> np.ndarray:
        """Byte offsets of character offsets (identity for ASCII files)."""
        char_offsets = np.asarray(char_offsets, dtype=np.int64)
        if len(self.data) == len(self.text):
            return char_offsets
        if self._char_to_byte is None:
            self._char_to_byte = char_to_byte_table(self.text)
        return self._char_to_byte[char_offsets]

    def char_to_byte(self, char_offset: int) -> int:
        """Byte offset of one character offset."""
        return int(self.chars_to_bytes(np.array([char_offset]))[0])


TaskFn = Callable[[FileContext], Iterable[Span]]
Refine = Callable[[bytes, list[Span]], list[Span]]


@dataclass(frozen=True)
class Task:
    """One completion task.

    Exactly one of ``query`` / ``fn`` is set, except for source-less tasks
    (``needs_source=False``, e.g. ``noise``) which have neither.
    """

    name: str
    query: str | None = None  # tree-sitter query; captures not starting with "_" are spans
    fn: TaskFn | None = None  # or a function of the parsed file
    refine: Refine | None = None  # post-processes query spans (e.g. strip quotes)
    code_only: bool = False  # drop spans lying inside string literals or comments
    label_tokens: tuple[int, int] | None = None  # allowed hole length in tokens; None: 1..max_label_tokens
    needs_source: bool = True

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("_", "").isalnum():
            raise ValueError(f"task name {self.name!r} must be a non-empty identifier (letters, digits, _)")
        if self.needs_source and (self.query is None) == (self.fn is None):
            raise ValueError(f"task {self.name!r} needs exactly one of a query string or a function")


TASKS: dict[str, Task] = {}
CONTROL_TASK = "noise"  # the control task: random token ids, no source (its patterns are not code's)


def register_task(name: str, fn_or_query: str | TaskFn, *, refine: Refine | None = None,
                  code_only: bool = False, label_tokens: tuple[int, int] | None = None,
                  replace: bool = False) -> Task:
    """Register a task under ``name`` (a tree-sitter query string or a span function).

    A query is checked against the Java grammar right away, so a typo fails here.
    A function must be importable (module level) to be used with ``num_workers > 0``.
    """
    if name in TASKS and not replace:
        raise ValueError(f"task {name!r} is already registered; pass replace=True to override it")
    if isinstance(fn_or_query, str):
        compile_query(fn_or_query)
        task = Task(name, query=fn_or_query, refine=refine, code_only=code_only, label_tokens=label_tokens)
    elif callable(fn_or_query):
        task = Task(name, fn=fn_or_query, refine=refine, code_only=code_only, label_tokens=label_tokens)
    else:
        raise ValueError(f"task {name!r}: expected a tree-sitter query string or a function, got {type(fn_or_query)}")
    TASKS[name] = task
    return task


def task_names() -> list[str]:
    """Registered task names, built-ins first in a fixed order, then user tasks by registration."""
    return list(TASKS)


def get_tasks(names: Sequence[str] | None = None) -> tuple[Task, ...]:
    """The tasks of ``names`` in the given order (all registered tasks when None)."""
    if names is None:
        return tuple(TASKS.values())
    if isinstance(names, str):
        names = [names]
    unknown = [n for n in names if n not in TASKS]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; registered: {task_names()}")
    if len(set(names)) != len(names):
        raise ValueError(f"tasks listed twice in {list(names)}")
    if not names:
        raise ValueError("no tasks selected; pass task names or None for all")
    return tuple(TASKS[n] for n in names)


# --- tree-sitter ----------------------------------------------------------------------

_LANGUAGE = None


def java_language():
    """The tree-sitter Java language (loaded once per process)."""
    global _LANGUAGE
    if _LANGUAGE is None:
        _LANGUAGE = Language(tree_sitter_java.language())
    return _LANGUAGE


def compile_query(source: str):
    """``tree_sitter.Query`` for the Java grammar; a bad query raises ``ValueError``."""
    try:
        return Query(java_language(), source)
    except Exception as e:  # tree-sitter raises QueryError (a subclass of Exception) with the position
        raise ValueError(f"invalid tree-sitter query {source!r}: {e}") from e


# Node kinds whose inside is not code: token patterns never match there.
NON_CODE_QUERY = "(string_literal) @_x (character_literal) @_x (line_comment) @_x (block_comment) @_x"

# JLS 3.9 reserved keywords as they appear in tree-sitter-java: most are anonymous tokens, a few
# are named leaves (this, super, void_type, boolean_type). const/goto are not in the grammar.
KEYWORDS = (
    "abstract", "assert", "boolean", "break", "byte", "case", "catch", "char", "class", "const",
    "continue", "default", "do", "double", "else", "enum", "extends", "final", "finally", "float",
    "for", "goto", "if", "implements", "import", "instanceof", "int", "interface", "long", "native",
    "new", "package", "private", "protected", "public", "return", "short", "static", "strictfp",
    "super", "switch", "synchronized", "this", "throw", "throws", "transient", "try", "void",
    "volatile", "while",
)
_NAMED_KEYWORDS = {"this": "this", "super": "super", "void": "void_type", "boolean": "boolean_type"}


def _keywords_query() -> str:
    lang = java_language()
    anonymous = [k for k in KEYWORDS if k not in _NAMED_KEYWORDS and lang.id_for_node_kind(k, False) is not None]
    named = " ".join(f"({kind}) @kw" for kind in _NAMED_KEYWORDS.values())
    return "[" + " ".join(f'"{k}"' for k in anonymous) + "] @kw " + named


MATH_OPERATORS = ("+", "-", "*", "/", "%")
BOOLEAN_OPERATORS = ("&&", "||", "==", "!=", "<", ">", "<=", ">=")
ASSIGNMENT_OPERATORS = ("=", "+=", "-=", "*=", "/=", "%=", "&=", "|=", "^=", "<<=", ">>=", ">>>=")


def _alt(tokens: Iterable[str]) -> str:
    return "[" + " ".join(f'"{t}"' for t in tokens) + "]"


def _strip_string_delimiters(data: bytes, spans: list[Span]) -> list[Span]:
    """The inside of string / character literals and text blocks (the hole is the content)."""
    out = []
    for start, end in spans:
        width = 3 if data.startswith(b'"""', start) else 1
        if end - start > 2 * width:
            out.append((start + width, end - width))
    return out


def _followed_by_newline(data: bytes, spans: list[Span]) -> list[Span]:
    return [(s, e) for s, e in spans if data[e:e + 1] == b"\n" or data[e:e + 2] == b"\r\n"]


def random_spans(ctx: FileContext) -> list[Span]:
    """Token-aligned spans of 3-10 tokens: one per token that starts a word (length drawn per start).

    A span never starts with layout (a hole that begins with whitespace is not a
    completion) and never cuts a multi-byte character.
    """
    offsets = np.asarray(ctx.token_char_offsets, dtype=np.int64).reshape(-1, 2)  # (n, 2) char offsets
    n = len(offsets)
    if n < 3:
        return []
    gen = np.random.default_rng(ctx.rng.getrandbits(64))
    last = np.arange(n) + gen.integers(3, 11, size=n) - 1  # index of each span's last token
    # clean[i]: token i starts a new character; clean[n] closes the file
    clean = np.ones(n + 1, dtype=bool)
    clean[1:n] = offsets[1:, 0] >= offsets[:-1, 1]
    blank = is_whitespace(code_points(ctx.text)[offsets[:, 0]])
    ok = (last < n) & clean[:n] & ~blank
    ok[ok] &= clean[last[ok] + 1]
    first = np.flatnonzero(ok)
    starts, ends = ctx.chars_to_bytes(offsets[first, 0]), ctx.chars_to_bytes(offsets[last[first], 1])
    return list(zip(starts.tolist(), ends.tolist()))


def _register_builtins() -> None:
    queries = {
        "identifiers": "(identifier) @id",
        "string_literals": "(string_literal) @s (character_literal) @s",
        "numeric_literals": (
            "[(decimal_integer_literal) (hex_integer_literal) (octal_integer_literal) (binary_integer_literal)"
            " (decimal_floating_point_literal) (hex_floating_point_literal)] @n"),
        "boolean_literals": "[(true) (false)] @b",
        "function_call": "(method_invocation name: (identifier) @name)",
        "function_name": "(method_declaration name: (identifier) @name)",
    }
    for name, query in queries.items():
        register_task(name, query, refine=_strip_string_delimiters if name == "string_literals" else None)
    patterns = {
        "closing_bracket": (_alt("})]") + " @b", None),
        "eol": ('";" @eol', _followed_by_newline),
        "keywords": (_keywords_query(), None),
        "mathematical_operators": (
            f"(binary_expression operator: {_alt(MATH_OPERATORS)} @op)"
            f" (unary_expression operator: {_alt('+-')} @op) (update_expression {_alt(('++', '--'))} @op)", None),
        "boolean_operators": (
            f"(binary_expression operator: {_alt(BOOLEAN_OPERATORS)} @op) (unary_expression operator: \"!\" @op)",
            None),
        "assignment_operators": (
            f"(assignment_expression operator: {_alt(ASSIGNMENT_OPERATORS)} @op) (variable_declarator \"=\" @op)",
            None),
    }
    for name, (query, refine) in patterns.items():
        register_task(name, query, refine=refine, code_only=True)
    register_task("random", random_spans, label_tokens=(3, 10))
    TASKS[CONTROL_TASK] = Task(CONTROL_TASK, needs_source=False, label_tokens=(3, 10))


_register_builtins()
