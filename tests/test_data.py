import hashlib
import http.server
import json
import os
import socket
import threading
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from moelab import ByteTokenizer
from moelab.data import (
    CorpusError,
    assign_splits,
    clean_text,
    clean_text_with_report,
    decode_bytes,
    drop_page_numbers,
    drop_running_headers,
    fetch_machado,
    find_invalid_utf8,
    join_wrapped_lines,
    load_split,
    load_works,
    machado_manifest,
    normalize_unicode,
    normalize_whitespace,
    prepare_dataset,
    rejoin_hyphenated_words,
)

MIRROR = os.environ.get("MOELAB_CORPUS_MIRROR")  # the shared offline mirror (set by CI and conftest.py)

# ---------------------------------------------------------------- a small upstream served over HTTP

TEXTS = {
    "txt/conto/umConto.txt": "Um Conto\n\nEra uma vez um homem que morava na rua do Ouvidor e tinha um cão.\n",
    "txt/crônica/aSemana.txt": "A Semana\n\nA semana foi longa; choveu, e o bonde não passou na esquina.\n",
    "txt/poesia/versos.txt": "Versos\n\nÓ musa, canta\nA tarde que se vai\n",
}


def manifest_for(texts: dict[str, str], wrong: set[str] = frozenset()) -> pd.DataFrame:
    rows = []
    for path, text in texts.items():
        data = text.encode()
        digest = hashlib.sha256(data).hexdigest()
        if path in wrong:
            digest = hashlib.sha256(b"something else").hexdigest()
        _, category, name = path.split("/")
        rows.append({"path": path, "category": category, "work": name[:-4], "bytes": len(data), "sha256": digest, "in_mirror": "yes"})
    return pd.DataFrame(rows)


def write_tree(root: Path, texts: dict[str, str]) -> Path:
    for path, text in texts.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text, encoding="utf-8")
    return root


@pytest.fixture
def upstream(tmp_path, monkeypatch):
    """An HTTP server on 127.0.0.1 serving TEXTS laid out like the upstream repository (and no mirror set)."""
    monkeypatch.delenv("MOELAB_CORPUS_MIRROR", raising=False)
    served = write_tree(tmp_path / "upstream", TEXTS)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(QuietHandler, directory=str(served)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    QuietHandler.log = []
    yield f"http://127.0.0.1:{server.server_address[1]}/", served
    server.shutdown()
    server.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files; records each requested path instead of logging it."""

    log: list = []

    def log_message(self, *args):
        QuietHandler.log.append(self.path)


def test_download_verifies_and_resumes(upstream, tmp_path):
    base_url, _ = upstream
    raw = tmp_path / "raw"
    manifest = manifest_for(TEXTS)
    report = fetch_machado(raw, manifest=manifest, base_url=base_url, retries=0, progress=False)
    assert report.fetched == 3 and report.missing.empty and report.source.startswith("download")
    for path, text in TEXTS.items():
        assert (raw / path).read_text() == text
    # accented folder names were percent-encoded in the URLs
    assert any("cr%C3%B4nica" in p for p in QuietHandler.log)

    QuietHandler.log.clear()
    again = fetch_machado(raw, manifest=manifest, base_url=base_url, retries=0, progress=False)
    assert again.fetched == 0 and again.source == "local copy" and QuietHandler.log == []

    (raw / "txt/conto/umConto.txt").unlink()
    resumed = fetch_machado(raw, manifest=manifest, base_url=base_url, retries=0, progress=False)
    assert resumed.fetched == 1 and len(QuietHandler.log) == 1


def test_download_with_wrong_sha256_is_never_used(upstream, tmp_path):
    base_url, _ = upstream
    raw = tmp_path / "raw"
    manifest = manifest_for(TEXTS, wrong={"txt/crônica/aSemana.txt"})
    with pytest.raises(CorpusError, match=r"aSemana\.txt does not match its sha256"):
        fetch_machado(raw, manifest=manifest, base_url=base_url, retries=0, progress=False)
    assert not (raw / "txt/crônica/aSemana.txt").exists()


def test_work_missing_upstream_is_reported(upstream, tmp_path):
    base_url, served = upstream
    (served / "txt/poesia/versos.txt").unlink()
    report = fetch_machado(tmp_path / "raw", manifest=manifest_for(TEXTS), base_url=base_url, retries=0, progress=False)
    assert list(report.missing["path"]) == ["txt/poesia/versos.txt"]
    assert len(report.works) == 2


def test_offline_without_mirror_says_how_to_give_one(tmp_path, monkeypatch):
    monkeypatch.delenv("MOELAB_CORPUS_MIRROR", raising=False)
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(CorpusError, match="MOELAB_CORPUS_MIRROR"):
        fetch_machado(tmp_path / "raw", manifest=manifest_for(TEXTS), base_url=f"http://127.0.0.1:{port}/", retries=1, progress=False)


def test_mirror_copy_and_missing_works(tmp_path):
    texts = dict(TEXTS)
    mirror = write_tree(tmp_path / "mirror", {k: v for k, v in texts.items() if "poesia" not in k})
    report = fetch_machado(tmp_path / "raw", manifest=manifest_for(texts), mirror=mirror, progress=False)
    assert report.fetched == 2
    assert list(report.missing["path"]) == ["txt/poesia/versos.txt"]
    assert "missing 1" in report.summary()


def test_mirror_file_with_wrong_sha256_is_refused(tmp_path):
    mirror = write_tree(tmp_path / "mirror", {**TEXTS, "txt/conto/umConto.txt": "altered\n"})
    with pytest.raises(CorpusError, match=r"mirror file .*umConto\.txt does not match its sha256"):
        fetch_machado(tmp_path / "raw", manifest=manifest_for(TEXTS), mirror=mirror, progress=False)
    assert not (tmp_path / "raw/txt/conto/umConto.txt").exists()
    with pytest.raises(CorpusError, match="is not a folder"):
        fetch_machado(tmp_path / "raw2", manifest=manifest_for(TEXTS), mirror=tmp_path / "nowhere", progress=False)


def test_edited_local_copy_is_not_used(tmp_path):
    raw = write_tree(tmp_path / "raw", {**TEXTS, "txt/conto/umConto.txt": "edited by hand\n"})
    with pytest.raises(CorpusError, match="edited or damaged"):
        fetch_machado(raw, manifest=manifest_for(TEXTS), mirror=tmp_path, progress=False)
    assert (raw / "txt/conto/umConto.txt").read_text() == "edited by hand\n"  # nothing lost


@pytest.mark.skipif(not MIRROR, reason="needs MOELAB_CORPUS_MIRROR (the shared Machado mirror)")
def test_shared_mirror_gives_all_but_the_works_it_lacks(tmp_path):
    manifest = machado_manifest()
    report = fetch_machado(tmp_path / "raw", mirror=MIRROR, progress=False)
    lacking = set(manifest.loc[manifest["in_mirror"] == "no", "path"])
    assert set(report.missing["path"]) == lacking and len(lacking) == 3
    assert len(report.works) == len(manifest) - 3 == 113


# ---------------------------------------------------------------- other sources and bad bytes


def test_folder_of_txt_files(tmp_path):
    root = write_tree(tmp_path / "corpus", {"a/one.txt": "primeiro\n", "a/two.txt": "segundo\n", "top.txt": "topo\n"})
    works, info = load_works(root, progress=False)
    assert list(zip(works["category"], works["work"])) == [("a", "one"), ("a", "two"), ("uncategorized", "top")]
    assert works.loc[0, "text"] == "primeiro\n" and info["kind"] == "folder"
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusError, match="no .txt files"):
        load_works(tmp_path / "empty", progress=False)


def test_parquet_and_csv_with_a_text_column(tmp_path):
    frame = pd.DataFrame({"title": ["Helena", "Iaiá Garcia"], "category": ["romance", "romance"], "text": ["Era...", "Ia..."]})
    frame.to_parquet(tmp_path / "c.parquet")
    works, _ = load_works(tmp_path / "c.parquet", progress=False)
    assert list(works["work"]) == ["Helena", "Iaiá Garcia"] and list(works["text"]) == ["Era...", "Ia..."]

    pd.DataFrame({"body": ["olá", None, "adeus"]}).to_csv(tmp_path / "c.csv", index=False)
    with pytest.warns(UserWarning, match="skipping 1 row"):
        works, _ = load_works(tmp_path / "c.csv", text_column="body", progress=False)
    assert list(works["text"]) == ["olá", "adeus"] and list(works["category"]) == ["uncategorized"] * 2
    with pytest.raises(CorpusError, match="no column 'text'; its columns are body"):
        load_works(tmp_path / "c.csv", progress=False)
    with pytest.raises(CorpusError, match="not 'machado', a folder"):
        load_works(tmp_path / "nothing.json", progress=False)


def test_invalid_utf8_is_reported_with_offset_and_handled_by_policy(tmp_path):
    data = "ação".encode() + b"\xff\xfe" + " e café".encode("latin-1")
    assert [offset for offset, _ in find_invalid_utf8(data)] == [6, 7, 14]
    with pytest.raises(CorpusError, match=r"bad\.txt: 3 invalid UTF-8 sequence\(s\), the first at byte offset 6 \(ff\)"):
        decode_bytes(data, "bad.txt", "strict")
    with pytest.warns(UserWarning, match="byte offset 6"):
        text, issues = decode_bytes(data, "bad.txt", "replace")
    assert text == "ação\ufffd\ufffd e caf\ufffd" and issues == 3
    with pytest.warns(UserWarning):
        text, _ = decode_bytes(" e café".encode("latin-1"), "latin.txt", "latin-1")
    assert text == " e café"
    with pytest.raises(ValueError, match="decode_errors"):
        decode_bytes(data, "x", "ignore")
    # a folder corpus carries the count per work
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "w.txt").write_bytes(data)
    with pytest.warns(UserWarning):
        works, _ = load_works(tmp_path / "c", progress=False)
    assert works.loc[0, "decode_issues"] == 3


# ---------------------------------------------------------------- cleaning rules

PROSE = (
    "Uma noite destas, vindo da cidade para o Engenho Novo, encontrei no trem da\n"
    "Central um rapaz aqui do bairro, que eu conheço de vista e de chapéu. Cumpri-\n"
    "mentou-me e sentou-se ao pé de mim, falou da Lua e dos ministros, e acabou a\n"
    "recitar versos.\n"
    "— Continue, disse eu acordando, que a viagem era longa e o trem ia devagar.\n"
    "CAPÍTULO II\n"
    "Agora que expliquei o título, passo a escrever o livro. Antes disso, porém,\n"
    "digamos os motivos que me põem a pena na mão; ninguém me cumprimentou.\n"
)


def test_normalize_unicode():
    decomposed = "ac\u0327a\u0303o\r\nlinha\rfim\ufeff so\u00adbre"
    text, changed = normalize_unicode(decomposed)
    assert text == "ação\nlinha\nfim sobre" and changed > 0
    assert normalize_unicode("já normal\n") == ("já normal\n", 0)


def test_normalize_whitespace():
    text, changed = normalize_whitespace("\n\n  a\t b  \u00a0c  \n\n\n\nd   \n")
    assert text == "a b c\n\nd" and changed > 0
    assert normalize_whitespace("a b\nc") == ("a b\nc", 0)


def test_drop_page_numbers_keeps_years():
    text, changed = drop_page_numbers("fim da página\n12\n- 13 -\ncontinua\n1861\nSINHÁ")
    assert text == "fim da página\ncontinua\n1861\nSINHÁ" and changed == len("12\n- 13 -\n")


def test_drop_running_headers_only_drops_the_repeated_title():
    body = "Helena\nCapítulo I\ntexto\nHelena\nmais\nHelena\nainda\nHelena\nfim\nLUÍS\nx\nLUÍS\ny\nLUÍS\nz\nLUÍS"
    text, changed = drop_running_headers(body)
    assert text == "Helena\nCapítulo I\ntexto\nmais\nainda\nfim\nLUÍS\nx\nLUÍS\ny\nLUÍS\nz\nLUÍS"
    assert changed == 3 * len("Helena\n")
    assert drop_running_headers("Helena\nHelena, disse ele\n")[1] == 0  # twice is not a header


def test_rejoin_hyphenated_words():
    text = "a compa-\nração foi justa; uma comparação. calçou-\nas e pôs-se a andar.\nAlgo padre-\nnossos"
    joined, changed = rejoin_hyphenated_words(text)
    assert joined == "a comparação foi justa; uma comparação. calçou-as e pôs-se a andar.\nAlgo padre-nossos"
    assert changed == 2 + 1 + 1  # "-\n" removed once, "\n" removed twice


def test_join_wrapped_lines_makes_paragraphs():
    joined, count = join_wrapped_lines(PROSE)
    paragraphs = joined.split("\n")
    assert paragraphs[0].startswith("Uma noite") and paragraphs[0].endswith("recitar versos.")
    assert paragraphs[1].startswith("— Continue")  # dialogue starts a paragraph
    assert paragraphs[2] == "CAPÍTULO II"  # headings stay on their own line
    assert paragraphs[3].endswith("me cumprimentou.") and len(paragraphs) == 5 and paragraphs[4] == ""
    assert count == 4


def test_join_wrapped_lines_leaves_verse_alone():
    verse = "Ó musa, canta\nA tarde que se vai\nE o sol que morre\nNo mar sem fim\n"
    assert join_wrapped_lines(verse) == (verse, 0)


def test_clean_text_composes_the_rules_and_is_idempotent():
    cleaned, report = clean_text_with_report("Título\r\n\r\n" + PROSE.replace("Engenho", "Enge\u00adnho") + "7\n")
    assert "\r" not in cleaned and "Cumprimentou-me" in cleaned and "Engenho" in cleaned
    assert not cleaned.endswith("7")
    # the hyphen rule already joined one wrapped line, so 3 are left to join
    assert report["rejoin_hyphenated_words"] == 2 and report["join_wrapped_lines"] == 3
    assert report["drop_page_numbers"] == 2 and cleaned.endswith("cumprimentou.") and report["normalize_unicode"] >= 2
    assert clean_text(cleaned) == cleaned


# ---------------------------------------------------------------- splits and the prepared dataset


def catalog_of(sizes: dict[str, list[int]]) -> pd.DataFrame:
    rows = [{"category": c, "work": f"{c}{i}", "cleaned_bytes": s} for c, ss in sizes.items() for i, s in enumerate(ss)]
    return pd.DataFrame(rows)


def test_splits_are_by_work_stratified_seeded_and_close_to_the_fractions():
    rng = np.random.default_rng(0)
    catalog = catalog_of({c: list(rng.integers(1_000, 30_000, size=12)) for c in "abcdefgh"})
    split = assign_splits(catalog, 0.05, 0.05, seed=3)
    assert split.equals(assign_splits(catalog, 0.05, 0.05, seed=3))
    assert not split.equals(assign_splits(catalog, 0.05, 0.05, seed=4))
    shares = catalog.groupby(split)["cleaned_bytes"].sum() / catalog["cleaned_bytes"].sum()
    assert 0.0375 <= shares["val"] <= 0.0625 and 0.0375 <= shares["test"] <= 0.0625
    assert catalog.loc[split != "train", "category"].nunique() >= 4  # drawn across categories
    assert set(catalog.loc[split == "train", "category"]) == set("abcdefgh")  # every category trains


def test_small_corpora_still_get_val_and_test():
    catalog = catalog_of({"a": [5000, 90_000], "b": [4000, 80_000]})
    split = assign_splits(catalog, 0.05, 0.05)
    assert sorted(split) == ["test", "train", "train", "val"]
    with pytest.raises(ValueError, match="val_fraction"):
        assign_splits(catalog, 0.0, 0.05)


def test_prepare_dataset_end_to_end_and_idempotent(tmp_path):
    corpus = {f"{c}/w{i}.txt": f"{c} obra {i}\n\n" + PROSE * (i + 1) for c in ("romance", "conto", "poesia") for i in range(4)}
    write_tree(tmp_path / "corpus", corpus)
    prepared = prepare_dataset(tmp_path / "corpus", "toy", data_root=tmp_path / "data", val_fraction=0.1, test_fraction=0.1, progress=False)
    folder = tmp_path / "data" / "processed" / "toy"
    assert prepared.path == folder and prepared.rewritten
    catalog = pd.read_parquet(folder / "catalog.parquet")
    assert {"category", "work", "bytes", "characters", "lines", "words", "sha256", "split", "offset"} <= set(catalog.columns)
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["vocab_size"] == 256 and meta["cleaning_version"] == 1

    tok = ByteTokenizer()
    seen = {}
    for split in ("train", "val", "test"):
        data = load_split("toy", split, data_root=tmp_path / "data")
        assert data.dtype == np.uint8 and len(data) == meta["splits"][split]["bytes"]
        members = catalog[catalog["split"] == split]
        assert len(members) >= 1
        for row in members.itertuples():  # every work sits at its offset, cleaned
            source = (tmp_path / "corpus" / row.category / f"{row.work}.txt").read_text()
            assert tok.decode(data[row.offset : row.offset + row.cleaned_bytes]) == clean_text(source)
            seen[(row.category, row.work)] = split
    assert len(seen) == len(corpus)  # each work in exactly one split

    mtimes = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    again = prepare_dataset(tmp_path / "corpus", "toy", data_root=tmp_path / "data", val_fraction=0.1, test_fraction=0.1, progress=False)
    assert not again.rewritten
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == mtimes
    assert again.catalog.equals(catalog)
    changed = prepare_dataset(tmp_path / "corpus", "toy", data_root=tmp_path / "data", val_fraction=0.1, test_fraction=0.1, split_seed=9, progress=False)
    assert changed.rewritten


def test_no_validation_text_appears_in_train(tmp_path):
    corpus = {f"c{i % 3}/w{i}.txt": f"Obra número {i}. " + " ".join(f"palavra{i}x{j}" for j in range(400)) for i in range(12)}
    write_tree(tmp_path / "corpus", corpus)
    prepare_dataset(tmp_path / "corpus", "leak", data_root=tmp_path / "data", val_fraction=0.1, test_fraction=0.1, progress=False)
    train = bytes(load_split("leak", "train", data_root=tmp_path / "data"))
    for split in ("val", "test"):
        held_out = bytes(load_split("leak", split, data_root=tmp_path / "data")).decode()
        for paragraph in held_out.split("\n\n"):
            assert paragraph.encode() not in train


def test_bad_dataset_name_and_missing_dataset(tmp_path):
    with pytest.raises(ValueError, match="simple folder name"):
        prepare_dataset(tmp_path, "../evil", data_root=tmp_path / "data", progress=False)
    with pytest.raises(CorpusError, match="run notebooks/01_data_prep.ipynb"):
        load_split("nothing", "train", data_root=tmp_path / "data")


def test_the_data_package_re_exports_its_modules_public_names():
    import moelab.data
    from moelab.data import cleaning, dataset, prepare, sources, splits, stats

    for module in (sources, cleaning, splits, prepare, dataset, stats):
        for name in dir(module):
            value = getattr(module, name)
            if name.startswith("_") or getattr(value, "__module__", module.__name__) != module.__name__:
                continue  # private, or imported from elsewhere
            if callable(value) or name.isupper():
                assert getattr(moelab.data, name) is value and name in moelab.data.__all__, name


# ---------------------------------------------------------------------------- tokenizers


def _toy_corpus(tmp_path):
    corpus = {f"{c}/w{i}.txt": f"{c} obra {i} — ação, coração\n\n" + PROSE * (i + 1)
              for c in ("romance", "conto", "poesia") for i in range(4)}  # fmt: skip
    return write_tree(tmp_path / "corpus", corpus)


def test_bpe_dataset_holds_the_same_text_as_the_bytes_dataset(tmp_path):
    from moelab.data.tokenizer import BPETokenizer

    source, root = _toy_corpus(tmp_path), tmp_path / "data"
    settings = dict(data_root=root, val_fraction=0.1, test_fraction=0.1, progress=False)
    as_bytes = prepare_dataset(source, "toy-bytes", **settings)
    bpe = prepare_dataset(source, "toy-bpe", tokenizer="bpe", vocab_size=300, **settings)
    assert (bpe.meta["tokenizer"], bpe.meta["vocab_size"], bpe.meta["dtype"]) == ("bpe", 300, "uint16")
    assert bpe.catalog["split"].equals(as_bytes.catalog["split"])  # the same works in each split
    assert bpe.cleaned_texts().equals(as_bytes.cleaned_texts())  # every work decodes back to its cleaned text
    for split in ("train", "val", "test"):
        ids = load_split("toy-bpe", split, data_root=root)
        info = bpe.meta["splits"][split]
        assert ids.dtype == np.uint16 and len(ids) == info["tokens"] and info["bytes"] == 2 * info["tokens"]
        text = bytes(load_split("toy-bytes", split, data_root=root))
        assert bpe.tokenizer.to_bytes(ids.tolist()) == text  # the split file is the bytes dataset's text
        assert info["text_bytes"] == len(text) == as_bytes.meta["splits"][split]["text_bytes"]
        assert info["tokens"] < 0.8 * len(text)
        assert bpe.split_text(split) == as_bytes.split_text(split) == text.decode("utf-8")
        counts = bpe.token_counts().loc[split]
        assert counts["tokens"] == len(ids) and counts["bytes_per_token"] == pytest.approx(len(text) / len(ids))
        assert as_bytes.token_counts().loc[split, "bytes_per_token"] == 1
    # tokens by their length in bytes: the vocabulary and the training text they carry
    from moelab.data import token_length_profile

    train_ids = load_split("toy-bpe", "train", data_root=root)
    profile = token_length_profile(train_ids, bpe.tokenizer)
    assert profile["vocabulary"].sum() == 300 and profile.loc[1, "vocabulary"] == 256
    assert profile["bytes"].sum() == bpe.meta["splits"]["train"]["text_bytes"] and profile["tokens"].sum() == len(train_ids)
    assert profile["share_of_bytes"].sum() == pytest.approx(1.0)
    # the BPE was trained on the training split's works alone, in catalog order
    texts = as_bytes.cleaned_texts()
    train_texts = [texts[(row.category, row.work)] for row in as_bytes.catalog.itertuples() if row.split == "train"]
    assert BPETokenizer.train(train_texts, 300).to_json() == (bpe.path / "tokenizer.json").read_text(encoding="utf-8")
    assert prepare_dataset(source, tokenizer="bpe", vocab_size=300, **settings).path.name == "corpus-bpe300"


def test_a_missing_dataset_names_the_command_that_prepares_it(tmp_path, monkeypatch):
    import re
    import shlex

    from moelab.data import load_dataset
    from moelab.data.cli import main

    source, root = _toy_corpus(tmp_path), tmp_path / "data"
    monkeypatch.setenv("MOELAB_DATA_DIR", str(root))
    with pytest.raises(CorpusError, match=r"`moelab prepare machado --tokenizer bpe --vocab-size 2048`"):
        load_dataset("machado-bpe2048")
    with pytest.raises(CorpusError) as missing:
        load_dataset("toy-bpe300")
    command = re.search(r"`(moelab prepare [^`]+)`", str(missing.value))[1].replace("<its source>", str(source))
    assert command.endswith("--dataset toy-bpe300 --tokenizer bpe --vocab-size 300")
    assert main([*shlex.split(command)[2:], "--val-fraction", "0.1", "--test-fraction", "0.1", "--no-progress"]) == 0
    assert load_dataset("toy-bpe300").meta["vocab_size"] == 300  # the command made the dataset the name asked for


def test_a_bpe_vocabulary_larger_than_the_corpus_allows_is_refused(tmp_path):
    source = write_tree(tmp_path / "corpus", {f"c{i % 3}/w{i}.txt": f"abc {i}" for i in range(6)})
    with pytest.raises(CorpusError, match=r"only enough repeated pairs for a BPE vocabulary of \d+ tokens, not 5000"):
        prepare_dataset(source, "tiny-bpe", data_root=tmp_path / "data", tokenizer="bpe", vocab_size=5000,
                        val_fraction=0.2, test_fraction=0.2, progress=False)  # fmt: skip
    assert not (tmp_path / "data" / "processed" / "tiny-bpe").exists()


@pytest.mark.parametrize(
    "tokenizer, vocab_size, message",
    [("wordpiece", None, "tokenizer must be one of bytes, bpe"), ("bpe", 256, ">= 257"), ("bpe", None, ">= 257"),
     ("bpe", 70000, "at most 65536"), ("bytes", 512, "use tokenizer='bpe'")],
)  # fmt: skip
def test_bad_tokenizer_choices_are_refused_before_anything_is_read(tmp_path, tokenizer, vocab_size, message):
    with pytest.raises(ValueError, match=message):
        prepare_dataset(tmp_path / "no-such-corpus", "x", data_root=tmp_path / "data", tokenizer=tokenizer,
                        vocab_size=vocab_size, progress=False)  # fmt: skip
    assert not (tmp_path / "data").exists()
