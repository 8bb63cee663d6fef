"""What a run records of where it came from: the code version (git commit, and whether the tree had uncommitted
changes), the Python, torch, CUDA and transformers versions, the host and the command line. Written into log.txt,
`provenance.json` beside config.yaml, and every checkpoint."""
import platform
import shlex
import socket
import subprocess
import sys
from pathlib import Path
from typing import Optional

import torch

REPO = Path(__file__).resolve().parents[1]


def _git(*args) -> Optional[str]:
    try:
        done = subprocess.run(['git', '-C', str(REPO), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):  # no git, or it hangs on a network file system
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def code_version() -> dict:
    """`{'git_commit', 'git_dirty'}`; None for both outside a git checkout (e.g. an unpacked release)."""
    commit = _git('rev-parse', 'HEAD')
    if commit is None:
        return {'git_commit': None, 'git_dirty': None}
    status = _git('status', '--porcelain', '--untracked-files=no')
    return {'git_commit': commit, 'git_dirty': None if status is None else bool(status)}


def provenance(argv=None) -> dict:
    import transformers  # (imported with the network anyway)
    return {**code_version(),
            'command': shlex.join([Path(sys.executable).name, *(sys.argv if argv is None else argv)]),
            'python': platform.python_version(), 'torch': str(torch.__version__), 'cuda': torch.version.cuda,
            'transformers': str(transformers.__version__), 'host': socket.gethostname()}


def describe(record: dict) -> str:
    """One line for the log."""
    commit = record['git_commit']
    code = 'not a git checkout' if commit is None else \
        f'git {commit[:12]}' + (' with uncommitted changes' if record['git_dirty'] else '')
    return (f'code: {code}; Python {record["python"]}, torch {record["torch"]} (CUDA {record["cuda"] or "none"}), '
            f'transformers {record["transformers"]}; host {record["host"]}; command: {record["command"]}')
