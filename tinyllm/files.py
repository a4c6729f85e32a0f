"""Atomic writes and friendly reads for the small files a run directory holds.

A training run that is killed halfway through saving a checkpoint must not leave a half-written
``model.safetensors`` behind, or the next ``--resume`` fails with a confusing error (or, worse,
loads garbage). The standard recipe, used here for every file tinyllm writes:

1. write the new contents to a temporary file *in the same directory*
   (so step 3 stays on one file system),
2. flush Python's buffer and ``os.fsync`` the file,
   so the bytes are on disk and not only in the OS cache,
3. ``os.replace(temp, path)``, which renames atomically: a reader sees the old file or the new one,
   never a mix,
4. fsync the directory too (where the OS allows it), so the rename itself survives a power cut.

If anything fails before step 3, the temporary file is deleted and the old file is untouched.

The readers turn low-level errors into messages that name the file and what was expected there::

    >>> read_json("runs/x/config.json")
    FileNotFoundError: no config file at runs/x/config.json
    >>> read_json("bad.json")
    ValueError: bad.json is not valid JSON: line 3, column 5: Expecting ',' delimiter

JSON Lines (``log.jsonl``: one JSON object per line) is the training log format: appending one line
is cheap and a crash loses at most the last, partial line.
"""

from __future__ import annotations

import json
import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, BinaryIO

__all__ = ["read_records", "atomic_write", "atomic_write_with", "atomic_write_json", "read_json",
           "append_jsonl", "read_jsonl", "written_together"]

_staged = None   # inside ``written_together``: (temporary file, final path) pairs to rename


def _fsync_directory(directory: str) -> None:
    """Make a rename in ``directory`` durable. Not possible on Windows (and some file systems):
    skipped there."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _create_temp_file(directory: str, name: str) -> tuple[int, str]:
    """Open a new, uniquely named hidden file next to ``name`` for writing; returns (fd, path).

    Created with mode 0o666 so the process umask applies, exactly as for a file made by ``open``
    (``tempfile.mkstemp`` would make it 0o600, private to the owner).
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        temp_path = os.path.join(directory, f".{name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(temp_path, flags, 0o666), temp_path
        except FileExistsError:  # astronomically unlikely: pick another name
            continue


def atomic_write_with(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> None:
    """Create or replace ``path`` atomically with whatever ``write(file)`` writes to the binary file
    it is given.

    Use this when the contents are produced in pieces (a safetensors header, then each tensor's
    bytes) and joining them into one ``bytes`` object first would double the memory.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"cannot write {path}: directory {directory} does not exist")
    fd, temp_path = _create_temp_file(directory, os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        try:  # replacing a file keeps its permissions, as writing it in place would
            os.chmod(temp_path, os.stat(path).st_mode & 0o7777)
        except FileNotFoundError:
            pass
        if _staged is not None:            # renamed at the end of ``written_together``
            _staged.append((temp_path, path))
            return
        os.replace(temp_path, path)
    except BaseException:  # also on KeyboardInterrupt: never leave the temp file behind
        try:
            os.unlink(temp_path)
        except FileNotFoundError:
            pass
        raise
    _fsync_directory(directory)


@contextmanager
def written_together():
    """The files written atomically inside this block replace their old versions together, at its
    end.

    A checkpoint is several files (the optimizer state, the weights, the config). Each is written in
    full to its temporary file and fsynced as usual, but the renames wait until the block is done
    and then run back to back: a process killed while writing (say, by ``mpiexec`` when another
    process of the job failed) leaves the previous checkpoint whole, instead of new weights beside
    an old optimizer state. If the block raises, none of its files replaces anything. Only a kill
    during the renames themselves, microseconds, can separate them; the step recorded in each file
    catches that (``checkpoint.load_train_state``)."""
    global _staged
    if _staged is not None:               # inside another such block: that one renames
        yield
        return
    _staged = staged = []
    try:
        yield
    except BaseException:
        for temp_path, _ in staged:
            try:
                os.unlink(temp_path)
            except FileNotFoundError:
                pass
        raise
    finally:
        _staged = None
    for temp_path, path in staged:
        os.replace(temp_path, path)
    for directory in dict.fromkeys(os.path.dirname(os.path.abspath(path)) for _, path in staged):
        _fsync_directory(directory)


def atomic_write(path: str | os.PathLike, data: bytes | str) -> None:
    """Create or replace ``path`` with ``data`` (str is written as UTF-8)
    so that it is never half-written."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    elif not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"atomic_write({os.fspath(path)!r}) needs bytes or str, got "
                        f"{type(data).__name__}")
    atomic_write_with(path, lambda file: file.write(data))


def atomic_write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2,
                      sort_keys: bool = False) -> None:
    """Write ``obj`` as pretty JSON (UTF-8, non-ASCII kept readable, trailing newline)
    atomically."""
    try:
        text = json.dumps(obj, indent=indent, sort_keys=sort_keys, ensure_ascii=False,
                          allow_nan=True)
    except TypeError as e:
        raise TypeError(f"cannot write {os.fspath(path)} as JSON: {e}") from e
    atomic_write(path, text + "\n")


def _parse_json(text: str, where: str) -> Any:
    """``json.loads`` whose error names ``where`` (a file, or a file and a line)
    and the line and column."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where} is not valid JSON: line {e.lineno}, column {e.colno}: "
                         f"{e.msg}") from None
    except RecursionError:
        raise ValueError(f"{where} is not usable JSON: it is nested too deeply") from None


def read_utf8(path, what: str) -> str:
    """The text of a UTF-8 file; a missing file,
    a directory or other bytes are errors naming ``what`` it is."""
    try:
        with open(path, "r", encoding="utf-8") as file:
            return file.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"no {what} file at {path}") from None
    except IsADirectoryError:
        raise IsADirectoryError(f"expected a {what} file at {path}, found a directory") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{what} file {path} is not UTF-8 text (byte {e.start}: "
                         f"{e.reason})") from None


def read_json(path: str | os.PathLike, what: str = "config") -> Any:
    """Read a JSON file; ``what`` names it in errors ("no config file at runs/x/config.json")."""
    path = os.fspath(path)
    return _parse_json(read_utf8(path, what), f"{what} file {path}")


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    """Append ``record`` as one JSON line to ``path`` (created if missing) and flush it to the OS.

    Not atomic in the rename sense (a log grows line by line), but each record is one ``write`` of a
    complete line, so a crash leaves at most one partial last line, which ``read_jsonl`` can skip.
    """
    path = os.fspath(path)
    try:
        line = json.dumps(record, ensure_ascii=False)
    except TypeError as e:
        raise TypeError(f"cannot append to {path}: record is not JSON-serialisable: {e}") from e
    with open(path, "a", encoding="utf-8") as file:
        file.write(line + "\n")
        file.flush()


def read_jsonl(path: str | os.PathLike, what: str = "log", *,
               skip_partial_last_line: bool = True) -> list:
    """Read a JSON Lines file into a list of records; blank lines are skipped.

    A bad line raises ValueError naming the file and line number. The exception is a last line
    without its newline that does not parse: that is what a crash in the middle of ``append_jsonl``
    leaves, so by default it is dropped rather than making the whole log unreadable.
    """
    path = os.fspath(path)
    text = read_utf8(path, what)
    lines = text.split("\n")
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        is_partial_last = number == len(lines) and not text.endswith("\n")
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            if is_partial_last and skip_partial_last_line:
                break
            raise ValueError(f"{what} file {path}, line {number} is not valid JSON: column "
                             f"{e.colno}: {e.msg}") from None
    return records


def read_records(path, check, what: str) -> list[dict]:
    """Records from a JSONL file (one object per line) or a JSON file (one list), each passed
    through ``check(record, where)``; bad JSON names the file and line, an empty file is an
    error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no {what} data file at '{path}'")
    text = path.read_text(encoding="utf-8")
    records = []
    if path.suffix.lower() == ".jsonl":
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}, line {number}: not valid JSON ({e.msg} at "
                                 f"column {e.colno})") from None
            records.append(check(record, f"{path}, line {number}"))
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}, line {e.lineno}: not valid JSON ({e.msg} at column "
                             f"{e.colno}); a .json file must hold one list of records (use .jsonl "
                             "for one record per line)") from None
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON list of {what} records, got "
                             f"{type(data).__name__}")
        records = [check(r, f"{path}, record {i}") for i, r in enumerate(data)]
    if not records:
        raise ValueError(f"{what} data file '{path}' holds no records")
    return records
