"""Small shared helpers: user-facing errors, padded batches, distributed state and collectives, random states,
file I/O, autocast."""
import errno
import io
import json
import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Any, List, Optional

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


def file_in_the_way(path) -> Optional[Path]:
    """The nearest existing folder above `path` when it is a file instead (nothing can be created at `path`)."""
    parent = next((p for p in Path(path).parents if p.exists()), None)
    return parent if parent is not None and not parent.is_dir() else None


def check_directory_path(path, what: str):
    """A UsageError when the directory `path` (created later if missing) is a file or lies below one."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f'{what} {path} is a file; expected a directory (it is created if missing)')
    blocking = file_in_the_way(path)
    if blocking is not None:
        raise UsageError(f'{what} {path}: {blocking} is a file, not a directory')


class RunError(Exception):
    """A run cannot go on (a checkpoint that does not fit, a non-finite loss, a dataset that cannot be read, ...):
    printed in one line, without a stack trace, with exit code 2. `details`, when set, is printed before that line
    (an expected folder layout, say)."""

    def __init__(self, message: str, details: Optional[str] = None):
        super().__init__(message)
        self.details = details


def open_to_append(path, binary: bool = False):
    """`path` opened to append (text, or bytes), created with the umask's permissions; a symbolic link there is an
    OSError (ELOOP) instead of a file written elsewhere."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o666)
    return os.fdopen(fd, 'ab' if binary else 'a')


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
        if error.errno == errno.ELOOP:
            reason = 'it is a symbolic link, and nothing is written through a link'
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


@contextmanager
def replacing(path):
    """Yields a temporary path beside `path` (`.<name>.<random>.tmp`); what is written there replaces `path` in one
    rename when the block ends without an error, and is deleted otherwise. So a crash or a full disk leaves the
    previous file whole instead of a truncated one; a symlink at `path` is replaced, never written through; the
    file gets the permissions the user's umask gives a new file (the kernel applies it as the file is created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        temporary = path.with_name(f'.{path.name}.{secrets.token_hex(4)}.tmp')
        try:  # (O_EXCL: a name another writer or a link holds is not taken)
            os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            break
        except FileExistsError:
            continue
    try:
        yield temporary
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def atomic_write(path, write_fn, mode='wb'):
    """Write a file through `write_fn(file)`, replacing `path` atomically (see `replacing`)."""
    with replacing(path) as temporary:
        with open(temporary, mode) as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())


def write_json(path, value, what: str = 'file', indent: Optional[int] = None):
    """Write `value` as JSON to `path`, whole or not at all (`atomic_write`); an OSError is a WriteError naming the
    file as the `what` (`writing`)."""
    with writing(path, what):
        atomic_write(path, lambda f: json.dump(value, f, indent=indent), mode='w')


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


class _WriteErrors(io.RawIOBase):
    """A file that keeps the OSError its writes raised: torch's zip writer reports a failed write (a full disk) as a
    RuntimeError about stream positions, which names neither the file nor the cause."""

    def __init__(self, file):
        super().__init__()
        self.file, self.error = file, None

    def writable(self):
        return True

    def write(self, data):
        try:
            return self.file.write(data)
        except OSError as error:
            self.error = error
            raise


def save_checkpoint(checkpoint, path, what: str = 'checkpoint'):
    """torch.save, atomically: the previous file at `path` stays intact if writing fails (a WriteError names
    `path`, as the `what`)."""
    def write(f):
        recorder = _WriteErrors(f)
        try:
            torch.save(checkpoint, recorder)
        except RuntimeError as error:
            if recorder.error is None:
                raise
            raise recorder.error from error
    with writing(path, what):
        atomic_write(path, write)


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
