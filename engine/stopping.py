"""Stop signals (SIGTERM from a cluster's preemption or `scancel`, SIGINT from Ctrl-C), handled in two places:

- `stop_requests`, in every process that runs: the first signal asks the run to stop at its next safe point (the
  end of a training iteration, where a resumable checkpoint is saved; the end of an evaluation batch), a second
  one stops it at once (`StopNow`);
- `forwarding_stops`, in a process that launched others: SIGTERM is passed on to them (Ctrl-C in a terminal
  reaches every process of its group by itself), and both are recorded;
- `interrupting_stops`, in a front end that has no safe point to reach (inference.py on one video, demo.py):
  SIGTERM interrupts as Ctrl-C does, a KeyboardInterrupt whose argument is the signal (`stopped_by`).

Once the run is over a signal must not end the process with a traceback or a negative exit code (the launcher
would take that for a crash and kill the other processes, perhaps while one saves a checkpoint): both context
managers leave the signals ignored when the process is about to exit, and restore the previous handlers otherwise.
"""
import contextlib
import os
import signal
import sys
from typing import Callable, Iterator, List, Optional

import torch
import torch.distributed as dist

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopNow(BaseException):
    """Raised by a second stop signal: the run ends at once, saving nothing (a checkpoint being written is left
    out, the previous ones stay as they were)."""


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f'signal {signum}'


class StopRequest:
    """What the run checks at its safe points: `signum` is set by the first stop signal. `announce`: print what the
    signal does (on one process of a group only)."""

    def __init__(self, training: bool = True, announce: bool = True):
        self.training, self.announce = training, announce
        self.signum: Optional[int] = None
        self.stopping_now = False

    def __call__(self, signum, _frame):
        if self.signum is None:
            self.signum = signum
            if self.announce:
                action = ('saving a resumable checkpoint at the end of this iteration' if self.training else
                          'stopping the evaluation after this batch; nothing will be saved')
                print(f'\n{signal_name(signum)}: {action} (send it again to stop at once)', file=sys.stderr)
        elif not self.stopping_now:  # (further signals are ignored while the run unwinds)
            self.stopping_now = True
            raise StopNow(signum)

    def agreed(self, device: torch.device) -> bool:
        """True on every process as soon as any process got a signal, so all stop at the same iteration."""
        flag = torch.tensor([float(self.signum is not None)], device=device)
        if dist.is_initialized():
            dist.all_reduce(flag)
        return flag.item() > 0


@contextlib.contextmanager
def _handlers(handler, exiting: bool, signals=STOP_SIGNALS):
    previous = {signum: signal.signal(signum, handler) for signum in signals}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, signal.SIG_IGN if exiting else old)


@contextlib.contextmanager
def stop_requests(training: bool, announce: bool = True, exiting: bool = False) -> Iterator[StopRequest]:
    """Stop signals become a StopRequest for the run (see the module's docstring); `exiting`: the process ends after
    this, so the signals stay ignored afterwards."""
    stop = StopRequest(training, announce)
    with _handlers(stop, exiting):
        yield stop


@contextlib.contextmanager
def forwarding_stops(processes: Callable[[], List], exiting: bool = False) -> Iterator[List[int]]:
    """In a launching process: SIGTERM is passed on to the live processes of `processes()`, and every stop signal
    is appended to the yielded list (`pass_on` repeats those that came while the processes started).
    Install it before the processes start: they inherit an ignored signal."""
    received: List[int] = []

    def record(signum, _frame):
        received.append(signum)
        if signum == signal.SIGTERM:
            pass_on(processes(), signum)

    with _handlers(record, exiting):
        yield received


def pass_on(processes, signum: int):
    for process in processes:
        if process.is_alive():
            os.kill(process.pid, signum)


def _interrupt(signum, _frame):
    raise KeyboardInterrupt(signum)


@contextlib.contextmanager
def interrupting_stops() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt(SIGTERM) as Ctrl-C raises KeyboardInterrupt, for `finally` blocks to clean
    up in both cases."""
    with _handlers(_interrupt, exiting=False, signals=(signal.SIGTERM,)):
        yield


def stopped_by(interrupt: KeyboardInterrupt) -> signal.Signals:
    """The signal behind a KeyboardInterrupt: SIGTERM under `interrupting_stops`, else SIGINT (Ctrl-C)."""
    return signal.Signals(interrupt.args[0] if interrupt.args else signal.SIGINT)
