"""Named datasets: download a public dataset once, check it, and cache it,
so ``--data tiny-shakespeare`` works.

Each dataset is one or more files with the URL of their original public source and a pinned SHA-256
of the file as stored. ``fetch(name)`` returns the local path, downloading first when the cache
lacks it:

    URL ──urllib, HTTP Range to resume──► NAME.part ──convert (if any)──► SHA-256 check ──rename──► NAME

The partial file ``NAME.part`` survives an interrupted download, and the next attempt asks the
server only for the missing bytes. The final name appears only after the checksum matched (a rename
is atomic), so the cache never holds a file that was not verified; on a mismatch the download is
deleted.

Where things live:
    TINYLLM_DATA_DIR       the cache (default ``~/.cache/tinyllm``); ``tinyllm data get NAME --dir DIR`` overrides it
    TINYLLM_DATA_MIRROR    a base URL that replaces every file's origin: ``MIRROR/<mirror path>`` (the tests serve a
                           local folder laid out like the cache, e.g. ``gsm8k/train.jsonl``, on
                           127.0.0.1)

How the pins were made: the SHA-256 of every file was computed from copies of the originals in the
project's shared data folder, except the SMS Spam Collection (see ``_sms_spam_to_tsv``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import sys
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import Callable

from ..files import atomic_write

CACHE_ENV, MIRROR_ENV = "TINYLLM_DATA_DIR", "TINYLLM_DATA_MIRROR"
CHUNK = 1 << 16


class DownloadError(RuntimeError):
    """A dataset could not be fetched or failed its checksum; the message says what to do."""


@dataclasses.dataclass(frozen=True)
class RemoteFile:
    # where it lies under the cache (and under a mirror): "gsm8k/train.jsonl"
    path: str
    url: str                          # its original public source
    sha256: str                       # of the stored file (after ``convert``)
    size: int                         # bytes of the stored file, for ``data list``
    convert: Callable[[bytes], bytes] | None = None   # downloaded bytes → stored bytes
    mirror_path: str | None = None    # the downloaded file's path on a mirror when it is converted


@dataclasses.dataclass(frozen=True)
class Dataset:
    name: str
    description: str
    files: tuple[RemoteFile, ...]
    licence: str
    citation: str

    def local_path(self, root: Path) -> Path:
        """What ``--data NAME`` stands for: the file, or the folder of a multi-file dataset."""
        paths = [root / f.path for f in self.files]
        return paths[0] if len(paths) == 1 else paths[0].parent


def _sms_spam_to_tsv(raw: bytes) -> bytes:
    """UCI's zip → ``label<TAB>text`` lines: its member ``SMSSpamCollection`` already has that
    shape, so this extracts it, checks every line, and normalises line endings with one final
    newline.

    The pinned SHA-256 is of this output computed from two independent public copies of
    ``SMSSpamCollection`` that agree with each other (up to the final newline, which this
    normalises) and with UCI's published counts (5,574 messages: 4,827 ham, 747 spam). The zip
    itself could not be downloaded where the pin was made, so its own hash is not pinned: the check
    is on the converted file. (The shared data folder's ``sms_spam.tsv`` is a different copy that
    lacks one ham message.)
    """
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as archive:
            text = archive.read("SMSSpamCollection").decode("utf-8")
    except (zipfile.BadZipFile, KeyError) as e:
        raise DownloadError("the SMS Spam Collection download is not the expected zip: "
                            f"{e}") from None
    lines = text.replace("\r\n", "\n").rstrip("\n").split("\n")
    for number, line in enumerate(lines, 1):
        if line.split("\t", 1)[0] not in ("ham", "spam") or "\t" not in line:
            raise DownloadError(f"SMSSpamCollection line {number} is not "
                                f"'ham|spam<TAB>text': {line[:60]!r}")
    return ("\n".join(lines) + "\n").encode("utf-8")


_RASBT = "https://raw.githubusercontent.com/rasbt/LLMs-from-scratch/main/"
_RASBT_CITATION = "Raschka, S. (2024). Build a Large Language Model (From Scratch). Manning. " \
                  "https://github.com/rasbt/LLMs-from-scratch"
_GSM8K = "https://raw.githubusercontent.com/openai/grade-school-math/master/grade_school_math/data/"
_GSM8K_CITATION = ("Cobbe, K. et al. (2021). Training Verifiers to Solve Math Word Problems. "
                   "arXiv:2110.14168")
_GPT2 = "https://openaipublic.blob.core.windows.net/gpt-2/models/124M/"

DATASETS = {d.name: d for d in [
    Dataset("tiny-shakespeare",
            "40,000 lines of Shakespeare's plays; nanoGPT's character-level pretraining set",
            (RemoteFile("tinyshakespeare.txt",
                        "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
                        "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
                        1_115_394),),
            "public-domain text; collected in karpathy/char-rnn (MIT)",
            "Karpathy, A. (2015). The Unreasonable Effectiveness of Recurrent Neural Networks. "
            "https://github.com/karpathy/char-rnn"),
    Dataset("the-verdict",
            "Edith Wharton's short story (1908), the first pretraining text of 'LLMs from scratch'",
            (RemoteFile("the-verdict.txt", _RASBT + "ch02/01_main-chapter-code/the-verdict.txt",
                        "b41e41a68f0398a3154ae69e2e4c0e2694e17fe0d66730536837f1b01935b31f", 20_479),
             ),
            "public-domain text", _RASBT_CITATION),
    Dataset("sms-spam",
            "UCI SMS Spam Collection as label<TAB>text (4,827 ham, 747 spam), for classification",
            (RemoteFile("sms_spam.tsv",
            "https://archive.ics.uci.edu/static/public/228/sms+spam+collection.zip",
            "7d039a24a6083ed9ef0f806ebad56bbb976e3aeb8de05669173bfdc4996c239d", 477_907,
            convert=_sms_spam_to_tsv, mirror_path="sms+spam+collection.zip"),),
            "CC BY 4.0",
            "Almeida, T. A., Gómez Hidalgo, J. M., Yamakami, A. (2011). Contributions to the Study "
            "of SMS Spam Filtering: New Collection and Results. DocEng '11"),
    Dataset("instruction-data",
            "1,100 Alpaca-style {instruction, input, output} records, for instruction tuning",
            (RemoteFile("instruction-data.json",
            _RASBT + "ch07/01_main-chapter-code/instruction-data.json",
            "7e09a9af353722ca15c18bc580f093f9c39d3178335a75177319cb1e1d163944", 203_524),),
            "Apache-2.0", _RASBT_CITATION),
    Dataset("preference-data",
            "the same 1,100 records with chosen/rejected responses, for reward models and DPO",
            (RemoteFile("preference-data.json",
            _RASBT + "ch07/04_preference-tuning-with-dpo/instruction-data-with-preference.json",
            "305315abf14f65fa42c01a0877572f832606571c2a7d49f152ac1d758b16756e", 386_968),),
            "Apache-2.0", _RASBT_CITATION),
    Dataset("gsm8k-train",
            "7,473 grade-school math word problems with worked answers ending '#### N'",
            (RemoteFile("gsm8k/train.jsonl", _GSM8K + "train.jsonl",
            "17f347dc51477c50d4efb83959dbb7c56297aba886e5544ee2aaed3024813465", 4_166_206),),
            "MIT", _GSM8K_CITATION),
    Dataset("gsm8k-test", "GSM8K's 1,319 test problems",
            (RemoteFile("gsm8k/test.jsonl", _GSM8K + "test.jsonl",
            "3730d312f6e3440559ace48831e51066acaca737f6eabec99bccb9e4b3c39d14", 749_738),),
            "MIT", _GSM8K_CITATION),
    Dataset("gpt2-bpe",
            "OpenAI GPT-2's BPE vocabulary and merges (encoder.json, vocab.bpe; 50,257 tokens)",
            (RemoteFile("gpt2/encoder.json", _GPT2 + "encoder.json",
            "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783", 1_042_301),
             RemoteFile("gpt2/vocab.bpe", _GPT2 + "vocab.bpe",
            "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5", 456_318)),
            "MIT (openai/gpt-2)",
            "Radford, A. et al. (2019). Language Models are Unsupervised Multitask Learners. "
            "OpenAI"),
]}


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "tinyllm")


def get_dataset(name: str) -> Dataset:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; the datasets are: {', '.join(DATASETS)} "
                         "(`tinyllm data list`)")
    return DATASETS[name]


def is_cached(dataset: Dataset, root=None) -> bool:
    root = Path(root) if root is not None else cache_dir()
    return all((root / f.path).is_file() for f in dataset.files)


def fetch(name: str, root=None, progress=True) -> Path:
    """The local path of dataset ``name`` (see ``Dataset.local_path``),
    downloaded and verified if not cached."""
    dataset = get_dataset(name)
    root = Path(root) if root is not None else cache_dir()
    for remote in dataset.files:
        if not (root / remote.path).is_file():
            _fetch_file(dataset.name, remote, root / remote.path, progress)
    return dataset.local_path(root)


def resolve_data(value):
    """What a ``--data`` flag names: an existing path as it is,
    else a dataset name fetched into the cache."""
    if value is None or Path(value).exists():
        return value
    if value in DATASETS:
        return str(fetch(value))
    # a bare word: a misspelt dataset name, not a file name
    if not any(c in value for c in "./\\"):
        raise FileNotFoundError(f"no file '{value}' and no dataset of that name; the datasets are: "
                                f"{', '.join(DATASETS)} (`tinyllm data list`)")
    return value


def sha256_of(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def source_url(remote: RemoteFile) -> str:
    """Where ``remote`` is downloaded from: its origin,
    or the same file under ``$TINYLLM_DATA_MIRROR``."""
    mirror = os.environ.get(MIRROR_ENV)
    return remote.url if not mirror else mirror.rstrip("/") + "/" + (remote.mirror_path
                                                                     or remote.path)


def _fetch_file(name: str, remote: RemoteFile, dest: Path, progress: bool) -> None:
    """Download (resuming a ``.part``), convert,
    verify and atomically place one file at ``dest``."""
    url = source_url(remote)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    download(url, part, label=f"{name}: {Path(remote.mirror_path or remote.path).name}",
             progress=progress,
             help_text=f"run `tinyllm data get {name}` again to resume, or download {url} "
                       f"yourself and place it at {dest}"
                       + (" (converted: see tinyllm/data/datasets.py)" if remote.convert else ""))
    stored = part.read_bytes() if remote.convert is not None else None
    if remote.convert is not None:
        try:
            stored = remote.convert(stored)
        except DownloadError:
            part.unlink()
            raise
    found = hashlib.sha256(stored).hexdigest() if stored is not None else sha256_of(part)
    if found != remote.sha256:
        part.unlink()
        raise DownloadError(f"{name}: the file from {url} has SHA-256 {found}, but {remote.sha256} "
                            "was expected. It was deleted; nothing was cached. The download was "
                            f"corrupted or the source changed: try `tinyllm data get {name}` "
                            "again, and if it fails the same way, report it")
    if stored is None:
        os.replace(part, dest)        # atomic: the verified file appears whole under its final name
    else:
        atomic_write(dest, stored)
        part.unlink()


def download(url: str, part: Path, label: str, progress: bool = True, help_text: str = "",
             timeout: float = 30.0):
    """Append ``url``'s bytes to ``part`` from where it stops (HTTP Range),
    with a progress line on stderr."""
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "tinyllm",
                                                   **({"Range": f"bytes={have}-"} if have else {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            if have and response.status != 206:     # the server ignored the range: start again
                have = 0
            length = response.headers.get("Content-Length")
            total = have + int(length) if length and length.isdigit() else None
            with open(part, "ab" if have else "wb") as f:
                done = have
                for block in iter(lambda: response.read(CHUNK), b""):
                    f.write(block)
                    done += len(block)
                    if progress and _percent(done, total) != _percent(done - len(block), total):
                        _progress(label, done, total)
        if progress:
            print(file=sys.stderr)
    except urllib.error.HTTPError as e:
        # nothing left to send: the partial file is complete
        if e.code == 416 and have:
            return
        raise DownloadError(f"could not download {url}: HTTP {e.code} {e.reason}. "
                            f"{help_text}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        kept = (f" ({part.stat().st_size:,} bytes kept in "
                f"{part})") if part.exists() and part.stat().st_size else ""
        raise DownloadError(f"could not download {url}: {reason}{kept}. Are you offline? "
                            "Check the network "
                            f"(or proxy settings), then {help_text}") from None


def _percent(done: int, total: int | None) -> int:
    return 100 * done // total if total else done // (1 << 20)


def _progress(label: str, done: int, total: int | None) -> None:
    size = (f"{done / 1e6:.1f}/{total / 1e6:.1f} MB "
            f"({100 * done / total:.0f}%)") if total else f"{done / 1e6:.1f} MB"
    print(f"\r{label}: {size}", end="", file=sys.stderr, flush=True)
