import json
import logging
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from csr.core.errors import CSRError
from csr.core.io import (
    JsonlWriter,
    atomic_write_json,
    atomic_write_text,
    completed_ids,
    done_stats,
    is_done,
    last_line,
    mark_done,
    read_json,
    read_jsonl,
    remove_stale_temp_files,
)


def test_atomic_write_creates_parents_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "out.json"
    atomic_write_json(target, {"z": 1, "a": [1, 2], "text": "héllo"})
    atomic_write_json(target, {"z": 2, "a": []})  # overwrite in place
    assert read_json(target) == {"z": 2, "a": []}
    # Key order is preserved (sort_keys=False) and output is indented for humans.
    assert target.read_text(encoding="utf-8").startswith('{\n  "z": 2,')
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.json"]

    atomic_write_text(tmp_path / "t.txt", "line\n")
    assert (tmp_path / "t.txt").read_text() == "line\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "t.txt"]


def test_atomic_write_failure_keeps_old_file_and_cleans_temp(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    atomic_write_json(target, {"ok": True})
    with pytest.raises(TypeError):
        atomic_write_json(target, {"bad": object()})  # not JSON-serialisable: fails before any write
    with pytest.raises(TypeError):
        atomic_write_text(target, b"bytes are not text")  # type: ignore[arg-type]  # fails mid-write
    assert read_json(target) == {"ok": True}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_read_json_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "broken.json"
    bad.write_text('{"a": 1,\n  oops}')
    with pytest.raises(CSRError, match=r"broken\.json.*line 2 column 3"):
        read_json(bad)
    with pytest.raises(CSRError, match=r"absent\.json"):
        read_json(tmp_path / "absent.json")


def test_jsonl_round_trip_and_append(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "out.jsonl"
    records = [{"id": "1", "text": "naïve café ✓"}, {"id": "2", "score": 0.25, "list": [1, None]}]
    with JsonlWriter(path) as w:
        for r in records:
            w.write(r)
    with JsonlWriter(path) as w:  # reopening appends, never truncates
        w.write({"id": "3"})
    assert read_jsonl(path) == [*records, {"id": "3"}]
    # ensure_ascii=False: non-ASCII text stays readable in the file.
    assert "naïve café ✓" in path.read_text(encoding="utf-8")
    assert path.read_text(encoding="utf-8").count("\n") == 3
    assert completed_ids(path) == {"1", "2", "3"}


def test_missing_jsonl_is_empty(tmp_path: Path) -> None:
    assert read_jsonl(tmp_path / "nope.jsonl") == []
    assert completed_ids(tmp_path / "nope.jsonl") == set()


def test_writer_rejects_non_dict(tmp_path: Path) -> None:
    with JsonlWriter(tmp_path / "x.jsonl") as w, pytest.raises(CSRError, match="must be a dict"):
        w.write(["not", "a", "dict"])  # type: ignore[arg-type]


@pytest.mark.parametrize("torn", ['{"id": "3", "te', '{"id": "3"}', "garbage\n"])
def test_torn_last_line_repair_then_resume(
    tmp_path: Path, torn: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "out.jsonl"
    with JsonlWriter(path) as w:
        w.write({"id": "1"})
        w.write({"id": "2"})
    good_size = path.stat().st_size
    with path.open("a", encoding="utf-8") as fh:
        fh.write(torn)  # what a crash mid-write leaves behind

    with pytest.raises(CSRError, match=r"out\.jsonl: line 3"):
        read_jsonl(path)
    with pytest.raises(CSRError, match="torn"):
        JsonlWriter(path).__enter__()  # appending now would glue records together

    with caplog.at_level(logging.WARNING):
        done = completed_ids(path)  # repairs
    assert done == {"1", "2"}
    assert "torn" in caplog.text
    assert path.stat().st_size == good_size

    with JsonlWriter(path) as w:  # the resumed stage redoes only the dropped record
        for rid in ["1", "2", "3"]:
            if rid not in done:
                w.write({"id": rid})
    assert [r["id"] for r in read_jsonl(path)] == ["1", "2", "3"]
    assert completed_ids(path) == {"1", "2", "3"}


def test_torn_only_line_truncates_to_empty(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    path.write_text('{"id"')
    assert read_jsonl(path, repair=True) == []
    assert path.stat().st_size == 0


@pytest.mark.parametrize("bad", ["not json", "", "[1, 2]"])
def test_corrupt_middle_line_always_raises(tmp_path: Path, bad: str) -> None:
    path = tmp_path / "mid.jsonl"
    path.write_text('{"id": "1"}\n' + bad + '\n{"id": "3"}\n')
    for repair in (False, True):
        with pytest.raises(CSRError, match=r"mid\.jsonl: line 2"):
            read_jsonl(path, repair=repair)
    assert path.read_text() == '{"id": "1"}\n' + bad + '\n{"id": "3"}\n'  # never "repaired"


def test_completed_ids_detects_duplicates(tmp_path: Path) -> None:
    path = tmp_path / "dup.jsonl"
    path.write_text("\n".join(json.dumps({"uid": u}) for u in ["a", "b", "a"]) + "\n")
    with pytest.raises(CSRError, match=r"dup\.jsonl.*duplicate.*'a'.*line 3"):
        completed_ids(path, key="uid")
    with pytest.raises(CSRError, match="no 'id' field"):
        completed_ids(path)


def test_stage_markers(tmp_path: Path) -> None:
    assert not is_done(tmp_path, "generate")
    assert done_stats(tmp_path, "generate") is None
    mark_done(tmp_path, "generate", {"n": 12, "skipped": {"missing_image": 1}})
    assert is_done(tmp_path, "generate")
    assert done_stats(tmp_path, "generate") == {"n": 12, "skipped": {"missing_image": 1}}
    content = read_json(tmp_path / "generate.done.json")
    assert content["stage"] == "generate"
    assert content["finished_at"].startswith("20")
    assert not is_done(tmp_path, "score")
    with pytest.raises(CSRError, match="invalid stage name"):
        mark_done(tmp_path, "../escape", {})
    (tmp_path / "bad.done.json").write_text("[]")
    with pytest.raises(CSRError, match=r"bad\.done\.json"):
        is_done(tmp_path, "bad")


def _killed_write(path: Path) -> Path:
    """What a SIGKILL between the temp file's write and its rename leaves: the temp file (returned)."""
    code = ("import os, signal, sys; from csr.core.io import atomic_write_text\n"
            "os.replace = lambda *a: os.kill(os.getpid(), signal.SIGKILL)\n"
            "atomic_write_text(sys.argv[1], '{')")
    before = set(path.parent.iterdir()) if path.parent.exists() else set()
    assert subprocess.run([sys.executable, "-c", code, str(path)]).returncode == -signal.SIGKILL
    (temp,) = set(path.parent.iterdir()) - before
    return temp


def test_stale_temp_files_of_a_killed_write_are_removed(tmp_path: Path) -> None:
    atomic_write_text(tmp_path / "iter_1" / "pairs.jsonl", "{}\n")
    stale = [_killed_write(tmp_path / "iter_1" / "pairs.jsonl"), _killed_write(tmp_path / "config.yaml"),
             _killed_write(tmp_path / "iter_1" / "eval" / "generate" / "answers.jsonl")]
    assert re.fullmatch(r"\.pairs\.jsonl\.csr-tmp-\d+-\w+", stale[0].name)  # recognisably csr's own
    # Files of the user's that look like temp files, the cases of issue 13, and a csr-like name
    # outside the places a run writes: all kept.
    keep = [tmp_path / n for n in (".draft.tmp", "project/.draft.tmp", "project/src/.main.py.tmp", ".cache/.x.tmp",
                                   "iter_1/.notes.tmp", "iter_1/notes.tmp", "project/.a.csr-tmp-1-abc")]
    for path in keep:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("mine")
    assert remove_stale_temp_files(tmp_path) == sorted(stale)
    assert not any(p.exists() for p in stale) and all(p.read_text() == "mine" for p in keep)
    assert (tmp_path / "iter_1" / "pairs.jsonl").read_text() == "{}\n"


def test_last_line_reads_back_from_the_end(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'{"a": 1}\n' + b'{"b": "' + b"x" * 50 + b'"}\n')
    for block in (4, 7, 1 << 16):  # lines longer than the block: read on backwards
        assert last_line(path, block=block) == b'{"b": "' + b"x" * 50 + b'"}\n'
    path.write_bytes(b'{"a": 1}\n{"b": ')  # a torn tail is the last line
    assert last_line(path, block=3) == b'{"b": '
    path.write_bytes(b'{"a": 1}\n')
    assert last_line(path, block=2) == b'{"a": 1}\n'


def test_the_prediction_writer_opens_its_file_once_per_stage(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from csr.run.predict import JsonlPredictionWriter, part_path

    opened = []
    enter = JsonlWriter.__enter__
    monkeypatch.setattr(JsonlWriter, "__enter__", lambda self: opened.append(self.path) or enter(self))
    out = tmp_path / "search.jsonl"
    writer, trainer = JsonlPredictionWriter(out), SimpleNamespace(global_rank=0)
    for b in range(3):
        writer.write_on_batch_end(trainer, None, [{"id": f"{b}{k}"} for k in range(2)], None, None, b)
    writer.close()
    assert opened == [part_path(out, 0)]  # one open (one tail check) for three batches, not one per batch
    assert [r["id"] for r in read_jsonl(part_path(out, 0))] == ["00", "01", "10", "11", "20", "21"]
