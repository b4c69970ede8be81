"""The generated Java corpus: deterministic, valid Java, identifiers copied from declarations."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from apmae.demo.corpus import generate_corpus, generate_file, write_corpus


def _parser():
    import tree_sitter_java
    from tree_sitter import Language, Parser

    return Parser(Language(tree_sitter_java.language()))


def test_same_seed_same_files_other_seed_other_files():
    assert list(generate_corpus(20, seed=3)) == list(generate_corpus(20, seed=3))
    assert generate_file(3, 7) == list(generate_corpus(8, seed=3))[7]
    other = list(generate_corpus(20, seed=4))
    assert sum(a == b for a, b in zip(generate_corpus(20, seed=3), other)) == 0


def test_written_files_equal_generated_ones(tmp_path):
    summary = write_corpus(tmp_path, 15, seed=1)
    files = dict(generate_corpus(15, seed=1))
    on_disk = {str(p.relative_to(tmp_path)): p.read_text(encoding="utf-8") for p in tmp_path.rglob("*.java")}
    assert on_disk == files
    assert summary.n_files == 15
    assert summary.n_bytes == sum(len(t.encode()) for t in files.values())
    assert summary.n_lines == sum(t.count("\n") for t in files.values())


def test_sample_parses_without_error_nodes_and_sizes_vary():
    parser = _parser()
    texts = [text for _, text in generate_corpus(150, seed=11)]
    broken = [i for i, t in enumerate(texts) if parser.parse(t.encode()).root_node.has_error]
    assert broken == []
    lines = [t.count("\n") for t in texts]
    assert min(lines) < 40 and max(lines) > 200  # tens to a few hundred lines


def test_sample_has_the_promised_constructs():
    text = "".join(t for _, t in generate_corpus(150, seed=2))
    for construct in ("package ", "import java.util.", "public class ", "public interface ", "public enum ",
                      "private final ", "for (", "while (", "if (", "} else {", "switch (", "case ", "try {",
                      "catch (", "@Override", "/**", "// ", "return ", "true", "false", "'", '"', "L;",
                      "<String>", "Map<String, Integer>", "this."):
        assert construct in text, construct


def test_identifier_uses_mostly_copy_an_earlier_occurrence():
    """Most identifiers (after their first occurrence) repeat a name seen earlier in the same file."""
    from tree_sitter import Query, QueryCursor

    parser = _parser()
    query = Query(parser.language, "(identifier) @id")
    repeated = total = 0
    for _, text in generate_corpus(40, seed=5):
        data = text.encode()
        nodes = sorted(QueryCursor(query).captures(parser.parse(data).root_node)["id"], key=lambda n: n.start_byte)
        seen: set[bytes] = set()
        for node in nodes:
            name = data[node.start_byte:node.end_byte]
            repeated += name in seen
            total += 1
            seen.add(name)
    assert total > 2000
    assert repeated / total > 0.55


def test_bad_file_count_raises():
    with pytest.raises(ValueError, match="at least one file"):
        list(generate_corpus(0, seed=0))


@pytest.mark.skipif(shutil.which("javac") is None, reason="javac is not installed")
def test_sample_compiles_with_javac(tmp_path):
    write_corpus(tmp_path / "src", 40, seed=21)
    by_name: dict[str, Path] = {}
    for path in sorted((tmp_path / "src").rglob("*.java")):
        # one javac call cannot take two equal fully qualified type names
        by_name.setdefault(str(path.relative_to(tmp_path / "src")).split("/", 1)[1], path)
    files = [str(p) for p in by_name.values()]
    assert len(files) >= 30
    result = subprocess.run(["javac", "-nowarn", "-d", str(tmp_path / "classes"), *files],
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
