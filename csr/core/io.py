"""Safe, inspectable, crash-resumable stage outputs.

Everything is plain text (JSON / JSON Lines) so a run directory can be read by
eye and by other tools, and loading them never executes code.  Whole files are replaced
atomically, and JSONL files grow one fsynced record at a time, so a crash
leaves at most one torn final line, which `read_jsonl(repair=True)` removes.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from csr.core.errors import CSRError

log = logging.getLogger(__name__)

StrPath = str | os.PathLike[str]

# Stage names become file names, so keep them to a boring, portable alphabet.
_STAGE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# The temp file of an atomic write, `.<name>.csr-tmp-<pid>-<random>`: a name no user file has, so
# cleaning up after a killed write can never take anything csr did not write.
_TEMP_TAG = ".csr-tmp-"
_TEMP_NAME = re.compile(r"^\..+\.csr-tmp-\d+-\w+$")


def _fsync_dir(directory: Path) -> None:
    """Persist a rename: without this the new directory entry can be lost on power failure."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some platforms/filesystems cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def safetensors_write_errors(path: StrPath) -> Iterator[None]:
    """safetensors reports a failed write (disk full, ...) as SafetensorError("... (os error 28)");
    raise it as the OSError it is, naming the path, so it is handled like any other failed write."""
    from safetensors import SafetensorError

    try:
        yield
    except SafetensorError as err:
        code = re.search(r"os error (\d+)", str(err))
        if code is None:
            raise
        raise OSError(int(code.group(1)), os.strerror(int(code.group(1))), str(path)) from err


def atomic_write_text(path: StrPath, text: str) -> None:
    """Write `text` so readers see either the old file or the complete new one, never a half."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    # The temp file must live in the same directory: os.replace is only atomic within a filesystem.
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}{_TEMP_TAG}{os.getpid()}-")
    try:
        # mkstemp creates the file 0600; give it the mode an ordinary open() would (umask applied).
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)


def is_temp_name(name: str) -> bool:
    """Whether `name` is the temp file of an `atomic_write_text` (and so csr's own)."""
    return bool(_TEMP_NAME.match(name))


def remove_stale_temp_files(root: StrPath) -> list[Path]:
    """Delete the temp files of atomic writes that a killed process never renamed; returns them.

    Only csr's own temp names, and only where a run writes: the run directory itself and its
    `iter_*` trees. Only call it while holding the run lock: a live writer's temp file looks the same.
    """
    top = Path(root)
    places = [p for p in top.iterdir() if p.is_file()]
    places += [p for d in top.glob("iter_*") if d.is_dir() and not d.is_symlink() for p in d.rglob("*") if p.is_file()]
    stale = sorted(p for p in places if is_temp_name(p.name) and not p.is_symlink())
    for path in stale:
        path.unlink()
    if stale:
        log.info("removed %d temp file(s) left by an interrupted write under %s", len(stale), root)
    return stale


def atomic_write_json(path: StrPath, obj: Any) -> None:
    """Atomically write `obj` as indented JSON (key order preserved for readability)."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, ensure_ascii=False) + "\n")


def read_text_file(path: StrPath, what: str = "file") -> str:
    """A UTF-8 text file; missing or undecodable is a CSRError naming it (`what` says what it is)."""
    p = Path(path)
    try:
        return p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CSRError(f"{p}: {what} not found") from None
    except IsADirectoryError:
        raise CSRError(f"{p}: is a directory; give the {what} itself") from None
    except PermissionError as exc:
        raise CSRError(f"{p}: cannot read the {what}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise CSRError(f"{p}: {what} is not valid UTF-8 ({exc})") from None



def read_records(path: StrPath) -> list[tuple[int, dict[str, Any]]]:
    """A JSONL input file as (line number, record) pairs; blank lines are skipped.

    For the benchmarks' files (csr/eval/). Unlike read_jsonl (for our own crash-resumable outputs), a
    missing file or any bad line is an error: these are inputs someone handed us.
    """
    p = Path(path)
    text = read_text_file(p)
    records = []
    # split("\n"), not splitlines(): JSON strings may hold U+2028 and friends unescaped.
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CSRError(f"{p}: line {lineno}: invalid JSON ({exc.msg})") from None
        if not isinstance(record, dict):
            raise CSRError(f"{p}: line {lineno}: expected a JSON object, got {type(record).__name__}")
        records.append((lineno, record))
    return records

def read_json(path: StrPath, what: str = "file") -> Any:
    """Read a JSON file; a missing or malformed file is a CSRError naming it."""
    p = Path(path)
    text = read_text_file(p, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CSRError(f"{p}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except RecursionError:  # a stranger's file: [[[[...]]]] a hundred thousand deep
        raise CSRError(f"{p}: invalid JSON: nested too deeply for Python's parser") from None
    except ValueError as exc:  # a number of more than 4300 digits (Python's int conversion limit)
        raise CSRError(f"{p}: invalid JSON: {exc} (write such a value, e.g. an id, as a string)") from None


def last_line(path: Path, block: int = 1 << 16) -> bytes:
    """The file's last line (with its newline, if any), read backwards from the end: O(line), not
    O(file), so appending to a large JSONL file stays linear."""
    with path.open("rb") as fh:
        end = fh.seek(0, os.SEEK_END)
        pos, tail = end, b""
        while pos > 0:
            step = min(block, pos)
            pos -= step
            fh.seek(pos)
            tail = fh.read(step) + tail
            cut = tail.rfind(b"\n", 0, len(tail) - 1)  # a newline before the final byte
            if cut >= 0:
                return tail[cut + 1:]
        return tail


class JsonlWriter:
    """Append JSON records to a file, one line each.

    `durable=True`: fsynced as soon as `write` returns. `durable=False`: flushed per record and made
    durable by `sync()` (the predict writer syncs once per batch, its unit of resume)."""

    def __init__(self, path: StrPath, durable: bool = True) -> None:
        self.path = Path(path)
        self.durable = durable
        self._fh: Any = None

    def __enter__(self) -> JsonlWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Appending after a torn line would bury it mid-file, turning a repairable tail into
        # permanent corruption; so refuse until read_jsonl(repair=True) / completed_ids has run.
        # Only the last line can be torn (a crash cuts the final append), so only it is read.
        if self.path.exists() and self.path.stat().st_size:
            tail = last_line(self.path)
            if not tail.endswith(b"\n") or _parse_line(tail[:-1]) is None:
                raise CSRError(f"{self.path}: the last line is incomplete or unparsable (torn write from a crash?);"
                               " call read_jsonl(path, repair=True) before appending")
        self._fh = self.path.open("a", encoding="utf-8", newline="")
        return self

    def write(self, record: dict[str, Any]) -> None:
        if self._fh is None:
            raise CSRError(f"{self.path}: JsonlWriter.write called outside its `with` block")
        if not isinstance(record, dict):
            raise CSRError(f"{self.path}: a JSONL record must be a dict, got {type(record).__name__}")
        self._fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._fh.flush()
        if self.durable:
            os.fsync(self._fh.fileno())

    def sync(self) -> None:
        """Make everything written so far durable."""
        if self._fh is not None:
            os.fsync(self._fh.fileno())

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def _parse_line(raw: bytes) -> dict[str, Any] | None:
    """Decode one JSONL line; None when it is not a JSON object."""
    try:
        value = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None


def read_jsonl(path: StrPath, repair: bool = False) -> list[dict[str, Any]]:
    """Read all records; a missing file is empty.

    A bad *final* line is a torn write from a crash: with `repair` the file is
    truncated back to the last complete record (the torn one is lost and will
    be redone), otherwise it is an error.  A bad line anywhere else is real
    corruption and always an error.
    """
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        return []
    lines = data.split(b"\n")
    # After a final "\n" split yields one empty tail; anything else there is an unterminated line.
    tail = lines.pop()
    records: list[dict[str, Any]] = []
    good_end = 0  # byte offset just past the last accepted line
    for lineno, raw in enumerate(lines, start=1):
        record = _parse_line(raw)
        if record is None:
            if lineno == len(lines) and not tail:
                _torn(p, lineno, good_end, repair)
                return records
            raise CSRError(f"{p}: line {lineno} is not a valid JSON object (corrupt file)")
        records.append(record)
        good_end += len(raw) + 1
    if tail:
        _torn(p, len(lines) + 1, good_end, repair)
    return records


def _torn(path: Path, lineno: int, good_end: int, repair: bool) -> None:
    if not repair:
        raise CSRError(f"{path}: line {lineno} is incomplete or unparsable (torn write from a crash?)")
    log.warning("%s: dropping torn final line %d (interrupted write); truncating file", path, lineno)
    with path.open("r+b") as fh:
        fh.truncate(good_end)
        fh.flush()
        os.fsync(fh.fileno())


def completed_ids(path: StrPath, key: str = "id") -> set[str]:
    """Ids already written to a resumable JSONL output (repairing a torn tail first)."""
    seen: set[str] = set()
    for lineno, record in enumerate(read_jsonl(path, repair=True), start=1):
        if key not in record:
            raise CSRError(f"{path}: record on line {lineno} has no {key!r} field")
        value = str(record[key])
        if value in seen:
            raise CSRError(f"{path}: duplicate record {key}={value!r} (line {lineno})")
        seen.add(value)
    return seen


def _marker(directory: StrPath, stage: str) -> Path:
    if not _STAGE_NAME.match(stage):
        raise CSRError(f"invalid stage name {stage!r}: use letters, digits, '_', '-', '.'")
    return Path(directory) / f"{stage}.done.json"


def mark_done(directory: StrPath, stage: str, stats: dict[str, Any], made_from: dict[str, str] | None = None) -> None:
    """Record that `stage` finished; written last, so its presence means the outputs are complete.
    made_from: the identity of each input it read (csr/run/inputs.py), for a later start to compare."""
    finished_at = datetime.now(UTC).isoformat(timespec="seconds")
    extra = {"made_from": made_from} if made_from is not None else {}
    atomic_write_json(_marker(directory, stage), {"stage": stage, "stats": stats, "finished_at": finished_at, **extra})


def done_made_from(directory: StrPath, stage: str) -> dict[str, str] | None:
    """What `mark_done` recorded the stage was made from (None: not done, or recorded nothing)."""
    if done_stats(directory, stage) is None:
        return None
    return read_json(_marker(directory, stage)).get("made_from")


def done_stats(directory: StrPath, stage: str) -> dict[str, Any] | None:
    """The stats saved by `mark_done`, or None if the stage has not finished."""
    marker = _marker(directory, stage)
    if not marker.exists():
        return None
    content = read_json(marker)
    if not isinstance(content, dict) or not isinstance(content.get("stats"), dict):
        raise CSRError(f"{marker}: not a valid stage marker (expected an object with a 'stats' object)")
    return content["stats"]


def is_done(directory: StrPath, stage: str) -> bool:
    return done_stats(directory, stage) is not None


def replace_dir(tmp: Path, final: Path) -> None:
    """Swap a fully written directory into place, so a crash never leaves a half-written one."""
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
