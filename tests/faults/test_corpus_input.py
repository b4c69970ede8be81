"""A corpus that cannot be read ends in SourceError naming the file (and the line), never a library traceback."""

from __future__ import annotations

import json
import tarfile
import zipfile

import pytest

from apmae.mining.miner import mine_scenarios
from apmae.mining.settings import MiningConfig
from apmae.mining.sources import JavaSources, SourceError
from tests.conftest import JAVA_SNIPPETS
from tests.faults.damage import truncated


@pytest.fixture
def archives(tmp_path):
    files = {f"src/F{i}.java": JAVA_SNIPPETS[i % len(JAVA_SNIPPETS)] * 40 + f"// file {i}\n" for i in range(6)}
    with zipfile.ZipFile(tmp_path / "src.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        for name, text in files.items():
            zf.writestr(name, text)
    folder = tmp_path / "tree"
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    with tarfile.open(tmp_path / "src.tar.gz", "w:gz") as tf:
        tf.add(folder / "src", arcname="src")
    return tmp_path, len(files)


def test_whole_archives_read_and_truncated_ones_are_named(archives):
    root, n = archives
    assert sum(1 for _ in JavaSources(root / "src.zip")) == n == sum(1 for _ in JavaSources(root / "src.tar.gz"))
    for name, kind in (("src.zip", "zip"), ("src.tar.gz", "tar")):
        for fraction in (0.3, 0.9):
            cut = truncated(root / name, root / f"cut-{fraction}-{name}", fraction)
            with pytest.raises(SourceError, match=rf"{cut}.*(not a readable {kind} archive|cannot be read).*"
                                                  "fetch it again"):
                list(JavaSources(cut))


def test_a_broken_jsonl_line_is_named_by_its_number(tmp_path):
    good = json.dumps({"id": "a.java", "content": JAVA_SNIPPETS[0]})
    path = tmp_path / "corpus.jsonl"
    path.write_text(f"{good}\n\n{good[:-5]}\n{good}\n")
    with pytest.raises(SourceError, match=rf"{path} line 3 is not valid JSON .*fix or remove that line"):
        list(JavaSources(path))
    path.write_text(f"{good}\n[1, 2]\n")
    with pytest.raises(SourceError, match="line 2 is a JSON list, not an object"):
        list(JavaSources(path))


def test_a_corpus_without_java_files_is_an_error_not_a_set_of_noise_controls(tmp_path, tiny_tokenizer):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "README.txt").write_text("no Java here")
    settings = MiningConfig(seq_len=32, max_label_tokens=8, n_per_task=2, tasks=["identifiers", "noise"])
    with pytest.raises(SourceError, match=r"no Java file could be read from .*empty.* \(no \.java file found\)"):
        mine_scenarios(tmp_path / "empty", tiny_tokenizer, settings, progress=False)
    (tmp_path / "empty" / "Empty.java").write_text("")  # present but empty: counted, and named
    with pytest.raises(SourceError, match=r"\(empty 1\)"):
        mine_scenarios(tmp_path / "empty", tiny_tokenizer, settings, progress=False)
    only_noise = MiningConfig(seq_len=32, max_label_tokens=8, n_per_task=2, tasks=["noise"])  # the control alone needs no source
    assert len(mine_scenarios(tmp_path / "empty", tiny_tokenizer, only_noise, progress=False).scenarios) == 2
