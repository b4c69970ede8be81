"""Each task picks exactly the spans it should on hand-written Java."""

from __future__ import annotations

import pytest

from apmae.mining.miner import candidate_spans
from apmae.mining.tasks import TASKS, register_task, task_names

CODE = '''class A {
    /* if while */ String s = "for (int i = 0; i < n; i++) {}";
    String t = """
        text block ""
        """;
    char c = 'x'; char e = '\\n'; String empty = "";
    List<String> xs = new ArrayList<>();
    int f(int a) { if (a < 2 && !done) { a += 0x1F; a = -a * 3 % 2; a++; } return a >= 1 ? this.g(a) : super.h(); }
    // return while class
    void g() { boolean b = true || false; double d = 1.5e3 + .5 + 2f + 0b101 + 017 + 10_000L + 0x1.8p1; }
}
'''


@pytest.fixture(scope="module")
def found(tiny_tokenizer):
    data = CODE.encode()
    spans = candidate_spans(CODE, tiny_tokenizer)
    return {task: [data[s:e].decode() for s, e in v] for task, v in spans.items()}


def test_identifiers_are_names_not_types(found):
    assert found["identifiers"] == ["A", "s", "t", "c", "e", "empty", "xs", "f", "a", "a", "done", "a", "a", "a",
                                    "a", "a", "g", "a", "h", "g", "b", "d"]
    assert "String" not in found["identifiers"] and "List" not in found["identifiers"]


def test_string_literals_cover_strings_chars_and_text_blocks(found):
    # the hole is the literal's content; the empty string has none and is no candidate
    assert found["string_literals"] == ["for (int i = 0; i < n; i++) {}", '\n        text block ""\n        ',
                                        "x", "\\n"]


def test_numeric_literals_all_forms(found):
    assert found["numeric_literals"] == ["2", "0x1F", "3", "2", "1", "1.5e3", ".5", "2f", "0b101", "017",
                                         "10_000L", "0x1.8p1"]


def test_boolean_literals_and_method_names(found):
    assert found["boolean_literals"] == ["true", "false"]
    assert found["function_call"] == ["g", "h"]
    assert found["function_name"] == ["f", "g"]


def test_token_patterns_skip_strings_and_comments(found):
    # "for", "int", "if", "while", "class", "return" inside the string and the comments are not hits
    assert found["keywords"] == ["class", "char", "char", "new", "int", "int", "if", "return", "this", "super",
                                 "void", "boolean", "double"]
    # the string's "{}" and ")" are not brackets; the code has 6 ")" and 4 "}"
    assert sorted(found["closing_bracket"]) == [")"] * 6 + ["}"] * 4
    assert found["eol"] == [";"] * 4  # lines ending in ";" (not the ones inside the string or mid-line)


def test_operators(found):
    assert found["mathematical_operators"] == ["-", "*", "%", "++", "+", "+", "+", "+", "+", "+"]
    # "<" of the string and of List<String> are not boolean operators
    assert found["boolean_operators"] == ["<", "&&", "!", ">=", "||"]
    assert found["assignment_operators"] == ["="] * 6 + ["+="] + ["="] * 3


def test_random_spans_are_3_to_10_tokens_never_starting_with_space(tiny_tokenizer):
    spans = candidate_spans(CODE, tiny_tokenizer, ["random"], seed=3)["random"]
    offsets = tiny_tokenizer(CODE, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    starts, ends = [s for s, _ in offsets], [e for _, e in offsets]
    assert len(spans) > 50  # CODE is ASCII: byte and character offsets agree
    for s, e in spans:
        assert not CODE[s].isspace()
        assert s in starts and e in ends  # token-aligned in the file's own tokenization
        assert 3 <= ends.index(e) - starts.index(s) + 1 <= 10
    assert spans != candidate_spans(CODE, tiny_tokenizer, ["random"], seed=4)["random"]


def test_noise_task_is_last_builtin_and_order_is_fixed():
    names = task_names()
    assert names[:14] == ["identifiers", "string_literals", "numeric_literals", "boolean_literals",
                          "function_call", "function_name", "closing_bracket", "eol", "keywords",
                          "mathematical_operators", "boolean_operators", "assignment_operators", "random", "noise"]


def lambda_params(ctx):
    """A user task as a function: spans of every 'a' character (module level, so workers can import it)."""
    return [(i, i + 1) for i, b in enumerate(ctx.data) if b == ord("a")]


def test_register_user_tasks(tiny_tokenizer):
    try:
        register_task("t_query", "(formal_parameter name: (identifier) @p)")
        register_task("t_fn", lambda_params)
        spans = candidate_spans(CODE, tiny_tokenizer, ["t_query", "t_fn"])
        data = CODE.encode()
        assert [data[s:e] for s, e in spans["t_query"]] == [b"a"]
        assert spans["t_fn"] == [(i, i + 1) for i, b in enumerate(data) if b == ord("a")]
        with pytest.raises(ValueError, match="already registered"):
            register_task("t_query", "(identifier) @x")
    finally:
        TASKS.pop("t_query", None)
        TASKS.pop("t_fn", None)


def test_bad_query_and_unknown_task_fail_clearly(tiny_tokenizer):
    with pytest.raises(ValueError, match="invalid tree-sitter query"):
        register_task("t_bad", "(no_such_node) @x")
    assert "t_bad" not in TASKS
    with pytest.raises(ValueError, match="unknown task"):
        candidate_spans(CODE, tiny_tokenizer, ["nope"])
