"""Shared fixtures. `../shared` (golden parity data, real dataset files) sits beside the checkout in CI;
tests that need it are skipped with a reason in a clone without it.

`--device cuda` (or cuda:N) runs the tests that take the `device` fixture on that GPU (tools/gpu_selfcheck.py
does): the golden parity, post-processing, criterion, matcher and window-attention tests. Their fp32 tolerances
are the CPU's, so TF32 is off for matrix products and cuDNN convolutions. Without CUDA, `--device cuda` stops
pytest with a usage error instead of skipping: a run asked to test the GPU must not pass without having done so.

The fixtures of several test modules are here too: the original's network under the golden outputs' weights
(`model`, `deterministic_state_dict`: test_models.py, test_shared_encoding.py, test_extending.py), main.py's fake
dataset and tiny model (`a2d_setup`: test_main.py, test_reliability.py) and the demo's checkpoint and clip
(`tiny_demo`: test_demo.py, test_demo_browser.py); only `model` and `deterministic_state_dict` need `../shared`.
"""
import sys

import pytest
import torch

from models import build_network
from tests.fake_datasets import make_a2d_dataset
from tests.helpers import (DEMO_FPS, DEMO_HEIGHT, DEMO_NUM_FRAMES, DEMO_WIDTH, SHARED_DIR, SMALL_DATA,
                           TINY_TRAINING_MODEL, config_overrides, parity_config, tiny_model_files, video_frames,
                           write_mp4, write_tiny_text_encoder)


def pytest_addoption(parser):
    parser.addoption('--device', default='cpu',
                     help='device of the tests that take the `device` fixture: cpu (default), cuda or cuda:N')


def pytest_configure(config):
    name = config.getoption('--device')
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ('cpu', 'cuda'):
        raise pytest.UsageError(f'--device {name}: expected cpu, cuda or cuda:N')
    if device.type == 'cuda':
        if not torch.cuda.is_available():
            raise pytest.UsageError(f'--device {name}: no CUDA device (torch.cuda.is_available() is False)')
        if (device.index or 0) >= torch.cuda.device_count():
            raise pytest.UsageError(f'--device {name}: only {torch.cuda.device_count()} CUDA device(s)')
        torch.cuda.set_device(device)
        if hasattr(torch.backends.cuda.matmul, 'fp32_precision'):  # torch >= 2.9; mixing it with allow_tf32 raises
            torch.backends.cuda.matmul.fp32_precision = torch.backends.cudnn.conv.fp32_precision = 'ieee'
        else:
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False


@pytest.fixture(scope='session')
def device(pytestconfig):
    return torch.device(pytestconfig.getoption('--device'))


@pytest.fixture(scope='session')
def shared_dir():
    if not SHARED_DIR.is_dir():
        pytest.skip(f'{SHARED_DIR} is absent (the golden parity data and real dataset files live there)')
    return SHARED_DIR


@pytest.fixture(scope='session')
def golden(shared_dir):
    return torch.load(shared_dir / 'parity' / 'golden.pt', weights_only=True)


@pytest.fixture(scope='module')
def deterministic_state_dict(shared_dir):
    """The parity data's weights function: the weights the golden outputs were computed with."""
    sys.path.insert(0, str(shared_dir / 'parity'))
    try:
        from weights import deterministic_state_dict
    finally:
        sys.path.pop(0)
    return deterministic_state_dict


@pytest.fixture(scope='module')
def model(shared_dir, deterministic_state_dict, device):
    """The original's network (roberta-base's config) under the golden outputs' weights, on `device`."""
    torch.manual_seed(0)
    model = build_network(parity_config(shared_dir))
    model.load_state_dict(deterministic_state_dict(model.state_dict()), strict=True)
    return model.to(device).eval()


@pytest.fixture(scope='module')
def a2d_setup(tmp_path_factory):
    """The fake A2D-Sentences dataset, a tiny text encoder and the `--set` flags that point the A2D config at them
    and at TINY_TRAINING_MODEL: (root, flags), as `helpers.train_args` and `helpers.eval_args` take it."""
    root = tmp_path_factory.mktemp('a2d_runs')
    dataset = make_a2d_dataset(root / 'a2d_sentences')
    text_encoder = write_tiny_text_encoder(root / 'text_encoder')
    # seed 2: the tiny model's masks overlap the objects after each of two epochs (under the config's 42 they miss
    # them all), so that comparing two runs' metrics compares more than zeros
    values = dict(TINY_TRAINING_MODEL, **SMALL_DATA, dataset_path=str(dataset.root), cache_dir=str(root / 'cache'),
                  text_encoder_type=str(text_encoder), epochs=2, seed=2)
    return root, config_overrides(values)


@pytest.fixture(scope='module')
def tiny_demo(tmp_path_factory):
    """The demo tests' (root, checkpoint, config overrides, a clip of DEMO_NUM_FRAMES frames)."""
    root = tmp_path_factory.mktemp('demo')
    checkpoint, overrides = tiny_model_files(root)
    video = write_mp4(root / 'clip.mp4', video_frames(DEMO_NUM_FRAMES, DEMO_HEIGHT, DEMO_WIDTH), fps=DEMO_FPS)
    return root, checkpoint, overrides, video
