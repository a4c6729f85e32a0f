"""The dataset downloader against a local HTTP server (127.0.0.1, ephemeral port): never the network."""

import hashlib
import http.server
import io
import socket
import threading
import zipfile
from pathlib import Path

import pytest

from tinyllm.cli import main
from tinyllm.data import datasets
from tinyllm.data.datasets import DATASETS, Dataset, DownloadError, RemoteFile, fetch, resolve_data

SHARED = Path(__file__).parents[1].parent / "shared" / "data"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data is absent")

TEXT = b"A small test file.\n" * 500


class Mirror(http.server.BaseHTTPRequestHandler):
    """Serves ``files`` (path → bytes) with HTTP Range support; records each request's path and Range."""
    files: dict = {}
    requests: list = []

    def do_GET(self):
        path = self.path.lstrip("/")
        self.requests.append((path, self.headers.get("Range")))
        if path not in self.files:
            self.send_error(404)
            return
        data = self.files[path]
        start = 0
        if self.headers.get("Range"):
            start = int(self.headers["Range"].split("=")[1].rstrip("-"))
            if start >= len(data):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:])

    def log_message(self, *args):
        pass


@pytest.fixture
def mirror(monkeypatch, tmp_path):
    """A running mirror (its ``files`` to fill in) and an empty cache, with the environment pointing at both."""
    Mirror.files, Mirror.requests = {}, []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Mirror)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    monkeypatch.setenv(datasets.MIRROR_ENV, f"http://127.0.0.1:{server.server_address[1]}/")
    monkeypatch.setenv(datasets.CACHE_ENV, str(tmp_path / "cache"))
    yield Mirror
    server.shutdown()
    server.server_close()


@pytest.fixture
def toy(monkeypatch):
    """A registered dataset 'toy' whose pinned hash is TEXT's."""
    remote = RemoteFile("toy/toy.txt", "https://example.invalid/toy.txt", hashlib.sha256(TEXT).hexdigest(), len(TEXT))
    monkeypatch.setitem(DATASETS, "toy", Dataset("toy", "a test file", (remote,), "CC0", "nobody"))
    return remote


def cache_files():
    root = datasets.cache_dir()
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []


def test_happy_path_downloads_once_then_reads_the_cache(mirror, toy):
    mirror.files["toy/toy.txt"] = TEXT
    path = fetch("toy", progress=False)
    assert path.read_bytes() == TEXT and cache_files() == ["toy/toy.txt"]
    assert fetch("toy", progress=False) == path and len(mirror.requests) == 1


def test_a_partial_download_is_resumed_with_a_range_request(mirror, toy):
    mirror.files["toy/toy.txt"] = TEXT
    part = datasets.cache_dir() / "toy" / "toy.txt.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(TEXT[:3000])                      # what an interrupted download left
    path = fetch("toy", progress=False)
    assert mirror.requests == [("toy/toy.txt", "bytes=3000-")]
    assert path.read_bytes() == TEXT and cache_files() == ["toy/toy.txt"]


def test_a_complete_partial_file_is_verified_without_downloading_again(mirror, toy):
    mirror.files["toy/toy.txt"] = TEXT
    part = datasets.cache_dir() / "toy" / "toy.txt.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(TEXT)
    assert fetch("toy", progress=False).read_bytes() == TEXT          # the server answered 416


def test_a_checksum_mismatch_names_the_url_and_leaves_the_cache_clean(mirror, toy):
    mirror.files["toy/toy.txt"] = TEXT.replace(b"small", b"SMALL", 1)
    with pytest.raises(DownloadError, match=r"toy/toy.txt has SHA-256 [0-9a-f]{64}, but .* was expected.*deleted"):
        fetch("toy", progress=False)
    assert cache_files() == []
    mirror.files["toy/toy.txt"] = TEXT                 # the next attempt starts from nothing and succeeds
    assert fetch("toy", progress=False).read_bytes() == TEXT


def test_server_down_is_a_clear_error(monkeypatch, tmp_path, toy):
    with socket.socket() as s:                         # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv(datasets.MIRROR_ENV, f"http://127.0.0.1:{port}")
    monkeypatch.setenv(datasets.CACHE_ENV, str(tmp_path))
    with pytest.raises(DownloadError, match=rf"could not download http://127.0.0.1:{port}/toy/toy.txt: .*offline.*"
                                            r"tinyllm data get toy"):
        fetch("toy", progress=False)
    assert not (tmp_path / "toy" / "toy.txt").exists()


def test_a_missing_file_on_the_server_is_a_clear_error(mirror, toy):
    with pytest.raises(DownloadError, match="HTTP 404"):
        fetch("toy", progress=False)


def test_an_unknown_name_lists_the_valid_ones(capsys):
    assert main(["data", "get", "tiny-shakspeare"]) == 2
    err = capsys.readouterr().err
    assert "unknown dataset 'tiny-shakspeare'" in err and "tiny-shakespeare, the-verdict, sms-spam" in err
    with pytest.raises(FileNotFoundError, match="no dataset of that name; the datasets are: tiny-shakespeare"):
        resolve_data("tiny-shakspeare")
    assert resolve_data("some/file.txt") == "some/file.txt"      # paths pass through to the readers' own errors


def test_data_list_and_get_on_the_command_line(mirror, toy, capsys, tmp_path):
    mirror.files["toy/toy.txt"] = TEXT
    assert main(["data", "get", "toy", "--dir", str(tmp_path / "elsewhere")]) == 0
    out = capsys.readouterr().out
    assert "toy/toy.txt" in out and "licence  CC0" in out and (tmp_path / "elsewhere" / "toy" / "toy.txt").exists()
    assert main(["data", "list", "--dir", str(tmp_path / "elsewhere")]) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in DATASETS) and "yes" in listing


def test_sms_spam_is_converted_from_the_uci_zip(mirror, monkeypatch):
    collection = "ham\tOk lar...\r\nspam\tFree entry in 2 a wkly comp\r\nham\tU dun say so early hor"
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("SMSSpamCollection", collection)
        z.writestr("readme", "test")
    mirror.files["sms+spam+collection.zip"] = archive.getvalue()
    expected = "ham\tOk lar...\nspam\tFree entry in 2 a wkly comp\nham\tU dun say so early hor\n".encode()
    sms = DATASETS["sms-spam"]
    remote = RemoteFile(**{**sms.files[0].__dict__, "sha256": hashlib.sha256(expected).hexdigest()})
    monkeypatch.setitem(DATASETS, "sms-spam", Dataset(**{**sms.__dict__, "files": (remote,)}))
    assert fetch("sms-spam", progress=False).read_bytes() == expected
    assert cache_files() == ["sms_spam.tsv"]


def test_a_bad_sms_zip_is_refused_and_deleted(mirror):
    mirror.files["sms+spam+collection.zip"] = b"not a zip"
    with pytest.raises(DownloadError, match="not the expected zip"):
        fetch("sms-spam", progress=False)
    assert cache_files() == []


@needs_shared
def test_the_pinned_hashes_are_those_of_the_reference_copies():
    for dataset in DATASETS.values():
        for remote in dataset.files:
            if remote.convert is None:
                assert datasets.sha256_of(SHARED / remote.path) == remote.sha256, remote.path
                assert (SHARED / remote.path).stat().st_size == remote.size


@needs_shared
def test_every_data_flag_takes_a_dataset_name(mirror, tmp_path, capsys):
    mirror.files["the-verdict.txt"] = (SHARED / "the-verdict.txt").read_bytes()
    out = tmp_path / "tok.json"
    assert main(["tokenizer", "train", "--data", "the-verdict", "--vocab-size", "260", "--out", str(out)]) == 0
    assert out.exists() and (datasets.cache_dir() / "the-verdict.txt").exists()


@needs_shared
def test_a_two_file_dataset_resolves_to_its_folder(mirror):
    for name in ("encoder.json", "vocab.bpe"):
        mirror.files[f"gpt2/{name}"] = (SHARED / "gpt2" / name).read_bytes()
    folder = Path(resolve_data("gpt2-bpe"))
    assert folder == datasets.cache_dir() / "gpt2" and cache_files() == ["gpt2/encoder.json", "gpt2/vocab.bpe"]
