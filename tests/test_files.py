"""tinyllm.files: atomic writes that never leave half a file, and reads whose errors say where to look."""

import json
import os
import stat

import pytest

from tinyllm.files import (append_jsonl, atomic_write, atomic_write_json, atomic_write_with, read_json,
                           read_jsonl, written_together)


def test_atomic_write_creates_and_replaces_bytes_and_text(tmp_path):
    path = tmp_path / "out.txt"
    atomic_write(path, b"first")
    assert path.read_bytes() == b"first"
    atomic_write(str(path), "second, in UTF-8: é")
    assert path.read_text(encoding="utf-8") == "second, in UTF-8: é"
    assert os.listdir(tmp_path) == ["out.txt"]


def test_atomic_write_gives_ordinary_permissions(tmp_path):
    path = tmp_path / "config.json"
    atomic_write(path, "{}")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, "temp files are 0600; the result should not be"


def test_atomic_write_rejects_other_types(tmp_path):
    with pytest.raises(TypeError, match="bytes or str"):
        atomic_write(tmp_path / "x", 123)


def test_failure_midway_keeps_the_old_file_and_removes_the_temp_file(tmp_path):
    path = tmp_path / "model.bin"
    atomic_write(path, b"old contents")

    def write_half_then_fail(file):
        file.write(b"new contents, first half")
        raise RuntimeError("crashed halfway (simulated)")

    with pytest.raises(RuntimeError, match="simulated"):
        atomic_write_with(path, write_half_then_fail)
    assert path.read_bytes() == b"old contents"
    assert os.listdir(tmp_path) == ["model.bin"]


def test_failed_rename_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "config.json"
    atomic_write_json(path, {"old": True})

    def failing_replace(source, destination):
        raise OSError("rename failed (simulated)")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="simulated"):
        atomic_write_json(path, {"new": True})
    assert read_json(path) == {"old": True}
    assert os.listdir(tmp_path) == ["config.json"]


def test_atomic_write_json_is_pretty_and_round_trips(tmp_path):
    config = {"n_layer": 2, "name": "tiny ✓", "lr": 3e-4, "nested": {"b": [1, 2], "a": None}}
    atomic_write_json(tmp_path / "config.json", config, sort_keys=True)
    text = (tmp_path / "config.json").read_text(encoding="utf-8")
    assert text.endswith("\n") and '\n  "lr": 0.0003' in text and "tiny ✓" in text
    assert text.index('"lr"') < text.index('"n_layer"'), "sort_keys=True should sort"
    assert read_json(tmp_path / "config.json") == config


def test_atomic_write_json_names_the_file_for_unserialisable_values(tmp_path):
    with pytest.raises(TypeError, match="config.json"):
        atomic_write_json(tmp_path / "config.json", {"a": object()})
    assert not (tmp_path / "config.json").exists()


def test_read_json_missing_file_names_what_and_where(tmp_path):
    missing = tmp_path / "runs" / "x" / "config.json"
    with pytest.raises(FileNotFoundError, match=f"no config file at {missing}"):
        read_json(missing)
    with pytest.raises(FileNotFoundError, match="no tokenizer file at"):
        read_json(tmp_path / "tokenizer.json", what="tokenizer")


def test_read_json_bad_json_names_file_line_and_column(tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{\n  "n_layer": 2\n  "n_head": 4\n}\n')  # missing comma at the end of line 2
    with pytest.raises(ValueError, match=r"config file .*config.json is not valid JSON: line 3, column 3: Expecting ','"):
        read_json(path)


def test_read_json_non_utf8_and_directory(tmp_path):
    (tmp_path / "latin1.json").write_bytes(b'{"name": "caf\xe9"}')
    with pytest.raises(ValueError, match="latin1.json is not UTF-8"):
        read_json(tmp_path / "latin1.json")
    with pytest.raises(IsADirectoryError, match="found a directory"):
        read_json(tmp_path)


def test_append_and_read_jsonl(tmp_path):
    path = tmp_path / "log.jsonl"
    records = [{"kind": "train", "step": 1, "loss": 3.5}, {"kind": "eval", "step": 1, "val_loss": 3.7, "note": "é"}]
    for record in records:
        append_jsonl(path, record)
    assert read_jsonl(path) == records
    assert path.read_text(encoding="utf-8").count("\n") == 2


def test_read_jsonl_names_the_bad_line(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"step": 1}\n\n{"step": 2,}\n{"step": 3}\n')
    with pytest.raises(ValueError, match=r"log.jsonl, line 3 is not valid JSON"):
        read_jsonl(path)


def test_read_jsonl_skips_a_partial_last_line_left_by_a_crash(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n{"step": 3, "lo')
    assert read_jsonl(path) == [{"step": 1}, {"step": 2}]
    with pytest.raises(ValueError, match="line 3"):
        read_jsonl(path, skip_partial_last_line=False)


def test_read_jsonl_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no log file at"):
        read_jsonl(tmp_path / "log.jsonl")


def test_non_finite_numbers_survive_the_log(tmp_path):
    # A diverged run logs loss = nan; Python's json writes and reads it (as the non-standard NaN token).
    path = tmp_path / "log.jsonl"
    append_jsonl(path, {"loss": float("nan"), "grad_norm": float("inf")})
    record = read_jsonl(path)[0]
    assert record["loss"] != record["loss"] and record["grad_norm"] == float("inf")
    assert json.loads(path.read_text())["grad_norm"] == float("inf")


def test_replacing_a_file_keeps_its_permissions(tmp_path):
    path = tmp_path / "script.sh"
    atomic_write(path, "echo old\n")
    os.chmod(path, 0o750)
    atomic_write(path, "echo new\n")
    assert stat.S_IMODE(path.stat().st_mode) == 0o750


def test_writing_into_a_missing_directory_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="directory .*no_such_dir does not exist"):
        atomic_write(tmp_path / "no_such_dir" / "config.json", "{}")


def test_files_written_together_appear_together_at_the_end_of_the_block(tmp_path):
    (tmp_path / "a").write_text("old a")
    (tmp_path / "b").write_text("old b")
    with written_together():
        atomic_write(tmp_path / "a", "new a")
        atomic_write(tmp_path / "b", "new b")
        assert (tmp_path / "a").read_text() == "old a", "renamed before the block ended"
    assert [(tmp_path / n).read_text() for n in "ab"] == ["new a", "new b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]


def test_a_block_that_fails_replaces_none_of_its_files(tmp_path):
    (tmp_path / "a").write_text("old a")
    with pytest.raises(OSError, match="killed"):
        with written_together():
            atomic_write(tmp_path / "a", "new a")
            atomic_write(tmp_path / "b", "new b")
            raise OSError("killed while writing")
    assert (tmp_path / "a").read_text() == "old a" and not (tmp_path / "b").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"], "a temporary file was left behind"

