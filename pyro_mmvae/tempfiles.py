"""The library's temporary files: how :func:`~pyro_mmvae.utils.atomic_write` names and locks them, and
how a run folder is swept of the ones a killed process left behind.

Naming: the temporary file of target ``<folder>/<name>`` is ``<folder>/.<name>.pyro-mmvae-<h>.tmp``
with ``<h>`` 12 random lowercase hex digits (:data:`TEMP_PATTERN`). Files written before this naming
(``.<name>.<8 characters>.tmp``, from ``tempfile.mkstemp``) are recognised only for the library's own
run-folder file names (:data:`LEGACY_TARGETS`). Nothing else is ever deleted: not a user's ``notes.tmp``, not
``.checkpoint.pt.backup.tmp``, not a folder or a link with a matching name.

Concurrency: a writer holds an exclusive ``flock`` on its temporary file from the moment it creates
it until after the rename onto the target (the lock is taken right after the ``O_EXCL`` create; a
writer that finds it cannot take the lock, or that its file was already unlinked, drops that name and
creates another). The sweep deletes a file only while holding the same lock itself, and only if the
name still points at the locked file. A writer that is alive therefore never loses its file, while
the kernel releases the lock of a process that was killed (SIGKILL included), so its leftover is
swept. So sweeping a folder that another process is writing at the same time is safe (local POSIX
file systems; ``flock`` over NFS depends on the server). A run folder is still meant to have one
writer at a time: two runs writing the same stage would overwrite each other's checkpoints. Where
``fcntl`` does not exist (Windows) nothing is locked; there an open file cannot be deleted, so the
sweep skips it.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

try:  # POSIX
    import fcntl
except ImportError:  # Windows
    fcntl = None

TEMP_TAG = "pyro-mmvae"
TEMP_PATTERN = re.compile(r"^\.(?P<target>.+)\." + re.escape(TEMP_TAG) + r"-[0-9a-f]{12}\.tmp$")
LEGACY_TARGETS = ("checkpoint.pt", "best.pt", "config.json", "log.csv", "metrics.json")
# tempfile.mkstemp(prefix=".<name>.", suffix=".tmp"), as earlier versions wrote: 8 characters of [a-z0-9_]
LEGACY_PATTERN = re.compile(r"^\.(?:" + "|".join(map(re.escape, LEGACY_TARGETS)) + r")\.[a-z0-9_]{8}\.tmp$")


def temporary_name(target: str) -> str:
    """A fresh temporary file name for target file name ``target`` (random; see the module docstring)."""
    return f".{target}.{TEMP_TAG}-{os.urandom(6).hex()}.tmp"


def is_temporary_name(name: str) -> bool:
    """True for a file name of the library's temporary-file naming (current or legacy)."""
    return bool(TEMP_PATTERN.match(name) or LEGACY_PATTERN.match(name))


def _try_lock(fd: int) -> bool:
    """Take an exclusive lock on ``fd`` without waiting; False when another open file holds it."""
    if fcntl is None:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _same_file(fd: int, name: Path) -> bool:
    """True while ``name`` is a link to the file open as ``fd``."""
    try:
        st = os.stat(name, follow_symlinks=False)
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


def create_temporary(path: Path) -> tuple[int, str]:
    """Create and lock a new temporary file next to ``path``: ``(fd open for writing, its name)``.

    Its permissions are those ``open(path, "w")`` would give: a new file gets 0o666 minus the umask,
    a file that replaces an existing one keeps that file's mode. (``tempfile.mkstemp`` creates
    0o600 files, which made every run's config, metrics and checkpoints unreadable to other users.)
    Passing 0o666 to ``os.open`` lets the kernel apply the umask (and a folder's default ACL) itself,
    so the process-global umask is never read or changed, which keeps this safe with threads.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_NOFOLLOW", 0)
    for _ in range(100):
        tmp = path.parent / temporary_name(path.name)
        try:
            fd = os.open(tmp, flags, 0o666)
        except FileExistsError:
            continue
        try:
            if not (_try_lock(fd) and _same_file(fd, tmp)):
                os.close(fd)  # a sweep got to it between create and lock: it deletes it, we take another name
                continue
            try:
                os.chmod(tmp, os.stat(path).st_mode & 0o7777)
            except FileNotFoundError:
                pass  # a new file: the umask already applied
        except BaseException:
            os.close(fd)
            os.unlink(tmp)
            raise
        return fd, str(tmp)
    raise FileExistsError(f"could not create a temporary file next to {path}")


def _remove_if_abandoned(path: Path) -> bool:
    """Delete temporary file ``path`` unless a live writer holds its lock; True when deleted."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0))
    except OSError:  # gone already (renamed onto its target), a link, unreadable
        return False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode) or not _try_lock(fd) or not _same_file(fd, path):
            return False
        os.unlink(path)  # still holding the lock: no writer can be using this name
        return True
    except OSError:  # e.g. Windows: a file open elsewhere cannot be deleted
        return False
    finally:
        os.close(fd)


def sweep_temporary_files(folder: str | os.PathLike, recursive: bool = False) -> list[Path]:
    """Delete the temporary files of :func:`~pyro_mmvae.utils.atomic_write` that no live process writes.

    Only regular files whose names follow the library's naming (:func:`is_temporary_name`) are
    considered, and only those whose writer is gone (a killed process: its lock was released);
    see the module docstring for why this is safe while another process writes the folder.

    Args:
        folder: the folder to sweep (a missing folder is fine: nothing to do).
        recursive: also sweep every sub-folder (symbolic links to folders are not followed).

    Returns:
        the paths deleted.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for root, dirs, files in os.walk(folder):
        for name in sorted(files):
            if is_temporary_name(name) and _remove_if_abandoned(Path(root) / name):
                removed.append(Path(root) / name)
        if not recursive:
            break
        dirs.sort()
    return removed
