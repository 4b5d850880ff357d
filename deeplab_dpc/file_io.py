"""Atomic single-file writes: a temporary file beside the target, then a rename.

Every program writes its output files this way, so that a reader never sees
a half-written file and a failure leaves the previous file (or none) in
place. The content goes to a hidden `.tmp-*` file in the target's folder
(the same file system, so the rename is atomic), is flushed to disk, gets
the mode a plain `open` would give it, and is renamed onto the target.

Paths are local (`os` level): a URL such as `gs://bucket/file` is refused
rather than written to a local folder named `gs:`. Folders of several files
are staged by their own writers (`export/saved_model.py`, `search/proxy.py`,
`data/shard_writer.py`).
"""

import json
import os
import re
import tempfile

# `scheme://`, as in gs://, s3://, hdfs://: a file system `os` cannot reach.
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def write_bytes(path, content, *, overwrite=True):
    """Writes `content` to `path` under a temporary name, then renames it.

    Args:
      path: str or path-like, a local file; its folder is created if missing.
      content: bytes-like, the whole file.
      overwrite: bool, replace an existing file. When False, an existing
        `path` is an error, checked before anything is written, and a file
        that appears at `path` while writing is not replaced either (where
        the file system has hard links).

    Raises:
      FileExistsError: if `path` exists and `overwrite` is False.
      ValueError: if `path` is a URL, not a local path.
      TypeError, OSError: from a `content` that is not bytes-like or the
        file system; the temporary file is removed and `path` is unchanged.
    """
    _write(path, content, overwrite, mode="wb", encoding=None)


def write_text(path, text, *, overwrite=True):
    """Writes `text` to `path` as UTF-8, under a temporary name, then renames it.

    Args:
      path: str or path-like, a local file; its folder is created if missing.
      text: str, the whole file.
      overwrite: bool, as for `write_bytes`.

    Raises:
      FileExistsError: if `path` exists and `overwrite` is False.
      ValueError: if `path` is a URL, not a local path.
      UnicodeEncodeError, TypeError, OSError: from a `text` UTF-8 cannot
        encode, a `text` that is not a str, or the file system; the
        temporary file is removed and `path` is unchanged.
    """
    _write(path, text, overwrite, mode="w", encoding="utf-8")


def write_json(path, obj, **json_kwargs):
    """Writes `json.dumps(obj, **json_kwargs)` to `path` (see `write_text`).

    Args:
      path: str or path-like, a local file; its folder is created if missing.
      obj: a JSON-serializable value.
      **json_kwargs: passed to `json.dumps` (e.g. indent=1). No newline is
        added after the value.

    Raises:
      TypeError: if `obj` is not JSON-serializable; nothing is written.
      ValueError: if `path` is a URL, not a local path.
      OSError: from the file system; `path` is unchanged.
    """
    write_text(path, json.dumps(obj, **json_kwargs))


def _write(path, content, overwrite, *, mode, encoding):
    path = os.fspath(path)
    if _URL.match(path):
        raise ValueError(f"{path}: not a local path; only local files are written")
    if not overwrite and os.path.lexists(path):
        raise _exists(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=directory, prefix=".tmp-")
    try:
        with os.fdopen(fd, mode, encoding=encoding) as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)  # mkstemp's files are private.
        if overwrite:
            os.replace(temporary, path)
        else:
            try:
                os.link(temporary, path)  # Atomic, and never replaces a file.
            except FileExistsError as e:
                raise _exists(path) from e
            except OSError:  # No hard links on this file system.
                os.replace(temporary, path)
    finally:
        if os.path.lexists(temporary):
            os.remove(temporary)


def _exists(path):
    return FileExistsError(
        f"{path} already exists; pass overwrite=True (the --overwrite flag) "
        "to replace it"
    )
