"""The study's corpus: the order it is chosen in, its identity, and the error when there is none."""

from __future__ import annotations

import hashlib
import zipfile

import pytest

from apmae.study.corpus import SRC_ZIP_IN_PACKAGE, CorpusError, resolve_corpus


def _src_zip(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("java.base/java/lang/Nothing.java", "package java.lang;\nclass Nothing {}\n")
    return path


def _no_fetch(folder):
    raise AssertionError("nothing should be fetched")


def test_a_given_corpus_comes_first_with_its_size_and_hash(tmp_path):
    archive = _src_zip(tmp_path / "mine.zip")
    jdk = tmp_path / "jdk"
    _src_zip(jdk / "lib" / "src.zip")
    corpus = resolve_corpus(str(archive), tmp_path / "study", environ={"JAVA_HOME": str(jdk), "PATH": ""},
                            fetch=_no_fetch)
    assert corpus.origin == "CORPUS" and corpus.path == str(archive)
    assert corpus.size == archive.stat().st_size
    assert corpus.sha256 == hashlib.sha256(archive.read_bytes()).hexdigest()
    assert "mine.zip (CORPUS, " in corpus.line()
    assert resolve_corpus("hf:bigcode/the-stack", tmp_path, environ={}, fetch=_no_fetch).sha256 is None


def test_a_folder_is_hashed_by_its_files(tmp_path):
    (tmp_path / "java" / "a").mkdir(parents=True)
    (tmp_path / "java" / "a" / "A.java").write_text("class A {}\n")
    first = resolve_corpus(str(tmp_path / "java"), tmp_path, environ={}, fetch=_no_fetch)
    (tmp_path / "java" / "a" / "A.java").write_text("class A { }\n")
    assert resolve_corpus(str(tmp_path / "java"), tmp_path, environ={}, fetch=_no_fetch).sha256 != first.sha256


def test_java_home_then_the_package_and_a_dangling_link_is_skipped(tmp_path):
    jdk = tmp_path / "jdk"
    (jdk / "lib").mkdir(parents=True)
    (jdk / "lib" / "src.zip").symlink_to(tmp_path / "absent.zip")  # as Debian links it without the package
    fetched = []

    def fetch(folder):
        fetched.append(folder)
        return _src_zip(folder / SRC_ZIP_IN_PACKAGE)

    corpus = resolve_corpus(None, tmp_path / "study", environ={"JAVA_HOME": str(jdk), "PATH": ""}, fetch=fetch)
    assert corpus.origin == "Debian openjdk-17-source" and fetched == [tmp_path / "study" / "jdk-source"]
    again = resolve_corpus(None, tmp_path / "study", environ={"JAVA_HOME": str(jdk), "PATH": ""}, fetch=_no_fetch)
    assert again == corpus  # unpacked once, reused
    _src_zip(tmp_path / "absent.zip")  # the link now resolves: the JDK's own source wins
    home = resolve_corpus(None, tmp_path / "study", environ={"JAVA_HOME": str(jdk), "PATH": ""}, fetch=_no_fetch)
    assert home.origin == "JAVA_HOME" and home.path == str(tmp_path / "absent.zip")


def test_no_corpus_names_what_to_pass(tmp_path):
    with pytest.raises(CorpusError, match=r"CORPUS=.* does not exist: pass a folder, an archive"):
        resolve_corpus(str(tmp_path / "missing"), tmp_path, environ={}, fetch=_no_fetch)

    def unavailable(folder):
        raise CorpusError("apt-get download openjdk-17-source failed (...): pass CORPUS=<...>")

    with pytest.raises(CorpusError, match="pass CORPUS="):
        resolve_corpus(None, tmp_path, environ={"PATH": ""}, fetch=unavailable)
