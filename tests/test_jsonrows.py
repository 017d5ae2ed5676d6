"""kollm.jsonrows, the one reader of row files: every malformed line is one counted reason (the
same for every stage), per file and with file:line examples; a `null` line is a bad row, not a
crash (SFT) or a silent drop (GRPO)."""

import gzip
import json

from kollm.data.chat import RowErrors, read_conversations
from kollm.jsonrows import iter_rows

GOOD = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}


def _write(path, lines: list[bytes]):
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_every_malformed_line_is_one_reason(tmp_path):
    f = _write(tmp_path / "a.jsonl", [json.dumps(GOOD).encode(), b"null", b"3", b"[1]", b"{oops", b"\xff{}",
                                      b'{"text": "\\udc80"}', b"[" * 100_000 + b"]" * 100_000, b"",
                                      json.dumps(GOOD).encode()])
    got = [(line, reason) for line, _, reason in iter_rows(f)]
    assert got == [(1, None), (2, "not_an_object"), (3, "not_an_object"), (4, "not_an_object"), (5, "bad_json"),
                   (6, "invalid_utf8"), (7, "invalid_utf8"), (8, "nested_too_deep"), (10, None)]
    gz = tmp_path / "b.jsonl.gz"
    gz.write_bytes(gzip.compress(b"null\n" + json.dumps(GOOD).encode() + b"\n")[:-12])  # cut short
    assert [r for _, _, r in iter_rows(gz)][-1].startswith("unreadable_file")


def test_a_null_chat_row_is_counted_per_file(tmp_path):
    # `null` used to crash SFT, distillation and the data judge (AttributeError in RowErrors.add)
    (tmp_path / "d").mkdir()
    a = _write(tmp_path / "d" / "a.jsonl", [json.dumps(GOOD).encode(), b"null"])
    b = _write(tmp_path / "d" / "b.jsonl", [b"null", b"null", json.dumps({"messages": []}).encode()])
    errors = RowErrors()
    rows = list(read_conversations(tmp_path / "d", errors))
    assert [(f, line) for f, line, _, _ in rows] == [(str(a), 1)]
    d = errors.to_dict()
    assert d["total"] == 4 and d["counts"] == {"not_an_object": 3, "no_assistant_turn": 1}
    assert d["files"] == {str(a): {"not_an_object": 1}, str(b): {"not_an_object": 2, "no_assistant_turn": 1}}
    assert d["examples"]["not_an_object"] == [f"{a}:2", f"{b}:1", f"{b}:2"]
