"""Atomic file writes: a crash or a failed save never leaves half a file, nor a
temporary folder behind.

Everything is first written to a temporary file in the destination's folder
and then moved over the destination with ``os.replace`` (atomic on POSIX and
Windows within one file system). A failure removes the temporary file and
leaves any existing destination untouched.
"""

import contextlib
import functools
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile

__all__ = ["ensure_dir", "atomic_path", "atomic_dir", "write_bytes", "write_text",
           "write_json", "save_model", "sha256_file", "ChecksumError", "check_sha256",
           "TEMP_PREFIX", "host_name", "sweep_stale", "temp_folder", "scratch_tempdir"]

#: The start of the hidden temporary folders an export makes beside its output.
TEMP_PREFIX = ".keras_kd-tmp-"


def ensure_dir(folder, what=None):
    """Creates ``folder`` if needed and checks it is writable; returns it.

    Raises ``OSError`` / ``PermissionError`` naming ``what`` (e.g.
    ``"--output_dir"``, default the folder itself) and the fix.
    """
    what = what or f"the folder {folder!r}"
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as err:
        raise OSError(
            f"cannot create {what} ({folder!r}): {err.strerror}. Fix: choose a "
            "path in a folder you can write to."
        ) from err
    if not os.access(folder, os.W_OK):
        raise PermissionError(
            f"{what} ({folder!r}) is not writable. Fix: choose a folder you can "
            "write to."
        )
    return folder


def _check_dir(path):
    return ensure_dir(os.path.dirname(os.path.abspath(path)))


def _umask():
    """This process's umask: read from ``/proc/self/status`` where Linux gives it (without
    touching it), else by setting it and putting it back (process-wide for an instant)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _usual_mode(path, mode):
    """Gives ``path`` the permissions a plain ``open``/``mkdir`` would: ``mode`` less the
    umask."""
    os.chmod(path, mode & ~_umask())


@contextlib.contextmanager
def atomic_path(path):
    """Yields a temporary path with ``path``'s suffix; on success moves it to ``path``.

    The temporary file is the hidden sibling ``.<name>.<host>-<pid>-*``: one a killed
    process leaves behind is removed by the next write of ``path`` (:func:`sweep_stale`).
    """
    folder = _check_dir(path)
    base = os.path.basename(path)
    suffix = "".join(os.path.splitext(base)[1:]) or ".tmp"
    sweep_stale(folder, base)
    fd, tmp = tempfile.mkstemp(prefix=_own_prefix(f".{base}."), suffix=suffix, dir=folder)
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        _usual_mode(tmp, 0o666)  # mkstemp creates 0600 files
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@contextlib.contextmanager
def atomic_dir(path):
    """Yields a fresh temporary sibling folder; on success renames it to ``path``.

    Whatever the body writes appears at ``path`` all at once, or not at all:
    if the body raises, the temporary folder is removed and ``path`` is left
    as it was. ``path`` must not exist or be an empty folder (which is
    replaced); a non-empty folder is never overwritten: ``FileExistsError``.
    (A process killed mid-write can leave its hidden ``.<name>.<host>-<pid>-*``
    sibling behind, never a half-written ``path``; the next write of ``path`` on
    this host removes it: :func:`sweep_stale`.)
    """
    path = os.path.abspath(path)
    folder = _check_dir(path)
    base = os.path.basename(path)
    sweep_stale(folder, base)
    tmp = tempfile.mkdtemp(prefix=_own_prefix(f".{base}."), suffix=".tmp", dir=folder)
    try:
        yield tmp
        for name in os.listdir(tmp):
            file = os.path.join(tmp, name)
            if os.path.isfile(file):
                with open(file, "rb") as f:
                    os.fsync(f.fileno())
        _usual_mode(tmp, 0o777)  # mkdtemp makes 0700 folders
        if os.path.isdir(path) and not os.listdir(path):
            os.rmdir(path)
        try:
            os.rename(tmp, path)
        except OSError as err:
            raise FileExistsError(
                f"cannot move the new folder into place: {path!r} exists and is "
                f"not empty ({err.strerror}); nothing was overwritten. Fix: delete "
                "it or choose another path."
            ) from err
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


def write_bytes(path, data):
    """Writes ``data`` to ``path`` atomically; returns ``path``."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
    return path


def write_text(path, text):
    """Writes UTF-8 ``text`` to ``path`` atomically; returns ``path``."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path, obj):
    """Writes ``obj`` as indented JSON atomically; returns ``path``."""
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def save_model(model, path):
    """``model.save(path)`` for a ``.keras`` path, atomically; returns ``path``."""
    if not str(path).endswith(".keras"):
        raise ValueError(f"a Keras model file must end in .keras, got {path!r}.")
    with atomic_path(path) as tmp:
        model.save(tmp)
    return path


def sha256_file(path, chunk_bytes=1 << 20):
    """The sha256 (hex) of the file at ``path``, read ``chunk_bytes`` at a time
    (the memory held is one chunk, whatever the file's size)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_bytes):
            h.update(block)
    return h.hexdigest()


class ChecksumError(ValueError):
    """A file does not have the sha256 recorded for it.

    ``reason`` says why, for the caller's own error message: ``"unrecorded"`` (no
    sha256 was recorded), ``"missing"`` (no file), ``"unreadable"`` (reading it
    failed: ``__cause__`` is the OSError) or ``"changed"`` (``found`` differs from
    ``recorded``).
    """

    def __init__(self, path, reason, recorded=None, found=None):
        super().__init__(f"{path!r}: sha256 check failed ({reason})")
        self.path, self.reason, self.recorded, self.found = path, reason, recorded, found


def check_sha256(path, recorded):
    """Returns the sha256 (hex) of the file at ``path`` when it equals ``recorded``;
    raises :class:`ChecksumError` (with its ``reason``) otherwise."""
    if not recorded:
        raise ChecksumError(path, "unrecorded")
    try:
        found = sha256_file(path)
    except FileNotFoundError as err:
        raise ChecksumError(path, "missing", recorded) from err
    except OSError as err:
        raise ChecksumError(path, "unreadable", recorded) from err
    if found != recorded:
        raise ChecksumError(path, "changed", recorded, found)
    return found


@functools.cache  # read once per process: every atomic write's sweep and name use it
def host_name():
    """Who may judge whether a temporary's writer is alive: this machine's name (in the
    characters a folder name keeps everywhere) and a short hash of its exact name and
    of this process's PID namespace (Linux), so two hosts whose names clean to the same
    string, or two containers sharing a host name but not their PIDs, never sweep each
    other's temporaries."""
    raw = socket.gethostname() or "host"
    try:
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        namespace = 0
    tag = hashlib.sha256(f"{raw}\0{namespace}".encode()).hexdigest()[:8]
    return re.sub(r"[^A-Za-z0-9]", "_", raw) + "_" + tag


def _alive(pid):
    """Whether process ``pid`` exists on this machine (unsure counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError, ValueError):  # e.g. someone else's process; a bad pid
        return True
    return True


def _own_prefix(start):
    """``<start><host>-<pid>-``: how every temporary this process writes begins (a hidden
    sibling ``.<name>.``, or an export's :data:`TEMP_PREFIX` folder), read back by
    :func:`sweep_stale`."""
    return f"{start}{host_name()}-{os.getpid()}-"


def sweep_stale(folder, base=None):
    """Removes the temporaries in ``folder`` left by writers on this host whose
    process is gone (killed before its ``finally``): the export's scratch folders
    (:data:`TEMP_PREFIX`), and with ``base`` the hidden siblings
    (``.<base>.<host>-<pid>-*``) of :func:`atomic_path` / :func:`atomic_dir`.

    Temporaries of running processes and of other hosts (a shared file system) are
    kept. Returns the paths removed.
    """
    starts = [TEMP_PREFIX] + ([f".{base}."] if base else [])
    pattern = re.compile("(?:" + "|".join(re.escape(f"{s}{host_name()}-") for s in starts)
                         + r")(\d+)-")
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        found = pattern.match(name)
        if not found or int(found[1]) == os.getpid() or _alive(int(found[1])):
            continue
        path = os.path.join(folder, name)
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        elif name.startswith(TEMP_PREFIX):
            continue  # the export's scratch entries are folders only
        else:
            with contextlib.suppress(OSError):  # cleaning up never fails the write
                os.remove(path)
        if not os.path.lexists(path):
            removed.append(path)
    return removed


def temp_folder(folder):
    """A new hidden temporary folder in ``folder``, named for this host and process
    (after removing those of killed exports); the caller removes it."""
    sweep_stale(folder)
    return tempfile.mkdtemp(prefix=_own_prefix(TEMP_PREFIX), dir=folder)


@contextlib.contextmanager
def scratch_tempdir(folder):
    """A temporary folder in ``folder`` that is also Python's default temporary
    folder within (``tempfile.tempdir``, where the converter writes its SavedModel
    and calibration files); removed afterwards, also on an error or Ctrl-C."""
    scratch = temp_folder(folder)
    saved = tempfile.tempdir
    tempfile.tempdir = scratch
    try:
        yield scratch
    finally:
        tempfile.tempdir = saved
        shutil.rmtree(scratch, ignore_errors=True)
