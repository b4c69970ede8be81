"""Sources: every corpus format yields the same files, with stable ids, duplicates once, bad files counted."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import zipfile

import pytest

from apmae.mining.sources import HFSource, JavaSources
from tests.conftest import JAVA_SNIPPETS


def _files(tmp_path):
    """{relative path: text} of a tiny corpus, written as a directory tree."""
    files = {f"p/q/F{i}.java": text for i, text in enumerate(JAVA_SNIPPETS)}
    for rel, text in files.items():
        (tmp_path / "tree" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "tree" / rel).write_text(text, encoding="utf-8")
    return files


def _expected(files):
    return {f"{rel}@{hashlib.sha1(t.encode()).hexdigest()[:12]}": t for rel, t in files.items()}


def _read(source, **kw):
    src = JavaSources(source, **kw)
    return {f.source_id: f.text for f in src}, src


def test_directory_tree(tmp_path):
    files = _files(tmp_path)
    (tmp_path / "tree" / "p" / "notes.txt").write_text("not java")
    got, src = _read(tmp_path / "tree")
    assert got == _expected(files)
    assert src.yielded == 3 and not src.skipped


def test_zip_and_tar_archives(tmp_path):
    files = _files(tmp_path)
    with zipfile.ZipFile(tmp_path / "src.zip", "w") as zf:
        for rel, text in files.items():
            zf.writestr(rel, text)
        zf.writestr("p/README.md", "no")
    with tarfile.open(tmp_path / "src.tar.gz", "w:gz") as tf:
        for rel, text in files.items():
            info = tarfile.TarInfo(rel)
            info.size = len(text.encode())
            tf.addfile(info, io.BytesIO(text.encode()))
    assert _read(tmp_path / "src.zip")[0] == _expected(files)
    assert _read(tmp_path / "src.tar.gz")[0] == _expected(files)


def test_jsonl_and_parquet_keep_the_id_column(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"id": f"repo/F{i}.java", "content": t, "size": len(t)} for i, t in enumerate(JAVA_SNIPPETS)]
    (tmp_path / "java.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "java.parquet")
    expected = {f"{r['id']}@{hashlib.sha1(r['content'].encode()).hexdigest()[:12]}": r["content"] for r in rows}
    assert _read(tmp_path / "java.jsonl")[0] == expected
    assert _read(tmp_path / "java.parquet")[0] == expected


@pytest.mark.slow  # importing `datasets` alone takes seconds
def test_hugging_face_dataset_streaming_and_saved(tmp_path):
    import datasets

    rows = [{"id": f"F{i}", "content": t} for i, t in enumerate(JAVA_SNIPPETS)]
    (tmp_path / "java.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    spec = f"hf:json?split=train&data_files={tmp_path / 'java.jsonl'}"
    assert HFSource.parse(spec) == HFSource("json", data_files=str(tmp_path / "java.jsonl"))
    streamed, _ = _read(spec)  # the same load_dataset(..., streaming=True) call a hub name takes
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    saved, _ = _read(tmp_path / "saved")
    assert streamed == saved
    assert sorted(t for t in streamed.values()) == sorted(JAVA_SNIPPETS)
    assert sorted(k.split("@")[0] for k in streamed) == ["F0", "F1", "F2"]


def test_bad_files_are_skipped_and_counted(tmp_path):
    root = tmp_path / "bad"
    root.mkdir()
    good = JAVA_SNIPPETS[0]
    (root / "A.java").write_text(good)
    (root / "B.java").write_text(good)  # exact duplicate of A
    (root / "C.java").write_bytes("class Caf\xe9 {}".encode("latin-1"))  # not UTF-8
    (root / "D.java").write_bytes(b"class D {\0\0}")  # NUL bytes
    (root / "E.java").write_text("  \n\n")
    (root / "F.java").write_text("class F {" + " " * 500 + "}")
    got, src = _read(root, max_bytes=400)
    assert list(got) == [f"A.java@{hashlib.sha1(good.encode()).hexdigest()[:12]}"]
    assert dict(src.skipped) == {"duplicate": 1, "non_utf8": 1, "binary": 1, "empty": 1, "oversize": 1}


def test_missing_and_unsupported_sources_fail_clearly(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        JavaSources(tmp_path / "nope")
    (tmp_path / "x.csv").write_text("content\n")
    with pytest.raises(ValueError, match="unsupported source"):
        list(JavaSources(tmp_path / "x.csv"))
    (tmp_path / "y.jsonl").write_text(json.dumps({"text": "class A {}"}) + "\n")
    with pytest.raises(ValueError, match="no 'content' column"):
        list(JavaSources(tmp_path / "y.jsonl"))
    with pytest.raises(ValueError, match="hf:NAME"):
        HFSource.parse("hf:?split=train")
