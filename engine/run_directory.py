"""A run's directory and what a run writes there: `config.yaml`, `provenance.json`, `log.txt`,
`metrics_epoch_<n>.json`, `metrics.jsonl`, `checkpoints/` (engine/checkpoints.py), the evaluator's outputs and
`wandb/`.

The rules, held by `RunDirectory`:
- one run per directory: `claim` locks `<run>/.lock` for the run's whole life (`DirectoryLock`; the kernel frees
  it when its process ends, however it ends), and refuses a directory that another live run holds, or that holds
  a run (config.yaml or checkpoints/) unless the run resumes from one of its checkpoints or `--overwrite` is given;
- nothing is written before the run has checked its inputs: `open` creates the files, and only then does
  `--overwrite` delete the previous run's files (`RUN_OUTPUTS`, nothing else), never those the run reads;
- a write cut short leaves no half-written file (utils.replacing), and the temporary files that an interrupted run
  left are removed by the next run that claims the directory.
"""
import itertools
import json
import os
import shutil
import socket
import sys
from datetime import datetime
from pathlib import Path
from typing import Iterable, Optional

import torch.distributed as dist

from config import Config, save_config
from engine.checkpoints import CheckpointFolder
from engine.logs import format_table, log_to_file, logger
from engine.provenance import describe
from utils import RunError, UsageError, check_directory_path, error_message, is_main_process, open_to_append, \
    replacing, write_json, writing

# What tells that a folder holds a run, and what --overwrite deletes of a previous run (nothing else is touched).
RUN_MARKERS = ('config.yaml', 'checkpoints')
RUN_OUTPUTS = ('config.yaml', 'provenance.json', 'log.txt', 'metrics.jsonl', 'metrics_epoch_*.json', 'checkpoints',
               'pictures', 'validation_outputs', 'wandb')
# The folders of a run where an interrupted atomic write can leave its temporary `.<name>.<random>.tmp` file.
TEMPORARY_FILE_FOLDERS = ('.', 'checkpoints', 'validation_outputs')


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
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)  # (the umask applies)
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


def _os_reason(error: OSError) -> str:
    return error.strerror or error_message(error)


class RunDirectory:
    """The directory of one run. In the launching process, `claim` makes and locks it; in the run's processes,
    `RunDirectory(path)` writes into it (`open`, `record_metrics`, the checkpoints)."""

    def __init__(self, path):
        self.path = Path(path)
        self.checkpoints = CheckpointFolder(self.path / 'checkpoints')
        self._lock: Optional[DirectoryLock] = None
        self._created = False

    # --- the launching process ----------------------------------------------------------------------------------

    @classmethod
    def claim(cls, path, resume: Optional[str] = None, overwrite: bool = False, running_mode: str = 'train',
              unique: bool = False, inputs: Iterable = ()) -> 'RunDirectory':
        """Create (if need be) and lock the run directory for one run, before the run writes anything there.

        Refused, with a UsageError: a path that is or lies below a file, or that cannot be created or written; a
        directory locked by a live run (its pid is named); a directory that holds a run (config.yaml or
        checkpoints/), unless `resume` is one of its files or `overwrite` is given; with `overwrite`, a directory
        whose previous run's files include one of `inputs` (the files the run reads). `unique`: the name is a
        default one, `<name>_2`, `<name>_3`, ... are taken when another run created it first. Temporary files
        that an interrupted write left in the directory are removed (the lock tells that no live run is writing
        them)."""
        run = cls(path)
        check_directory_path(run.path, 'run directory')
        try:
            if unique:
                base = run.path
                for n in itertools.count(2):
                    try:
                        run.path.mkdir(parents=True)
                        break
                    except FileExistsError:
                        run.path = base.with_name(f'{base.name}_{n}')
                run._created = True
            elif not run.path.is_dir():
                run.path.mkdir(parents=True, exist_ok=True)
                run._created = True
        except OSError as error:
            raise UsageError(f'cannot create the run directory {run.path}: {_os_reason(error)}') from error
        run.checkpoints = CheckpointFolder(run.path / 'checkpoints')
        run.refuse_links()
        lock = DirectoryLock(run.path)
        try:
            previous = lock.acquire()
        except (LockHeld, OSError) as error:
            if run._created:
                run.path.rmdir()
            if isinstance(error, LockHeld):
                raise UsageError(f'run directory {run.path} is in use by another run '
                                 f'({describe_holder(error.holder)}); wait for it to end or choose another '
                                 '--output_dir') from None
            raise UsageError(f'cannot write into the run directory {run.path}: {_os_reason(error)}') from error
        run._lock = lock
        try:
            if previous:
                print(f'note: {lock.path} was left by {describe_holder(previous)}, which is no longer running; '
                      'taking it over', file=sys.stderr)
            run._check_takes_over(resume, overwrite, running_mode, inputs)
            run.remove_stale_temporary_files()
        except BaseException:
            run.release()
            raise
        return run

    def refuse_links(self):
        """A run writes no file through a symbolic link: a link in place of a file or folder the run writes could
        send its writes (the lock, appended logs, checkpoints) to a file elsewhere."""
        for name in ('.lock', *RUN_OUTPUTS, *(f'checkpoints/{n}' for n in ('last.pth.tar', 'best.pth.tar'))):
            for path in self.path.glob(name) if '*' in name else [self.path / name]:
                if path.is_symlink():
                    raise UsageError(f'{path} is a symbolic link (to {os.readlink(path)}); a run writes no file '
                                     'through a link: remove it, or choose another --output_dir')

    def _check_takes_over(self, resume, overwrite, running_mode, inputs):
        found = [name for name in RUN_MARKERS if (self.path / name).exists()]
        resumes_here = resume is not None and Path(resume).resolve().is_relative_to(self.path.resolve())
        if found and not overwrite and not resumes_here:
            what = f'run directory {self.path} already holds a run ({", ".join(found)})'
            if running_mode == 'train':
                raise UsageError(f'{what}: continue it with --resume {self.checkpoints.last}, choose another '
                                 '--output_dir, or give --overwrite to delete its files first')
            raise UsageError(f'{what}: evaluate into another --output_dir, or give --overwrite to delete its files '
                             'first')
        if overwrite:
            for given in inputs:
                if given and any(Path(given).resolve().is_relative_to(p.resolve()) for p in self.previous_outputs()):
                    raise UsageError(f'--overwrite would delete {given}, which this run reads: copy it out of '
                                     f'{self.path} first, or choose another --output_dir')

    def release(self):
        if self._lock is not None:
            self._lock.release()
            self._lock = None
        if self._created:
            try:
                self.path.rmdir()  # only when empty: the run stopped before writing anything
            except OSError:
                pass

    def previous_outputs(self):
        return [path for pattern in RUN_OUTPUTS for path in sorted(self.path.glob(pattern))]

    def remove_stale_temporary_files(self):
        for folder in TEMPORARY_FILE_FOLDERS:
            for path in sorted((self.path / folder).glob('.*.tmp')):
                if path.is_file():
                    size = path.stat().st_size
                    path.unlink()
                    print(f'note: removed {path} ({size / 2 ** 20:.1f} MiB), left by an interrupted write',
                          file=sys.stderr)

    # --- the run's processes ------------------------------------------------------------------------------------

    def open(self, config: Config, replace_run: bool, provenance: dict):
        """The run has checked its checkpoint, config and data: from here on it writes into its directory (the
        main process; the others wait for it)."""
        if is_main_process():
            with writing(self.path, 'run directory'):
                self.path.mkdir(parents=True, exist_ok=True)
            if replace_run:
                self.remove_previous_run()
            with writing(self.path / 'config.yaml', 'config'), replacing(self.path / 'config.yaml') as temporary:
                save_config(config, temporary)
            self.write_json('provenance.json', provenance, 'provenance file')
        if dist.is_initialized():
            dist.barrier()
        log_to_file(self.path / 'log.txt')
        logger.info(describe(provenance))

    def remove_previous_run(self):
        """--overwrite: delete the files a previous run wrote (RUN_OUTPUTS), nothing else."""
        removed = []
        for path in self.previous_outputs():
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
            removed.append(path.name)
        if removed:
            logger.info(f'--overwrite: removed the previous run\'s {", ".join(removed)} from {self.path}')

    def write_json(self, name: str, value, what: str):
        write_json(self.path / name, value, what, indent=2)

    def record_metrics(self, epoch: int, eval_metrics: dict, train_losses: Optional[dict] = None, wandb_run=None):
        """Print the metrics as a table, write metrics_epoch_<n>.json and append a line to metrics.jsonl."""
        logger.info(f'epoch {epoch} evaluation:\n{format_table(eval_metrics)}')
        self.write_json(f'metrics_epoch_{epoch}.json', {'epoch': epoch, **eval_metrics}, 'metrics file')
        line = {'epoch': epoch, 'metrics': eval_metrics}
        if train_losses is not None:
            line['train_losses'] = train_losses
        path = self.path / 'metrics.jsonl'
        with writing(path, 'metrics file'), open_to_append(path) as f:
            f.write(json.dumps(line) + '\n')
        if wandb_run is not None:
            wandb_run.log({**{f'eval/{k}': v for k, v in eval_metrics.items() if isinstance(v, (int, float))},
                           **{f'train/{k}': v for k, v in (train_losses or {}).items()}}, step=epoch)

    def start_wandb(self, config: Config):
        if config.wandb_mode == 'disabled' or not is_main_process():
            return None
        try:
            import wandb
        except ImportError as error:
            raise RunError(f"wandb_mode is '{config.wandb_mode}' but wandb is not installed: pip install wandb, "
                           "or set wandb_mode: disabled") from error
        return wandb.init(project='mttr', config=config.to_dict(), mode=config.wandb_mode, dir=str(self.path))
