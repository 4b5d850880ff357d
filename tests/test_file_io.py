"""Atomic single-file writes: content, clean-up, no-overwrite and file modes."""

import json
import os
import socket
import stat
import subprocess
import sys
import time

import pytest

from deeplab_dpc import file_io


def _listing(directory):
    return sorted(os.listdir(directory))


def test_content_lands_in_new_folders_and_no_temporary_is_left(tmp_path):
    folder = tmp_path / "a" / "b"  # Created by the first write.
    binary, text = folder / "out.bin", folder / "out.txt"
    file_io.write_bytes(binary, b"\x00\xffbytes")
    file_io.write_text(str(text), "text \u00e9\n")
    assert binary.read_bytes() == b"\x00\xffbytes"
    assert text.read_bytes() == "text \u00e9\n".encode("utf-8")
    # An existing file is replaced by default.
    file_io.write_bytes(str(binary), b"new")
    file_io.write_text(text, "new")
    assert binary.read_bytes() == b"new" and text.read_text() == "new"
    assert _listing(folder) == ["out.bin", "out.txt"]


def test_write_json_is_json_dumps_and_writes_nothing_on_bad_values(tmp_path):
    value = {"b": [1, 2.5], "a": None}
    path = tmp_path / "value.json"
    file_io.write_json(path, value, indent=1, sort_keys=True)
    assert path.read_text() == json.dumps(value, indent=1, sort_keys=True)
    with pytest.raises(TypeError, match="set"):
        file_io.write_json(path, {"x": {1, 2}})
    assert json.loads(path.read_text()) == value
    assert _listing(tmp_path) == ["value.json"]


def test_failure_mid_write_keeps_the_original_and_removes_the_temporary(tmp_path):
    path = tmp_path / "keep.txt"
    path.write_text("original")
    with pytest.raises(TypeError):
        file_io.write_bytes(path, "a str, not bytes")
    with pytest.raises(UnicodeEncodeError):
        file_io.write_text(path, "lone surrogate \ud800")
    assert path.read_text() == "original"
    assert _listing(tmp_path) == ["keep.txt"]


def test_failed_rename_removes_the_temporary(tmp_path):
    target = tmp_path / "folder"
    target.mkdir()
    (target / "inside").write_text("kept")
    with pytest.raises(OSError):
        file_io.write_text(target, "cannot replace a folder")
    assert _listing(tmp_path) == ["folder"]
    assert (target / "inside").read_text() == "kept"


def test_overwrite_false_refuses_an_existing_file(tmp_path):
    path = tmp_path / "result.txt"
    file_io.write_text(path, "first", overwrite=False)  # Absent: written.
    assert path.read_text() == "first"
    for write, content in ((file_io.write_text, "second"), (file_io.write_bytes, b"")):
        with pytest.raises(FileExistsError, match=r"result\.txt.*--overwrite"):
            write(path, content, overwrite=False)
    assert path.read_text() == "first"
    assert _listing(tmp_path) == ["result.txt"]


def test_mode_follows_the_umask(tmp_path):
    for umask, mode in ((0o027, 0o640), (0o002, 0o664)):
        previous = os.umask(umask)
        try:
            file_io.write_bytes(tmp_path / f"new-{umask:o}", b"x")
            file_io.write_text(tmp_path / f"kept-{umask:o}", "x", overwrite=False)
        finally:
            os.umask(previous)
        for name in (f"new-{umask:o}", f"kept-{umask:o}"):
            assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == mode


def test_urls_are_refused_not_written_locally(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="gs://bucket/run/x.json: not a local path"):
        file_io.write_json("gs://bucket/run/x.json", {})
    assert _listing(tmp_path) == []


def test_umask_is_read_without_changing_it(tmp_path):
    umask = os.umask(0o027)
    try:
        assert file_io.current_umask() == 0o027
        assert file_io.plain_mode() == 0o640
        assert file_io.plain_mode(directory=True) == 0o750
        file_io.write_text(tmp_path / "secret.flags", "--storage=x\n", private=True)
        assert (tmp_path / "secret.flags").stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(umask)


def test_staging_leftovers_of_dead_processes_only_are_removed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    stale = tmp_path / f".tflite-staging-{dead.pid}@{host}-abcdefgh"
    live = tmp_path / f".tflite-staging-{os.getppid()}@{host}-abcdefgh"
    other_host = tmp_path / f".tflite-staging-{dead.pid}@elsewhere-abcdefgh"
    unowned_old = tmp_path / ".tflite-staging-abcdefgh"
    unowned_new = tmp_path / ".tflite-staging-ijklmnop"
    for folder in (stale, live, other_host, unowned_old, unowned_new):
        folder.mkdir()
    old = time.time() - 2 * 24 * 3600
    os.utime(unowned_old, (old, old))
    made = file_io.make_staging_dir(str(tmp_path), ".tflite-staging-")
    assert not stale.exists() and not unowned_old.exists()
    assert live.exists() and other_host.exists() and unowned_new.exists()
    assert os.path.basename(made).startswith(f".tflite-staging-{os.getpid()}@{host}-")
    assert os.stat(made).st_mode & 0o777 == file_io.plain_mode(directory=True)
