"""Fixtures for the mining tests: a small hand-written Java corpus and a saved tokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import JAVA_SNIPPETS

# A longer class than the shared snippets, so that a 64-token prompt fits with context on both sides.
LEDGER = '''package demo.bank;

import java.util.ArrayList;
import java.util.List;

/** A ledger of signed amounts; "balance" is their sum. */
public class Ledger {
    private final List<Long> entries = new ArrayList<>();
    private long limit = 10_000L;
    private boolean frozen = false;

    public void add(long amount) {
        if (frozen || amount == 0) {
            throw new IllegalStateException("ledger is frozen or amount is zero");
        }
        entries.add(amount);
    }

    public long balance() {
        long total = 0;
        for (int i = 0; i < entries.size(); i++) {
            total += entries.get(i);
        }
        return total;
    }

    public boolean overLimit() {
        return balance() > limit && !frozen;
    }

    public double average() {
        return entries.isEmpty() ? 0.0 : (double) balance() / entries.size();
    }

    // freeze() stops new entries; while frozen, add() throws
    public void freeze() {
        frozen = true;
    }
}
'''


def variant(text: str, i: int) -> str:
    """A distinct but equally valid copy of ``text`` (a comment line makes the content hash differ)."""
    return f"// copy {i}\n{text}"


def write_corpus(root: Path, n_copies: int = 4) -> list[Path]:
    """LEDGER and the shared snippets, ``n_copies`` variants each, under ``root``."""
    paths = []
    for i in range(n_copies):
        for j, text in enumerate([LEDGER, *JAVA_SNIPPETS]):
            path = root / f"pkg{i}" / f"File{j}.java"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(variant(text, i), encoding="utf-8")
            paths.append(path)
    return paths


@pytest.fixture
def java_dir(tmp_path) -> Path:
    root = tmp_path / "java"
    write_corpus(root)
    return root


@pytest.fixture(scope="session")
def tokenizer_dir(tiny_tokenizer, tmp_path_factory) -> Path:
    """The tiny tokenizer saved to a directory (DataModules take a name or a directory)."""
    out = tmp_path_factory.mktemp("tokenizer")
    tiny_tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def java_corpus(tmp_path_factory) -> Path:
    """:func:`write_corpus` with 4 variants of each file, written once for the mining tests."""
    root = tmp_path_factory.mktemp("corpus")
    write_corpus(root, n_copies=4)
    return root
