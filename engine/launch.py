"""Launching a run: one process per device, spawned here (`-ng N`, `-gids ...`) or started by torchrun (RANK,
LOCAL_RANK and WORLD_SIZE set: each process joins that group, on one node or many), each with its process group
and its process-wide settings.

`launch(target, plan, *args)` runs `target(process, *args)` in every process of the plan (`Process`: rank, world
size, device, stop request), with these rules for what ends a process:
- a `UsageError` or `RunError` is printed as one line `error: ...` by rank 0 (a `SampleError`, which names a
  sample of one process's share, by the process that read it), exit code 2 (`Failed`);
- a stop signal (engine/stopping.py) is the target's business: it returns at its next safe point; a second
  signal (`StopNow`) ends the call with the status 'stopped'.
"""
import multiprocessing.connection
import os
import pickle
import signal
import socket
import sys
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Callable, List, Optional

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from engine.cpu_heap import keep_freed_memory_in_process
from engine.stopping import StopNow, StopRequest, forwarding_stops, pass_on, stop_requests
from utils import RunError, UsageError

TORCHRUN_VARIABLES = ('RANK', 'LOCAL_RANK', 'WORLD_SIZE')
ERROR_EXIT_CODE = 2


class SampleError(RunError):
    """A sample could not be read; raised in the process that read it (printed from any process)."""


@dataclass
class Plan:
    """Where the processes of a run go: one device each ('cpu', 'cuda:0', ...), the process-group backend, and
    whether torchrun started them (then this process is one of them, `rank` of `world_size`)."""
    devices: List[str]
    backend: Optional[str]
    torchrun: bool = False
    rank: int = 0
    world_size: int = 1


@dataclass
class Process:
    """One process of a run, as `launch` hands it to its target."""
    rank: int
    world_size: int
    device: torch.device
    stop: StopRequest

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def local_process(device: str = 'cpu') -> Process:
    """This process as a run of one, for calling a target directly (no signal handling: tests, notebooks)."""
    return Process(0, 1, torch.device(device), StopRequest())


def under_torchrun() -> bool:
    return all(v in os.environ for v in TORCHRUN_VARIABLES)


def plan_processes(cpu: bool, num_processes: Optional[int] = None, gpu_ids: Optional[List[int]] = None) -> Plan:
    """The plan of `--cpu` / `-ng N` / `-gids ...`, or torchrun's when it started this process (then `--cpu` or a
    machine without CUDA runs on the CPU over gloo, as before). A GPU that is not there is a UsageError."""
    if under_torchrun():
        rank, world_size = int(os.environ['RANK']), int(os.environ['WORLD_SIZE'])
        use_cuda = not cpu and torch.cuda.is_available()
        device = f'cuda:{os.environ["LOCAL_RANK"]}' if use_cuda else 'cpu'
        return Plan([device], 'nccl' if use_cuda else 'gloo', torchrun=True, rank=rank, world_size=world_size)
    if cpu:
        count = num_processes or 1
        return Plan(['cpu'] * count, 'gloo' if count > 1 else None)
    ids = gpu_ids if gpu_ids is not None else list(range(num_processes or 1))
    if not torch.cuda.is_available():
        raise UsageError(f'{len(ids)} GPU(s) requested but CUDA is not available on this machine; run on the CPU '
                         'with --cpu (and --cpu -ng N for N processes)')
    if max(ids) >= torch.cuda.device_count():
        raise UsageError(f'GPU ids {ids} requested but this machine has {torch.cuda.device_count()} GPU(s)')
    return Plan([f'cuda:{i}' for i in ids], 'nccl' if len(ids) > 1 else None)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def set_up_process(device: str, keep_freed_memory: bool, processes_on_machine: int = 1):
    """Process-wide settings (entry points only: they change the whole process). CPU processes of one machine
    share its cores instead of each taking all of them; `keep_freed_memory`: engine/cpu_heap.py."""
    if device == 'cpu':
        if processes_on_machine > 1:
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // processes_on_machine))
        if keep_freed_memory:
            keep_freed_memory_in_process()
    else:
        torch.cuda.set_device(torch.device(device))


class Failed(Exception):
    """A process of the run failed; what it printed says why. `exit_code`: the code to exit with."""

    def __init__(self, exit_code: int):
        super().__init__(exit_code)
        self.exit_code = exit_code


def launch(target: Callable[..., Any], plan: Plan, *args, keep_freed_memory: bool = True, exiting: bool = False):
    """Run `target(process, *args)` in every process of `plan`. Returns this process's result (spawned processes:
    'interrupted' when a stop signal came, else 'done'; 'stopped' after a second signal). Raises `Failed` when a
    process failed, its error printed. `exiting`: this process ends afterwards (signals then stay ignored)."""
    if len(plan.devices) > 1:
        return _spawn(target, plan, args, keep_freed_memory, exiting)
    set_up_process(plan.devices[0], keep_freed_memory)
    try:
        return _run_process(target, plan.rank, plan.world_size, plan.devices[0], plan.backend, args, exiting)
    except (UsageError, RunError) as error:
        if plan.rank == 0 or isinstance(error, SampleError):  # (a sample error is of this process's share)
            print_error(error)
        raise Failed(ERROR_EXIT_CODE) from error


def _run_process(target, rank, world_size, device, backend, args, exiting):
    with stop_requests(training=True, announce=rank == 0, exiting=exiting) as stop:
        try:
            if world_size > 1 and not dist.is_initialized():
                dist.init_process_group(backend, rank=rank, world_size=world_size)
            try:
                return target(Process(rank, world_size, torch.device(device), stop), *args)
            finally:
                if dist.is_initialized():
                    dist.destroy_process_group()
        except StopNow:
            return 'stopped'


def _worker(rank, target, plan, port, args, keep_freed_memory):
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    set_up_process(plan.devices[rank], keep_freed_memory, processes_on_machine=len(plan.devices))
    try:
        # (a stopped run ends with 0 here: the launching process, which got the signal, gives the exit code)
        _run_process(target, rank, len(plan.devices), plan.devices[rank], plan.backend, args, exiting=True)
    except (UsageError, RunError) as error:
        if rank == 0 or isinstance(error, SampleError):
            print_error(error)
        sys.exit(ERROR_EXIT_CODE)


def _spawn(target, plan: Plan, args, keep_freed_memory: bool, exiting: bool):
    processes = []
    with forwarding_stops(lambda: processes, exiting=exiting) as received:
        context = mp.start_processes(_worker, args=(target, plan, free_port(), args, keep_freed_memory),
                                     nprocs=len(plan.devices), join=False, start_method='spawn')
        processes.extend(context.processes)
        for signum in list(received):  # (those that came while the processes started)
            pass_on(processes, signum)
        _join(context)
    return 'interrupted' if received else 'done'


def _join(context):
    """Wait for the processes; when one fails, the others are killed at once (the run has failed: their files are
    written atomically) and `Failed` raised, after what the failed one printed (torch's own join would send them
    SIGTERM, which they take for a request to stop at a safe point, and print its warnings after the error)."""
    pending = {process.sentinel: index for index, process in enumerate(context.processes)}
    while pending:
        for sentinel in multiprocessing.connection.wait(list(pending)):
            index = pending.pop(sentinel)
            process = context.processes[index]
            process.join()
            if process.exitcode == 0:
                continue
            for other in context.processes:
                if other.is_alive():
                    other.kill()
                other.join()
            error_file = Path(context.error_files[index])
            if process.exitcode == 1 and error_file.is_file() and error_file.stat().st_size:  # (a bug: its traceback)
                with open(error_file, 'rb') as f:
                    print(f'error in a worker process:\n{pickle.load(f)}', file=sys.stderr)
            elif process.exitcode != ERROR_EXIT_CODE:  # (a process that printed its error exits with that code)
                how = f'by {signal.Signals(-process.exitcode).name}' if process.exitcode < 0 else \
                    f'with exit code {process.exitcode}'
                print(f'error: worker process {index} (pid {process.pid}) ended {how}', file=sys.stderr)
            raise Failed(process.exitcode if process.exitcode > 0 else 1)


def print_error(error: BaseException):
    """A user-facing error as the last line of the output: what it details (an expected layout, say) first."""
    details = getattr(error, 'details', None) or getattr(getattr(error, '__cause__', None), 'layout', None)
    if details:
        print(details, file=sys.stderr)
    print(f'error: {error}', file=sys.stderr)
