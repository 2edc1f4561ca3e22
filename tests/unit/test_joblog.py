"""The workload's whole log on the server's disk: read as numbered lines from an offset, grown only by what it
lacks, and never replaced by a shorter or different copy."""

from __future__ import annotations

from pathlib import Path

from services.cloud.joblog import LOG, MAX_LINE_CHARS, adopt_uploaded, append_at, log_size, read_lines


def _log(folder: Path, data: bytes) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / LOG).write_bytes(data)


def test_lines_are_read_whole_from_an_offset(tmp_path):
    _log(tmp_path, b"one\ntwo\r\nthree")
    first = read_lines(tmp_path, 0)
    assert first.lines == ["one", "two"] and first.end == len(b"one\ntwo\r\n")  # "three" may not be whole yet
    assert read_lines(tmp_path, first.end).lines == []
    last = read_lines(tmp_path, first.end, final=True)  # the workload is over: its last line as it is
    assert last.lines == ["three"] and last.end == len(b"one\ntwo\r\nthree")
    assert read_lines(tmp_path / "none", 0) == read_lines(tmp_path / "none", 0, final=True)  # no log, no lines


def test_a_line_shows_what_a_terminal_would(tmp_path):
    _log(tmp_path, b"train  10%\rtrain  55%\rtrain 100%\n\xff\x00ok\n" + b"x" * (MAX_LINE_CHARS + 5) + b"\n")
    lines = read_lines(tmp_path, 0).lines
    assert lines[:2] == ["train 100%", "\ufffd\ufffdok"]  # a bar redrawn in place is its last state; NUL goes
    assert len(lines[2]) == MAX_LINE_CHARS + 1 and lines[2].endswith("…")


def test_batches_are_bounded_and_carry_on_where_they_stopped(tmp_path):
    _log(tmp_path, b"".join(b"line %d\n" % i for i in range(1, 11)) + b"y" * 50)
    batch, lines = read_lines(tmp_path, 0, max_lines=4), []
    while batch.lines:
        lines += batch.lines
        batch = read_lines(tmp_path, batch.end, max_lines=4, max_bytes=40)
    assert lines == [f"line {i}" for i in range(1, 11)] + ["y" * 40]  # a line longer than a batch is cut
    assert read_lines(tmp_path, batch.end, final=True).lines == ["y" * 10]


def test_appends_keep_what_the_log_lacks_once(tmp_path):
    assert append_at(tmp_path, 0, b"a\nb\n") == 4
    assert append_at(tmp_path, 0, b"a\nb\n") == 4  # a heartbeat sent again: nothing twice
    assert append_at(tmp_path, 2, b"b\nc\n") == 6  # overlapping: only the new bytes
    assert append_at(tmp_path, 9, b"z\n") == 6  # a gap: nothing, and the size says where to send from
    assert (tmp_path / LOG).read_bytes() == b"a\nb\nc\n" and log_size(tmp_path) == 6


def test_an_uploaded_log_replaces_the_heartbeats_only_when_it_holds_it_and_more(tmp_path):
    folder, incoming = tmp_path / "attempt-1", tmp_path / "incoming"
    incoming.mkdir()
    append_at(folder, 0, b"a\nb\n")
    (incoming / LOG).write_bytes(b"a\nb\nc\n")
    adopt_uploaded(incoming / LOG, folder)
    assert (folder / LOG).read_bytes() == b"a\nb\nc\n" and not (incoming / LOG).exists()
    for other in (b"a\n", b"restarted\nfrom scratch\nlonger\n"):  # shorter, or another file: the numbers stay
        (incoming / LOG).write_bytes(other)
        adopt_uploaded(incoming / LOG, folder)
        assert (folder / LOG).read_bytes() == b"a\nb\nc\n" and not (incoming / LOG).exists()
    (incoming / LOG).write_bytes(b"only\n")
    adopt_uploaded(incoming / LOG, tmp_path / "attempt-2")  # no heartbeat brought any
    assert (tmp_path / "attempt-2" / LOG).read_bytes() == b"only\n"
