"""Where things live, independent of the working directory (notebooks run from the root or notebooks/), and
how a file is written so that a kill never leaves half of it."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path


def repo_root() -> Path:
    """The checkout holding this package (installed editable), else the current directory."""
    here = Path(__file__).resolve().parents[1]
    return here if (here / "notebooks").is_dir() else Path.cwd()


def outputs_dir() -> Path:
    """`outputs/` of the checkout; TRADELIB_OUTPUTS overrides it (tests use a temporary one)."""
    env = os.environ.get("TRADELIB_OUTPUTS")
    path = Path(env) if env else repo_root() / "outputs"
    path.mkdir(parents=True, exist_ok=True)
    return path


def notebooks_dir() -> Path:
    return repo_root() / "notebooks"


def is_synthetic(data_path: str) -> bool:
    return str(data_path).strip().lower() in {"", "synthetic"}


def data_places(data_path: str) -> list[str]:
    """Where a data path may be, in order: itself if absolute, else from the working directory, then from the
    checkout's root (the README's paths are written from it; a notebook's kernel runs in notebooks/)."""
    path = Path(data_path).expanduser()
    if path.is_absolute():
        return [os.path.normpath(path)]
    return list(dict.fromkeys(os.path.normpath(base / path) for base in (Path.cwd(), repo_root())))


def resolve_data_path(data_path: str) -> str:
    """A data path as the researcher meant it, absolute: the first of `data_places` that exists, else the first.
    'synthetic' is kept."""
    if is_synthetic(data_path):
        return data_path
    places = data_places(data_path)
    return next((p for p in places if Path(p).exists()), places[0])


def child_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a process that must run this very tradelib (torchrun's workers, the notebooks'
    kernels): PYTHONPATH led by the folder holding this package. A second checkout (a git worktree) sharing one
    virtual environment otherwise runs the installed checkout's code, and writes into its outputs/."""
    env = dict(os.environ if env is None else env)
    parent = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (parent, env.get("PYTHONPATH", "")) if p)
    return env


@contextlib.contextmanager
def child_environment() -> Iterator[None]:
    """os.environ as `child_env` makes it, for children started by a library that takes no environment
    (papermill's kernels); put back afterwards."""
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = child_env()["PYTHONPATH"]
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved


def unique_tmp(path: Path) -> Path:
    """A temporary name beside `path` that no other process or call uses (pid and a clock in it)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")


def left_by_dead_writer(path: Path) -> bool:
    """Whether `path` is named as unique_tmp names things (`<name>.<pid>.<ns>.<suffix>`, .tmp or a moved-aside
    .old) by a process that is gone: what a killed writer left, which no live one will finish."""
    parts = path.name.rsplit(".", 3)
    return len(parts) == 4 and parts[1].isdigit() and parts[2].isdigit() and not pid_alive(int(parts[1]))


def remove_stale_tmp(folder: Path) -> int:
    """Delete the temporary files (unique_tmp's) that a killed writer left in `folder`. Returns how many."""
    stale = [tmp for tmp in folder.glob(".*.tmp") if left_by_dead_writer(tmp)]
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    return len(stale)


def pid_alive(pid: int) -> bool:
    """Whether process `pid` lives. A pid read from a file (progress.json, a lock) that no process can have is
    none: 0 and negatives name process groups to os.kill, and 10**20 overflows it."""
    if not 0 < pid < 2**31:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    """An OSError of the writes in the block names `path`: a failed write(2) or fsync alone names no file
    (ENOSPC), and numpy's short write says only "N requested and M written", which is a full disk."""
    try:
        yield
    except OSError as exc:
        if exc.filename is not None:
            raise
        if exc.errno is None and re.fullmatch(r"\d+ requested and \d+ written", str(exc)):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from None
        raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from None


def writable_map(path: Path, dtype, shape: tuple[int, ...]):
    """A new .npy file of `shape` memory-mapped for writing, its blocks allocated on disk first: writing through
    the map into a block a full disk could not give killed the process with SIGBUS (exit 135, nothing said, the
    run's stop unhandled). A full disk now raises ENOSPC here, naming the file (`writing`)."""
    from numpy.lib.format import open_memmap

    with writing(path):
        array = open_memmap(path, mode="w+", dtype=dtype, shape=shape)
        with open(path, "r+b") as f:
            try:
                os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
            except OSError as exc:  # a file system that cannot allocate ahead: written as before
                if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                    raise
    return array


def write_bytes(data: bytes, path: Path) -> None:
    """Write a file in place (a device, a path the user named); an error names the file."""
    with writing(path), open(path, "wb") as f:
        f.write(data)


def atomic_write_bytes(data: bytes, path: Path) -> None:
    """Write to a unique temporary file, flush it to disk, then rename: a kill mid-write leaves the old file.
    An error names `path` (a full disk included)."""
    tmp = unique_tmp(path)
    try:
        with writing(path), open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class Busy(RuntimeError):
    """A lock another live process holds: `holder` is its PID as it wrote it (None if not yet written)."""

    def __init__(self, path: Path, holder: int | None) -> None:
        super().__init__(f"{path} is held by process {holder if holder is not None else '(starting)'}")
        self.path, self.holder = path, holder


class FileLock:
    """An exclusive `fcntl.flock` on a lock file, holding the owner's PID. The kernel drops it when the holding
    process ends, however it ends (kill -9 included), so a lock never outlives its process. `acquire(wait=False)`
    raises Busy when another process holds it."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.fd: int | None = None

    def holder(self) -> int | None:
        try:
            text = self.path.read_text().strip()
        except OSError:
            return None
        return int(text) if text.isdigit() else None

    def acquire(self, wait: bool = False) -> FileLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)  # (a link: ELOOP, not its target)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            raise Busy(self.path, self.holder()) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor drops the flock
            self.fd = None

    def __del__(self) -> None:  # a lock object dropped without release() (an abandoned run) lets go too
        try:
            self.release()
        except Exception:  # noqa: BLE001 - at interpreter exit os may be gone; the kernel drops the lock anyway
            pass

    def __enter__(self) -> FileLock:
        return self if self.fd is not None else self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
