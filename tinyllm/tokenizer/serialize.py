"""Reading and writing tokenizer files: JSON with clear errors, and byte strings a person can read.

A BPE token is a byte string, not always valid UTF-8 (a merge can split a multi-byte character). In
files we write each token as text: its valid UTF-8 stays as it is, each byte that is not part of
valid UTF-8 becomes ``\\xNN`` (two lowercase hex digits) and a backslash becomes ``\\\\``. So
``b" the"`` is ``" the"`` and the first two bytes of "€" (``b"\\xe2\\x82"``) are ``"\\xe2\\x82"``.
The escaping is reversible: ``unescape_bytes(escape_bytes(b)) == b`` for every ``b``.
"""

from __future__ import annotations

import json
import os
import re

_ESCAPE = re.compile(r"\\(\\|x[0-9a-fA-F]{2})")


def escape_bytes(token: bytes) -> str:
    """Bytes -> readable text: UTF-8 where valid, ``\\xNN`` for other bytes,
    ``\\\\`` for a backslash."""
    return token.replace(b"\\", b"\\\\").decode("utf-8", errors="backslashreplace")


def unescape_bytes(text: str) -> bytes:
    """The inverse of :func:`escape_bytes`. A backslash not starting an escape stands for itself."""
    out, pos = bytearray(), 0
    for match in _ESCAPE.finditer(text):
        out += text[pos : match.start()].encode("utf-8")
        code = match.group(1)
        out += b"\\" if code == "\\" else bytes((int(code[1:], 16),))
        pos = match.end()
    out += text[pos:].encode("utf-8")
    return bytes(out)


def read_tokenizer_json(path: str | os.PathLike) -> dict:
    """Parse a tokenizer JSON file; a malformed one raises ValueError naming the file and line.

    A missing file raises FileNotFoundError as usual.
    """
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError as e:
        raise ValueError(f"tokenizer file '{path}' is not UTF-8 text (byte {e.start})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(
            f"tokenizer file '{path}' is not valid JSON, is it truncated? line {e.lineno}, column "
            f"{e.colno}: {e.msg}"
        ) from None
    if not isinstance(data, dict) or "format" not in data:
        raise ValueError(f"tokenizer file '{path}' has no \"format\" field; it is not a "
                         "tinyllm tokenizer")
    return data


def check_format(data: dict, path, name: str, version: int) -> None:
    """Raise ValueError unless ``data`` says it is format ``name`` at a ``version`` we can read."""
    if data.get("format") != name:
        raise ValueError(f"tokenizer file '{path}' has format {data.get('format')!r}, "
                         f"expected {name!r}")
    if data.get("version") != version:
        raise ValueError(
            f"tokenizer file '{path}' is {name} version {data.get('version')!r}; this tinyllm "
            f"reads version {version}"
        )


def write_text_atomically(path: str | os.PathLike, text: str) -> None:
    """Write a UTF-8 file so that a crash leaves the old file or the new one, never half of one."""
    temporary = f"{os.fspath(path)}.tmp"
    with open(temporary, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(temporary, path)


def dump_json_lines(header: dict, list_key: str, items: list) -> str:
    """JSON text for ``header`` plus one list whose items go one per line,
    so a diff or a reader can follow it."""
    lines = ["{"]
    for key, value in header.items():
        lines.append(f"  {json.dumps(key)}: {json.dumps(value, ensure_ascii=False)},")
    lines.append(f"  {json.dumps(list_key)}: [")
    lines.append(",\n".join("    " + json.dumps(item, ensure_ascii=False) for item in items))
    lines.append("  ]")
    lines.append("}")
    return "\n".join(lines) + "\n"
