"""Atomic single-file writes: a temporary file beside the target, then a rename.

Every program writes its output files this way, so that a reader never sees
a half-written file and a failure leaves the previous file (or none) in
place. The content goes to a hidden `.tmp-*` file in the target's folder
(the same file system, so the rename is atomic), is flushed to disk, gets
the mode a plain `open` would give it, and is renamed onto the target.

Paths are local (`os` level): a URL such as `gs://bucket/file` is refused
rather than written to a local folder named `gs:`. Folders of several files
are staged by their own writers (`export/saved_model.py`, `search/proxy.py`,
`data/shard_writer.py`); `make_staging_dir` names such a folder after its
process, so that the next run into the same place removes the leftovers of
a killed one (and never a live one's).
"""

import json
import os
import re
import shutil
import socket
import tempfile
import time

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


def write_text(path, text, *, overwrite=True, private=False):
    """Writes `text` to `path` as UTF-8, under a temporary name, then renames it.

    Args:
      path: str or path-like, a local file; its folder is created if missing.
      text: str, the whole file.
      overwrite: bool, as for `write_bytes`.
      private: bool, mode 0600 (for a file holding a secret) instead of the
        mode a plain `open` would give it.

    Raises:
      FileExistsError: if `path` exists and `overwrite` is False.
      ValueError: if `path` is a URL, not a local path.
      UnicodeEncodeError, TypeError, OSError: from a `text` UTF-8 cannot
        encode, a `text` that is not a str, or the file system; the
        temporary file is removed and `path` is unchanged.
    """
    _write(path, text, overwrite, mode="w", encoding="utf-8", private=private)


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


# Leftovers without an owner (from before staging folders named theirs) are
# removed once this old.
_UNOWNED_STAGING_SECONDS = 24 * 3600


def make_staging_dir(parent, prefix, stale_pattern=None):
    """A hidden staging folder in `parent`, after removing killed runs' ones.

    The folder is `<prefix><pid>@<host>-<random>`, with the plain folder mode
    (`plain_mode`, not `mkdtemp`'s 0700), so that once renamed into place it
    is as readable as the files in it.

    Args:
      parent: str, the folder (created if missing).
      prefix: str, e.g. ".1.tmp-".
      stale_pattern: regex str matching the prefixes of staging folders to
        clean up (default: `prefix` itself).

    Returns:
      str, the new folder's path.
    """
    os.makedirs(parent, exist_ok=True)
    remove_stale_staging(parent, stale_pattern or re.escape(prefix))
    path = tempfile.mkdtemp(dir=parent, prefix=f"{prefix}{os.getpid()}@{_host()}-")
    os.chmod(path, plain_mode(directory=True))
    return path


def remove_stale_staging(parent, pattern):
    """Removes staging leftovers in `parent` whose process is gone.

    Args:
      parent: str, the folder.
      pattern: regex str of the leftovers' prefix (e.g. r"\.\d+\.tmp-").

    Returns:
      list of the removed paths. An entry named by `make_staging_dir` goes
      when its process (on this host) is dead; one without an owner when it
      is older than a day; a live process's never.
    """
    owned = re.compile(f"^(?:{pattern})(\\d+)@(.+)-[^-]+$")
    unowned = re.compile(f"^(?:{pattern})")
    removed = []
    try:
        names = os.listdir(parent)
    except OSError:
        return removed
    for name in names:
        path = os.path.join(parent, name)
        match = owned.match(name)
        if match:
            stale = match.group(2) == _host() and not _alive(int(match.group(1)))
        elif unowned.match(name):
            try:
                age = time.time() - os.lstat(path).st_mtime
            except OSError:
                continue
            stale = age > _UNOWNED_STAGING_SECONDS
        else:
            continue
        if stale:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                try:
                    os.remove(path)
                except OSError:
                    pass
            removed.append(path)
    return removed


def _host():
    return socket.gethostname().replace("/", "_") or "localhost"


def _alive(pid):
    """Whether process `pid` exists (a reused pid counts as alive: kept)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def current_umask():
    """The process umask, read without changing it.

    `os.umask` can only read it by setting it, which leaves a moment in which
    another thread's new files get a wrong mode; Linux shows it in
    `/proc/self/status` (`Umask:`). Elsewhere this falls back to `os.umask`.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def plain_mode(directory=False):
    """The mode `open` (0666) or `os.makedirs` (0777) gives under the umask."""
    return (0o777 if directory else 0o666) & ~current_umask()


def _write(path, content, overwrite, *, mode, encoding, private=False):
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
        # mkstemp's files are private; a plain `open` would follow the umask.
        os.chmod(temporary, 0o600 if private else plain_mode())
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
