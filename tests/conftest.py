"""Shared fixtures. `../shared` (golden parity data, real dataset files) sits beside the checkout in CI;
tests that need it are skipped with a reason in a clone without it."""
from pathlib import Path

import pytest
import torch

SHARED_DIR = Path(__file__).resolve().parents[2] / 'shared'


@pytest.fixture(scope='session')
def shared_dir():
    if not SHARED_DIR.is_dir():
        pytest.skip(f'{SHARED_DIR} is absent (the golden parity data and real dataset files live there)')
    return SHARED_DIR


@pytest.fixture(scope='session')
def golden(shared_dir):
    return torch.load(shared_dir / 'parity' / 'golden.pt', weights_only=True)
