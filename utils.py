"""Small shared helpers: user-facing errors, padded batches, distributed state and collectives, random states,
file I/O, autocast."""
import ctypes
import ctypes.util
import json
import os
import random
import socket
import tempfile
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, List, Optional

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor


class UsageError(Exception):
    """A problem with what the user gave (a flag, a file, a config value): the command-line programs print it in
    one line, without a stack trace, and exit with code 2."""


def error_message(error: BaseException) -> str:
    """The message an error was raised with, on one line (str() of a KeyError would wrap it in quotes)."""
    message = str(error.args[0]) if len(error.args) == 1 else str(error)
    return ' '.join(message.split())


def safe_name(value, what: str, source) -> str:
    """`value` as a single path component, or a ValueError naming `source` (the file it was read from) and `what`
    it is. Ids read from dataset files become folder and file names (`<run>/.../<video>/<exp_id>/<frame>.png`):
    an id such as `../../x` or `/abs` would read or write outside the folder it is joined to."""
    name = value if isinstance(value, str) else None
    if name is None or name in ('', '.', '..') or any(c in name for c in '/\\\0'):
        raise ValueError(f'{source}: {what} {value!r} is not a plain name (expected a non-empty file name '
                         f"without '/', '\\' or NUL, other than '.' and '..')")
    return name


def check_directory_path(path, what: str):
    """A UsageError when the directory `path` (created later if missing) is a file or lies below one."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f'{what} {path} is a file; expected a directory (it is created if missing)')
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UsageError(f'{what} {path}: {parent} is a file, not a directory')
            break


class WriteError(Exception):
    """A file of a run could not be written (disk full, read-only, ...); the message names the file."""


@contextmanager
def writing(path, what: str = 'file'):
    """Turn an OSError raised while writing `path` into a WriteError naming it (PIL and torch name no file when
    the disk fills up)."""
    try:
        yield
    except OSError as error:
        reason = error.strerror or error_message(error) or type(error).__name__
        raise WriteError(f'cannot write the {what} {path}: {reason}') from error


class NestedTensor:
    """A padded batch and its padding mask (True on padding), as the model takes it."""

    def __init__(self, tensors: Tensor, mask: Optional[Tensor]):
        self.tensors = tensors
        self.mask = mask

    def to(self, device, non_blocking=False):
        mask = None if self.mask is None else self.mask.to(device, non_blocking=non_blocking)
        return NestedTensor(self.tensors.to(device, non_blocking=non_blocking), mask)

    def decompose(self):
        return self.tensors, self.mask

    def __repr__(self):
        return f'NestedTensor(tensors={tuple(self.tensors.shape)}, mask={None if self.mask is None else tuple(self.mask.shape)})'


def _max_by_axis(shapes):
    return [max(sizes) for sizes in zip(*shapes)]


def nested_tensor_from_tensor_list(tensor_list: List[Tensor]) -> NestedTensor:
    """Pad `[C, H, W]` tensors to the largest C, H and W: tensors `[B, C, H, W]`, mask `[B, H, W]`."""
    batch_shape = [len(tensor_list)] + _max_by_axis([list(t.shape) for t in tensor_list])
    b, _, h, w = batch_shape
    first = tensor_list[0]
    tensors = torch.zeros(batch_shape, dtype=first.dtype, device=first.device)
    mask = torch.ones((b, h, w), dtype=torch.bool, device=first.device)
    for t, padded, m in zip(tensor_list, tensors, mask):
        padded[:t.shape[0], :t.shape[1], :t.shape[2]].copy_(t)
        m[:t.shape[1], :t.shape[2]] = False
    return NestedTensor(tensors, mask)


def nested_tensor_from_videos_list(videos_list: List[Tensor]) -> NestedTensor:
    """Pad `[T, C, H, W]` videos to the largest T, H and W: tensors `[T, B, C, H, W]`, mask `[T, B, H, W]`."""
    b = len(videos_list)
    t, c, h, w = _max_by_axis([list(v.shape) for v in videos_list])
    first = videos_list[0]
    videos = torch.zeros((b, t, c, h, w), dtype=first.dtype, device=first.device)
    mask = torch.ones((b, t, h, w), dtype=torch.bool, device=first.device)
    for v, padded, m in zip(videos_list, videos, mask):
        padded[:v.shape[0], :, :v.shape[2], :v.shape[3]].copy_(v)
        m[:v.shape[0], :v.shape[2], :v.shape[3]] = False
    return NestedTensor(videos.transpose(0, 1), mask.transpose(0, 1))


def is_dist_avail_and_initialized():
    return dist.is_available() and dist.is_initialized()


def get_world_size():
    return dist.get_world_size() if is_dist_avail_and_initialized() else 1


def get_rank():
    return dist.get_rank() if is_dist_avail_and_initialized() else 0


def is_main_process():
    return get_rank() == 0


def all_gather_lists(items: list) -> list:
    """Every process's list, concatenated in rank order (the list itself without torch.distributed)."""
    if not is_dist_avail_and_initialized():
        return items
    gathered = [None] * get_world_size()
    dist.all_gather_object(gathered, items)
    return [item for part in gathered for item in part]


def broadcast_object(value: Any) -> Any:
    """The main process's `value` on every process."""
    if not is_dist_avail_and_initialized():
        return value
    shared = [value]
    dist.broadcast_object_list(shared, src=0)
    return shared[0]


def rng_states() -> dict:
    """This process's random states (Python, NumPy, torch, CUDA), as types a weights_only checkpoint can hold."""
    name, keys, position, has_gauss, cached_gauss = np.random.get_state()
    states = {'python': random.getstate(), 'torch': torch.get_rng_state(),
              'numpy': (name, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached_gauss)}
    if torch.cuda.is_available():
        states['cuda'] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict):
    version, internal, gauss = states['python']
    random.setstate((version, tuple(internal), gauss))
    name, keys, position, has_gauss, cached_gauss = states['numpy']
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, cached_gauss))
    torch.set_rng_state(states['torch'])
    if 'cuda' in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states['cuda'])


def atomic_write(path, write_fn, mode='wb'):
    """Write a file through `write_fn(file)` into a temporary file beside it, then rename it into place.

    A crash or a full disk leaves the previous file untouched instead of a truncated one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.', suffix='.tmp')
    try:
        with os.fdopen(fd, mode) as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


class LockHeld(Exception):
    """Another live process holds the lock; `holder` is what it wrote into the lock file (pid, host, start)."""

    def __init__(self, path: Path, holder: dict):
        super().__init__(path, holder)
        self.path, self.holder = path, holder


class DirectoryLock:
    """An exclusive lock on a folder: the file `<folder>/.lock`, flock'ed while held, holding the holder's pid,
    host and start time. The kernel releases the lock when its process ends, however it ends, so a lock file left
    by a killed process is free for the next one (`acquire` returns what that process had written, to report it).
    """

    def __init__(self, folder):
        self.path = Path(folder) / '.lock'
        self._fd = None

    @staticmethod
    def _read(fd) -> dict:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 4096).decode(errors='replace')
        try:
            holder = json.loads(text)
        except ValueError:
            return {'unreadable': text} if text else {}
        return holder if isinstance(holder, dict) else {'unreadable': text}

    def acquire(self) -> dict:
        """Take the lock; returns what a previous, dead holder left in the file ({} if nothing). Raises LockHeld
        when a live process holds it."""
        import fcntl  # (POSIX only: imported here, so that this module imports everywhere)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = self._read(fd)
                os.close(fd)
                raise LockHeld(self.path, holder) from None
            except BaseException:
                os.close(fd)
                raise
            try:
                current = os.stat(self.path).st_ino
            except FileNotFoundError:
                current = None
            if current != os.fstat(fd).st_ino:  # its holder removed the file between our open and flock
                os.close(fd)
                continue
            previous = self._read(fd)
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, json.dumps({'pid': os.getpid(), 'host': socket.gethostname(),
                                     'started': datetime.now().isoformat(timespec='seconds')}).encode())
            self._fd = fd
            return previous

    def release(self):
        if self._fd is not None:
            self.path.unlink(missing_ok=True)  # while still holding it: see the inode check in acquire
            os.close(self._fd)
            self._fd = None


def describe_holder(holder: dict) -> str:
    """`pid 123 on host, since 2024-05-01T10:00:00`, from what a DirectoryLock holder wrote."""
    if 'pid' not in holder:
        return 'an unknown process'
    text = f"pid {holder['pid']}"
    if holder.get('host') and holder['host'] != socket.gethostname():
        text += f" on {holder['host']}"
    return text + (f", since {holder['started']}" if holder.get('started') else '')


def cache_dir(configured: str) -> Path:
    """The cache directory for sample lists and evaluation ground truth (never inside the source tree)."""
    path = Path(os.path.expanduser(os.path.expandvars(configured)))
    path.mkdir(parents=True, exist_ok=True)
    return path


def read_checkpoint(path):
    """Read a checkpoint file with `weights_only=True`, with an error that names the file when it cannot."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'checkpoint not found: {path}')
    try:
        return torch.load(path, map_location='cpu', weights_only=True)
    except Exception as error:
        raise RuntimeError(f'could not read checkpoint {path} ({type(error).__name__}: {error}); the file is '
                           'truncated or not a PyTorch checkpoint') from error


def save_checkpoint(checkpoint, path):
    """Save atomically: the previous file at `path` stays intact if writing fails (a WriteError names `path`)."""
    with writing(path, 'checkpoint'):
        atomic_write(path, lambda f: torch.save(checkpoint, f))


def keep_freed_memory_in_process() -> bool:
    """On Linux with glibc, serve every allocation from the heap and keep freed memory there for reuse.

    By default glibc maps each large tensor afresh and unmaps it when freed, and returns the top of the heap to
    the system, so every forward and backward pass page-faults its activations in again: on this project's
    test machine a training step took 5.2 s with glibc's defaults and 3.6 s with this (450,000 -> 6,000 page
    faults per step). Returns whether the setting took (False elsewhere, e.g. with another C library, where
    nothing changes). The process keeps its peak memory instead of giving it back between steps.
    """
    name = ctypes.util.find_library('c')
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # glibc's malloc.h
    return mallopt(m_mmap_max, 0) == 1 and mallopt(m_trim_threshold, 2 ** 31 - 1) == 1


def autocast_dtype(config, device: torch.device, training: bool) -> Optional[torch.dtype]:
    """The run's autocast dtype, None for fp32. With enable_amp: float16 on CUDA (training only, as the original)
    or bfloat16 on CUDA or the CPU (training and evaluation)."""
    if not config.enable_amp:
        return None
    if config.amp_dtype == 'bfloat16':
        return torch.bfloat16
    return torch.float16 if training and device.type == 'cuda' else None


def autocast(config, device: torch.device, training: bool):
    """The run's autocast context (see autocast_dtype)."""
    dtype = autocast_dtype(config, device, training)
    return torch.autocast(device.type, dtype=dtype or torch.float16, enabled=dtype is not None)
