"""What several test modules share: the repository's paths, the tiny models and the files they need, main.py as a
user runs it, generated clips, the demo's test server, real faults to inject (a small full disk) and small readers.

Test modules import from here, from `fake_datasets` and from `fake_benchmarks`, never from each other; the fixtures
they share are in conftest.py. Nothing here reads `../shared`: the tiny models' tokenizer is written by the test and
their weights come from a seed, so end-to-end tests run in a plain clone.
"""
import contextlib
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from tokenizers import ByteLevelBPETokenizer
from transformers import RobertaConfig, RobertaTokenizerFast

from config import load_config
from datasets.video_files import write_mp4 as write_video
from engine.run_config import load_run_config
from models import build_network
from tests.fake_datasets import SMALL_FRAME_SIZES
from utils import save_checkpoint

REPO = Path(__file__).resolve().parents[1]
SHARED_DIR = REPO.parent / 'shared'  # golden parity data and real dataset files, beside the checkout in CI
A2D_CONFIG = REPO / 'configs' / 'a2d_sentences.yaml'
JHMDB_CONFIG = REPO / 'configs' / 'jhmdb_sentences.yaml'
YTVOS_CONFIG = REPO / 'configs' / 'refer_youtube_vos.yaml'
MEVIS_CONFIG = REPO / 'configs' / 'mevis.yaml'
DAVIS_CONFIG = REPO / 'configs' / 'ref_davis17.yaml'
SYNTHETIC_CONFIG = REPO / 'configs' / 'synthetic.yaml'

# main.py's training runs: a small Swin, a 1-layer RoBERTa built from a config, 4 object queries, all trained
TINY_TRAINING_MODEL = dict(backbone_pretrained=False, swin_embed_dim=24, swin_depths=[2, 2, 2, 2],
                           swin_num_heads=[1, 1, 1, 1], d_model=64, dim_feedforward=32, nheads=2, num_queries=4,
                           num_encoder_layers=1, num_decoder_layers=2, text_encoder_pretrained=False,
                           freeze_text_encoder=False)
# the checkpoint that inference.py, demo.py and hubconf.py are tested with: 6 object queries, one decoder layer,
# frames resized to 64x96 so that a window is one fast CPU forward pass
TINY_INFERENCE_MODEL = dict(backbone_pretrained=False, swin_embed_dim=24, swin_depths=[2, 2, 2, 2],
                            swin_num_heads=[1, 1, 1, 1], d_model=64, dim_feedforward=32, nheads=2, num_queries=6,
                            num_encoder_layers=1, num_decoder_layers=1, eval_short_size=64, eval_max_size=96)
SMALL_DATA = dict(num_workers=0, **SMALL_FRAME_SIZES)

# The words of the tests' queries and of the fake datasets' expressions, each one token of the tiny tokenizer.
# Other words (the real MeViS and Ref-DAVIS17 expressions of `fake_benchmarks`) are spelt in a few sub-word
# tokens: the longest of them takes 34 of the 62 tokens the tiny RoBERTa holds, so no test meets a truncation.
TOKENIZER_WORDS = '''a an the this that of on in at to from with and or is are its their
    left right middle center centre top bottom front back side behind near next up down forward
    big small tall short long little large one two first second other another each
    red blue green black white grey gray yellow purple orange brown dark light
    man woman person people boy girl child dog cat bird horse car van bike ball box square thing object part
    background query video expression missed copy beach
    moving walking running standing sitting jumping flying holding wearing pulling driving resting falling
    fighting teaching'''.split()


def config_overrides(values: dict) -> list:
    """`KEY=VALUE` items (lists as JSON) of `--set` and of `load_config`'s overrides."""
    return [f'{k}={json.dumps(v) if isinstance(v, list) else v}' for k, v in values.items()]


def write_tiny_text_encoder(directory, max_position_embeddings: int = 64):
    """A RoBERTa directory without weights (a small config and a byte-level BPE tokenizer fitted to
    TOKENIZER_WORDS), as `datasets/synthetic.py` writes one for its data; `text_encoder_type` can name it."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    # each word at the start of a text and after a space: both its forms (without and with the leading space)
    # become single tokens
    sentences = [' '.join(TOKENIZER_WORDS)] + [f'{word} the {word}' for word in TOKENIZER_WORDS]
    bpe.train_from_iterator(sentences, vocab_size=1000, min_frequency=1,
                            special_tokens=['<s>', '<pad>', '</s>', '<unk>', '<mask>'], show_progress=False)
    bpe.save_model(str(directory))
    max_tokens = max_position_embeddings - 2  # RoBERTa numbers positions from padding_idx + 1 = 2
    tokenizer = RobertaTokenizerFast.from_pretrained(directory, model_max_length=max_tokens)
    tokenizer.save_pretrained(directory)
    RobertaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                  intermediate_size=64, max_position_embeddings=max_position_embeddings).save_pretrained(directory)
    return directory


def tiny_model_files(directory):
    """A tiny text encoder's directory, a checkpoint of TINY_INFERENCE_MODEL under the network's own initialisation
    from seed 3, and the KEY=VALUE config overrides that describe that model."""
    directory = Path(directory)
    text_encoder = write_tiny_text_encoder(directory / 'text_encoder')
    overrides = config_overrides(TINY_INFERENCE_MODEL)
    overrides += [f'text_encoder_type={text_encoder}', 'text_encoder_pretrained=false']
    # seed 3: the untrained model's masks overlap the fake datasets' objects, so its evaluations score above zero
    # and comparing two of them compares more than zeros (under seed 0 every A2D-Sentences metric is 0)
    torch.manual_seed(3)
    model = build_network(load_config(YTVOS_CONFIG, overrides, running_mode='eval', device='cpu'))
    checkpoint = directory / 'tiny.pth.tar'
    save_checkpoint({'model_state_dict': model.state_dict()}, checkpoint)
    return checkpoint, overrides


def tiny_model_and_clip(directory, num_frames: int, height: int, width: int, fps: float):
    """`(directory, checkpoint, config overrides, clip.mp4)`: `tiny_model_files` and a clip of `video_frames`."""
    checkpoint, overrides = tiny_model_files(directory)
    return directory, checkpoint, overrides, write_mp4(directory / 'clip.mp4', video_frames(num_frames, height, width),
                                                       fps)


def network_config(text_encoder_type, **overrides):
    """The A2D-Sentences config of a network without pretrained weights on the text encoder `text_encoder_type` (a
    directory), in evaluation mode on the CPU; `overrides` change any other key."""
    sets = [f'text_encoder_type={text_encoder_type}', 'text_encoder_pretrained=false', 'backbone_pretrained=false']
    return load_config(A2D_CONFIG, sets + [f'{k}={v}' for k, v in overrides.items()], running_mode='eval', device='cpu')


def parity_config(shared_dir, **overrides):
    """`network_config` of the original's network: roberta-base's config and tokenizer, from the parity data."""
    return network_config(shared_dir / 'parity' / 'roberta-base', **overrides)


def inference_config(config_path, checkpoint, overrides=()):
    """The config inference.py and demo.py build for a checkpoint, on the CPU."""
    return load_run_config(config_path, overrides, running_mode='eval', checkpoint_path=str(checkpoint),
                           needs_dataset=False, device='cpu')


def max_relative_error(ours, expected):
    ours, expected = ours.cpu(), expected.cpu()
    return ((ours - expected).abs().max() / expected.abs().max()).item()


def to_device(value, device):
    """Tensors in nested dicts, lists and tuples (outputs, targets) moved to `device`."""
    if torch.is_tensor(value):
        return value.to(device)
    if isinstance(value, dict):
        return {key: to_device(item, device) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_device(item, device) for item in value)
    return value


# --- main.py as a user runs it ----------------------------------------------------------------------------------

def set_flags(overrides, **more):
    flags = []
    for item in overrides + [f'{k}={v}' for k, v in more.items()]:
        flags += ['--set', item]
    return flags


def run_main(*args, expect=0, **popen):
    result = subprocess.run([sys.executable, str(REPO / 'main.py'), *map(str, args)], capture_output=True,
                            text=True, cwd=REPO, timeout=600, **popen)
    assert result.returncode == expect, \
        f'exit code {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}'
    return result


def train_args(a2d_setup, run_dir, *extra, **more):
    """main.py's arguments of a training run on the `a2d_setup` fixture's dataset and model."""
    _, overrides = a2d_setup
    return ['-rm', 'train', '-c', A2D_CONFIG, '-ws', 3, '-bs', 2, '--cpu', '--output_dir', run_dir,
            *set_flags(overrides, **more), *extra]


def eval_args(a2d_setup, run_dir, checkpoint, *extra):
    _, overrides = a2d_setup
    return ['-rm', 'eval', '-c', A2D_CONFIG, '-ws', 3, '-bs', 2, '--cpu', '-ckpt', checkpoint,
            '--output_dir', run_dir, *set_flags(overrides), *extra]


def start_and_wait_for(command, path, timeout=300):
    """`command` in a child process (stdout and stderr piped), once the file `path` exists."""
    process = subprocess.Popen(list(map(str, command)), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    deadline = time.time() + timeout
    while not Path(path).exists():
        if process.poll() is not None or time.time() > deadline:
            process.kill()
            raise AssertionError(f'{path} never appeared: {process.communicate()}')
        time.sleep(0.05)
    return process


def start_long_training(args):
    """`main.py args` (a run of many epochs) in a child process, once it has written its first checkpoint."""
    checkpoint = Path(args[args.index('--output_dir') + 1]) / 'checkpoints' / '0.pth.tar'
    return start_and_wait_for([sys.executable, REPO / 'main.py', *args], checkpoint)


def error_line(capsys) -> str:
    """The `error: ...` line the command printed on stderr (notes may come before it), asserting it is the last
    line and that no traceback was printed."""
    captured = capsys.readouterr()
    assert 'Traceback' not in captured.err + captured.out, captured.err
    lines = captured.err.strip().splitlines()
    assert lines and lines[-1].startswith('error: '), captured.err
    return lines[-1]


# --- files --------------------------------------------------------------------------------------------------------

def read_json(path):
    return json.loads(Path(path).read_text())


def write_json(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def load(path):
    return torch.load(path, weights_only=True, map_location='cpu')


def file_digests(root, exclude=()) -> dict:
    """relative path -> sha1 of every file below `root`, except those below a path of `exclude`."""
    root = Path(root)
    return {p.relative_to(root).as_posix(): hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(root.rglob('*'))
            if p.is_file() and not any(p.is_relative_to(e) for e in exclude)}


# --- clips --------------------------------------------------------------------------------------------------------

def video_frames(num_frames, height, width):
    """A red box moving right over a textured background: [T, H, W, 3] uint8."""
    rng = np.random.default_rng(0)
    background = rng.integers(40, 120, size=(height, width, 3), dtype=np.uint8)
    frames = np.repeat(background[None], num_frames, axis=0)
    for t, frame in enumerate(frames):
        left = 5 + 2 * t
        frame[height // 5:height // 5 + height // 3, left:left + width // 4] = (220, 30, 30)
    return frames


def write_mp4(path, frames, fps):
    return write_video(path, frames, rate=fps)


def read_mp4(path):
    """([T, H, W, 3] uint8 frames, frame rate) of a video file."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [frame.to_ndarray(format='rgb24') for frame in container.decode(stream)]
        return np.stack(frames), float(stream.average_rate)


# --- the demo's page (the `tiny_demo` fixture) --------------------------------------------------------------------

DEMO_NUM_FRAMES, DEMO_HEIGHT, DEMO_WIDTH, DEMO_FPS = 24, 100, 150, 25  # the clip of `tiny_demo`
DEMO_QUERIES = ['the red box', 'the background on the right']
DEMO_LIMITS = dict(max_upload_mb=5, max_video_seconds=2.5, max_frames=40, max_queries=3)


class RecordingSegmenter:
    """A VideoSegmenter that records when each request ran and can wait after each window (to keep a request
    running while another one arrives)."""

    def __init__(self, segmenter):
        self.segmenter, self.window_delay, self.intervals = segmenter, 0.0, []

    def segment(self, frames, queries, window_size, *args, progress=None, **kwargs):
        def after_window(done, total):
            time.sleep(self.window_delay)
            progress(done, total)
        began = time.monotonic()
        try:
            yield from self.segmenter.segment(frames, queries, window_size, *args, progress=after_window, **kwargs)
        finally:
            self.intervals.append((began, time.monotonic()))


def start_server(work_dir, checkpoint, overrides, examples=None):
    """The page under DEMO_LIMITS on 127.0.0.1 (a free port from 7860 on); returns (app, its address, the recording
    segmenter)."""
    import demo  # (imports Gradio: only the demo's tests pay for it)
    limits = demo.Limits(**DEMO_LIMITS)
    config = inference_config(YTVOS_CONFIG, checkpoint, overrides)
    segmenter = RecordingSegmenter(demo.VideoSegmenter.from_checkpoint(config, checkpoint))
    app = demo.build_app(segmenter, limits, Path(work_dir), 12, examples)
    url = demo.launch_app(app, limits, port=None)
    return app, url, segmenter


# --- faults -------------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _tmpfs(path, options: str):
    """A tmpfs mounted at `path` (created) with `options`, unmounted afterwards. Needs root (CI runs as root);
    elsewhere the test skips, unless MTTR_REQUIRE_TMPFS=1 (CI sets it) makes that a failure."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(['mount', '-t', 'tmpfs', '-o', options, 'tmpfs', str(path)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        reason = f'cannot mount a tmpfs at {path} (root needed): {mounted.stderr.strip()}'
        if os.environ.get('MTTR_REQUIRE_TMPFS') == '1':
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        yield path
    finally:
        subprocess.run(['umount', '-l', str(path)], check=True)


def small_tmpfs(path, size: str = '64k'):
    """A tmpfs of `size` at `path`: a real disk that fills up."""
    return _tmpfs(path, f'size={size}')


def read_only_folder(path):
    """A read-only tmpfs at `path`: a folder nothing can be written into, by root either (whom a read-only mode
    does not stop)."""
    return _tmpfs(path, 'ro,size=64k')


def fill_disk(path, leave: int = 0):
    """Fill the file system of the folder `path` up to `leave` bytes free, with the file `path/.filler`."""
    filler = Path(path) / '.filler'
    free = os.statvfs(path).f_bavail * os.statvfs(path).f_frsize
    with open(filler, 'wb') as f:
        try:
            f.write(b'\0' * max(0, free - leave))
        except OSError:  # (tmpfs counts in pages: the last page may not fit)
            pass
    return filler
