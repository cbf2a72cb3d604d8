"""el-data's registry sources: Debian packages unpacked without installing, and the Spanish-English Bible read
from the SWORD modules (aligned, deduplicated, split by chapter, written with a checked manifest)."""
import json
import os
import shutil

import pytest

from el_evidence.data import bible, debian
from el_evidence.data import mnist as data_mnist
from el_evidence.data.idx import DataError
from el_evidence.testing.programs import run_cli

HAS_APT = bool(shutil.which("apt-get") and shutil.which("dpkg-deb"))
MODULES_INSTALLED = all(os.path.exists(os.path.join("/", bible.MODULE_DIR, m.module, "ot.bzv"))
                        for m in bible.MODULES.values())


# --------------------------------------------------------------------------- OSIS text
@pytest.mark.parametrize("osis,text", [
    ('<w lemma="strong:H7225">In the beginning</w> God <transChange type="added">was</transChange>.',
     "In the beginning God was."),
    ('And he said<note type="x-study">Or, <reference osisRef="Gen.1.1">see</reference></note>, Go.',
     "And he said, Go."),
    ('<title type="psalm" canonical="true">A Psalm of David.</title> The LORD is my shepherd; \u00b6 I shall not want.',
     "The LORD is my shepherd; I shall not want."),
    ('<div type="x-milestone" subType="x-preverse" sID="pv1"/>Y dijo <lb/> Dios:  Sea la luz',
     "Y dijo Dios: Sea la luz"),
    ('<chapter n="2" osisID="Gen.2" sID="Gen.2"/> ', ""),
])
def test_clean_verse(osis, text):
    assert bible.clean_verse(osis) == text


def test_verse_labels_refuse_another_versification():
    slots = ["", "", '<div osisID="Gen" sID="b1" type="book"/>', '<chapter osisID="Gen.1" sID="Gen.1"/>', "v1", "v2"]
    with pytest.raises(DataError, match=r"1 books, 1 chapters, 2 verse slots; the KJV versification has \(39, 929"):
        bible.verse_labels(slots, "ot", "test module")


def test_split_by_chapter_is_whole_chapters_seeded_and_exact():
    pairs = [bible.Pair(f"B.{c}.{v}", f"s{c}.{v}", f"t{c}.{v}") for c in range(1, 41) for v in range(1, 11)]
    first = bible.split_by_chapter(pairs, {"valid": 25, "test": 15}, seed=3)
    assert first == bible.split_by_chapter(pairs, {"valid": 25, "test": 15}, seed=3)  # deterministic
    assert {s: len(p) for s, p in first.items()} == {"train": 360, "valid": 25, "test": 15}
    chapters = {s: {bible.chapter_of(p) for p in ps} for s, ps in first.items()}
    assert len(chapters["test"]) == 2 and len(chapters["valid"]) == 3  # 10 + 5, then 10 + 10 + 5 (each cut chapter ends in train)
    full = {s: {c for c in chapters[s] if sum(bible.chapter_of(p) == c for p in first[s]) == 10} for s in first}
    assert not (full["test"] | full["valid"]) & chapters["train"]  # whole chapters stay together
    assert first["train"] == sorted(first["train"], key=pairs.index)  # Bible order kept
    with pytest.raises(ValueError, match="must leave pairs for train"):
        bible.split_by_chapter(pairs, {"valid": 300, "test": 100})


# --------------------------------------------------------------------------- the real modules
@pytest.fixture(scope="module")
def bible_cache(tmp_path_factory):
    if not (MODULES_INSTALLED or HAS_APT):
        pytest.skip("needs Debian's sword-text-kjv and sword-text-sparv, or apt-get to fetch them")
    return str(tmp_path_factory.mktemp("cache"))


def test_the_real_corpus_aligns_as_the_spec_says(bible_cache):
    slots, sources = bible.read_modules(bible_cache, log=lambda m: None)
    splits, facts = bible.build(slots)
    assert facts["verse_slots"] == 31102  # the KJV versification
    assert facts["aligned_pairs"] == 30492  # the verses both Bibles hold (KJV versification)
    assert {"Num.12", "Num.13", "Job.39", "Job.40"} <= set(facts["dropped_chapters"])
    assert {s: len(p) for s, p in splits.items()} == {"train": facts["unique_pairs"] - 2500, "valid": 1500,
                                                       "test": 1000}
    train_sources = {p.src for p in splits["train"]}
    for split in ("valid", "test"):
        assert not any(p.src in train_sources for p in splits[split]), split  # no source line leaks into train
    everything = [p for ps in splits.values() for p in ps]
    assert all(p.src and p.tgt and "<" not in p.src + p.tgt for p in everything)
    assert len({p.src for p in everything}) == len(everything)
    genesis = next(p for p in everything if p.ref == "Gen.1.1")
    assert genesis.tgt == "In the beginning God created the heaven and the earth."
    assert genesis.src == "EN el principio crió Dios los cielos y la tierra."
    assert sources["en"]["licence"] == sources["es"]["licence"] == "public domain"


@pytest.mark.e2e
def test_el_data_bible_writes_checks_and_reruns(bible_cache, tmp_path):
    out = tmp_path / "bible"
    env = {"EL_PLUGINS_CACHE": bible_cache}
    first = run_cli("el-data", "bible", "--out", out, "--valid", "300", "--test", "200", env=env)
    assert "valid 300, test 200 pairs" in first.stdout
    manifest = json.loads((out / "SOURCES.json").read_text())
    for split, pairs in (("valid", 300), ("test", 200)):
        for lang in ("es", "en"):
            lines = (out / f"{split}.{lang}").read_text(encoding="utf-8").split("\n")
            assert lines[-1] == "" and len(lines) - 1 == pairs and all(lines[:-1])
            assert manifest["splits"][split]["files"][lang]["lines"] == pairs
    assert manifest["sources"]["en"]["package"] == "sword-text-kjv" and len(manifest["sources"]["es"]["sha256"]) == 6
    again = run_cli("el-data", "bible", "--out", out, "--valid", "300", "--test", "200", env=env)
    assert "already holds the checked corpus" in again.stdout
    # a damaged file: load() refuses it, naming it; a rerun writes the set again
    (out / "test.en").write_text("changed\n" * 200, encoding="utf-8")
    with pytest.raises(DataError, match=r"test.en: 200 lines, SHA-256 .* records 200 lines"):
        bible.load(str(out))
    run_cli("el-data", "bible", "--out", out, "--valid", "300", "--test", "200", env=env)
    assert len(bible.load(str(out))["test"][1]) == 200
    bad = run_cli("el-data", "bible", "--out", out, "--valid", "0", check=False)
    assert bad.returncode == 2 and "--valid must be >= 1 pairs, got 0" in bad.stdout
    huge = run_cli("el-data", "bible", "--out", tmp_path / "huge", "--valid", "40000", env=env, check=False)
    assert huge.returncode == 1 and "must leave pairs for train" in huge.stdout


# --------------------------------------------------------------------------- Debian packages, not installed
@pytest.mark.slow  # apt-get download and unpacking, about 2.5 s
@pytest.mark.skipif(not HAS_APT, reason="needs Debian's apt-get")
def test_packages_without_installing_them(tmp_path, monkeypatch):
    """Not installed (no root): apt-get download + dpkg-deb -x into the cache, then the same checks."""
    monkeypatch.setattr(debian, "INSTALLED_ROOT", str(tmp_path / "not-installed"))
    cache = str(tmp_path / "cache")
    (images, labels), origin = data_mnist.fashion_from_debian(cache, log=lambda m: None)
    assert "unpacked without installing" in origin
    facts = data_mnist.check_split("fashion_mnist", "test", images, labels, origin)
    assert facts["labels"]["sha256"] == data_mnist.SHA256["FashionMNIST/raw/t10k-labels-idx1-ubyte"]
    slots, sources = bible.read_modules(cache, log=lambda m: None)
    assert all("unpacked without installing" in s["origin"] for s in sources.values())
    assert bible.build(slots)[1]["aligned_pairs"] == 30492
    assert not [f for f in os.listdir(os.path.join(cache, "deb")) if f.startswith(".unpack-")]  # no leftovers
