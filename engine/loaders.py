"""The run's DataLoaders: samplers that split the data among processes (training resumable part-way through an
epoch, with any batch size and number of processes; evaluation giving each sample to exactly one process), batches
that name an unreadable sample in one line instead of a worker's traceback, and a worker process that died (the
out-of-memory killer's SIGKILL) reported in one line.
"""
import contextlib
import functools
import math
import re
import signal
from typing import List, Optional, Tuple

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from engine.launch import SampleError
from utils import error_message

# Errors of reading a sample that are the data's fault (a corrupt video, a missing frame): reported in one line.
SAMPLE_ERRORS = (OSError, ValueError, RuntimeError)


class ShardSampler(Sampler):
    """Evaluation: every process takes every world_size-th sample, so each sample is evaluated exactly once
    (DistributedSampler would pad the last batch with duplicates)."""

    def __init__(self, dataset: Dataset, rank: int, world_size: int):
        self.indices = list(range(rank, len(dataset), world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self):
        return len(self.indices)


class ResumableDistributedSampler(DistributedSampler):
    """DistributedSampler that can start an epoch part-way, to resume after an interruption, with any batch size and
    number of processes.

    An epoch's order, a permutation of the dataset, depends only on the seed, the epoch and the dataset's length:
    DistributedSampler gives process r the positions r, r + world_size, ... of it, so the first k iterations of all
    processes together take its first k * batch_size * world_size positions (`positions_after`). `skip` is the
    number of leading positions already trained; the rest is split among this run's processes as DistributedSampler
    splits a whole epoch, padded to equal shares with the epoch's first positions as it pads. With `skip` 0 this is
    DistributedSampler, and a run resumed with the batch size and processes it stopped with takes the samples it
    would have taken."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.skip = 0

    def epoch_order(self) -> List[int]:
        """The permutation of the dataset's indices that this epoch follows (DistributedSampler's)."""
        if not self.shuffle:
            return list(range(len(self.dataset)))
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        return torch.randperm(len(self.dataset), generator=generator).tolist()

    def positions_after(self, iterations: int, batch_size: int) -> int:
        """The leading positions of the epoch's order trained once this sampler's processes have done `iterations`
        full iterations of `batch_size` each (from `skip`)."""
        return self.skip + iterations * batch_size * self.num_replicas

    def __iter__(self):
        order = self.epoch_order()
        rest = order[self.skip:]
        share = len(self)
        if self.drop_last:
            rest = rest[:share * self.num_replicas]
        elif rest:
            padding = share * self.num_replicas - len(rest)
            rest += (order * math.ceil(padding / len(order)))[:padding]
        return iter(rest[self.rank::self.num_replicas])

    def __len__(self):
        remaining = max(0, len(self.dataset) - self.skip)
        return remaining // self.num_replicas if self.drop_last else math.ceil(remaining / self.num_replicas)


class SampleFailure:
    """What a loader yields instead of a batch when one of its samples could not be read. An exception raised in a
    loader worker process would reach the trainer re-raised with the worker's whole traceback in its message; this
    carries the one line that names the file and the sample."""

    def __init__(self, message: str):
        self.message = message


class ReportingDataset(Dataset):
    """`dataset` whose items are SampleFailures (naming the sample) where reading them fails with SAMPLE_ERRORS."""

    def __init__(self, dataset: Dataset, split: str):
        self.dataset, self.split = dataset, split

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, idx):
        try:
            return self.dataset[idx]
        except SAMPLE_ERRORS as error:
            describe = getattr(self.dataset, 'describe', None)
            what = f'sample {idx} of the {self.split} split' + (f' ({describe(idx)})' if describe else '')
            return SampleFailure(f'{what}: {error_message(error)}')


def _collate_or_failure(collate, items):
    failure = next((item for item in items if isinstance(item, SampleFailure)), None)
    return failure if failure is not None else collate(items)


def check_batch(batch):
    """The batch, or a SampleError naming the sample that could not be read."""
    if isinstance(batch, SampleFailure):
        raise SampleError(batch.message)
    return batch


def make_loader(dataset: Dataset, num_workers: int, batch_size: int, sampler: Sampler, device: torch.device,
                split: Optional[str] = None) -> DataLoader:
    """A loader whose batches are SampleFailures where a sample cannot be read (see `check_batch`)."""
    split = split or getattr(dataset, 'image_set', 'train' if isinstance(sampler, DistributedSampler) else 'test')
    return DataLoader(ReportingDataset(dataset, split), batch_size=batch_size, sampler=sampler,
                      collate_fn=functools.partial(_collate_or_failure, dataset.collator),
                      num_workers=num_workers, pin_memory=device.type == 'cuda', persistent_workers=False)


def to_device(value, device: torch.device):
    if torch.is_tensor(value):
        return value.to(device, non_blocking=True)
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_device(v, device) for v in value)
    return value


# --- a worker process that died ---------------------------------------------------------------------------------

# signal descriptions as torch's message gives them (strsignal: 'Killed') -> names ('SIGKILL')
_SIGNAL_NAMES = {signal.strsignal(s): s.name for s in signal.Signals if signal.strsignal(s)}


class LoaderWorkerDied(SampleError):
    """A DataLoader worker process died; raised, and printed, by the process whose loader it was (as a SampleError
    is)."""


def worker_death(error: BaseException) -> Optional[Tuple[str, str, Optional[str]]]:
    """(which worker, how it ended, the signal's name or None) when `error` is torch's RuntimeError for a DataLoader
    worker process that died, e.g. ('pid 123', 'was killed by SIGKILL', 'SIGKILL'); None for any other error.

    torch raises it in the loop's process from its SIGCHLD handler ('is killed by signal: Killed'), which names the
    signal; when that happens while the loop waits for a batch, torch catches it and raises 'exited unexpectedly'
    from it, so the whole chain of causes is read."""
    if not isinstance(error, RuntimeError):
        return None
    chain = []
    while error is not None and error not in chain:
        chain.append(error)
        error = error.__cause__ or error.__context__
    messages = ' | '.join(str(e) for e in chain)
    killed = re.search(r'DataLoader worker \(pid (\d+)\) is killed by signal: ([^.]+)\.', messages)
    if killed:
        name = _SIGNAL_NAMES.get(killed[2], killed[2])
        return f'pid {killed[1]}', f'was killed by {name}', name
    exited = re.search(r'DataLoader worker \(pid (\d+)\) exited unexpectedly with exit code (-?\d+)', messages)
    if exited:
        return f'pid {exited[1]}', f'exited with code {exited[2]}', None
    lost = re.search(r'DataLoader worker \(pid\(s\) ([\d, ]+)\) exited unexpectedly', messages)
    if lost:
        return f'pid(s) {lost[1]}', 'ended unexpectedly', None
    return None


def _likely_cause(signal_name: Optional[str]) -> str:
    if signal_name == 'SIGBUS':
        return 'the shared memory (/dev/shm) that workers hand batches over in may be full'
    if signal_name in ('SIGKILL', None):
        return 'the machine may have run out of memory (the out-of-memory killer sends SIGKILL)'
    return 'the machine may have run out of memory'


@contextlib.contextmanager
def reporting_worker_deaths(data: str, num_workers: int, batch_flag: str, batch_size: int):
    """Around a loop over the loader of `data` ('training data'): torch's error for one of its worker processes that
    died (killed by the out-of-memory killer, say) becomes a LoaderWorkerDied of one line, naming the worker and
    the signal and how to need less memory (fewer workers, a smaller batch: `batch_flag`). What was saved is the
    caller's to add."""
    try:
        yield
    except RuntimeError as error:
        death = worker_death(error)
        if death is None:
            raise
        worker, ending, signal_name = death
        where = (f' (process {dist.get_rank()} of {dist.get_world_size()})'
                 if dist.is_initialized() and dist.get_world_size() > 1 else '')
        lower = [f'fewer loader workers (--set num_workers={num_workers // 2}, now {num_workers})']
        if batch_size > 1:
            lower.append(f'a smaller batch ({batch_flag} {batch_size // 2}, now {batch_size})')
        raise LoaderWorkerDied(f'DataLoader worker ({worker}) of the {data}{where} {ending}: '
                               f'{_likely_cause(signal_name)}; use {" or ".join(lower)}.') from error
