"""The run's log: stdout on the main process, and the run directory's log.txt once the run has checked its inputs
(what was logged before is copied there)."""
import logging
import sys
from pathlib import Path

from utils import error_message, is_main_process, open_to_append, writing

logger = logging.getLogger('mttr')
LOG_FORMAT = logging.Formatter('%(asctime)s %(message)s', '%Y-%m-%d %H:%M:%S')


class _EarlyRecords(logging.Handler):
    """Keeps what is logged before the run's log file is opened (the run writes nothing until it has checked its
    checkpoint and data), to copy it there."""

    def __init__(self):
        super().__init__()
        self.records = []

    def emit(self, record):
        self.records.append(record)


class _LogFile(logging.FileHandler):
    """log.txt. A record it cannot write (a full disk) is reported once, in one line, instead of a traceback per
    record; the run goes on (the checkpoint writes report the disk themselves)."""
    failed = False

    def _open(self):
        return open_to_append(self.baseFilename)

    def handleError(self, record):
        if not self.failed:
            self.failed = True
            print(f'warning: cannot write the log {self.baseFilename} ({error_message(sys.exc_info()[1])}); '
                  'logging goes to stdout only', file=sys.stderr)


def setup_logging():
    """Log to stdout on the main process; `log_to_file` adds the run's log.txt."""
    logger.handlers.clear()
    logger.setLevel(logging.INFO)
    logger.propagate = False
    if is_main_process():
        stdout = logging.StreamHandler(sys.stdout)
        stdout.setFormatter(LOG_FORMAT)
        logger.addHandler(stdout)
        logger.addHandler(_EarlyRecords())
    else:
        logger.addHandler(logging.NullHandler())


def log_to_file(path: Path):
    """From now on, also log into `path`, starting with what was logged before."""
    early = [h for h in logger.handlers if isinstance(h, _EarlyRecords)]
    if not early:
        return
    with writing(path, 'log'):
        handler = _LogFile(path)
    handler.setFormatter(LOG_FORMAT)
    for record in early[0].records:
        handler.handle(record)
    logger.removeHandler(early[0])
    logger.addHandler(handler)


def format_table(values: dict) -> str:
    width = max(len(k) for k in values)
    return '\n'.join(f'  {k:<{width}}  {v:.4f}' if isinstance(v, float) else f'  {k:<{width}}  {v}'
                     for k, v in values.items())
