"""Training steps under the trainer's autocast (`enable_amp`): fp16 with gradient scaling (a CUDA rule of this
project) and bf16 (CUDA and the CPU), each with and without the backbone's activation checkpointing. A few
iterations of `trainer.train_one_epoch`, as the trainer runs them (autocast, GradScaler, clipping, AdamW): the losses
and the gradient scale stay finite, the optimizer steps are taken and every trainable weight moves.

On the CPU (CI) the bf16 cases run and the fp16 ones skip with the rule as the reason; `--device cuda` runs them all
on the GPU (tools/gpu_selfcheck.py), at the paper's frame size there.
"""
import math

import pytest
import torch

import trainer
from engine.stopping import StopRequest
from models import build_model
from config import load_config
from tests.helpers import A2D_CONFIG, TINY_TRAINING_MODEL, config_overrides, write_tiny_text_encoder
from utils import NestedTensor, autocast_dtype

STEPS = 2
CPU_CLIP, CUDA_CLIP = (4, 64, 64), (8, 320, 427)  # frames, height, width


@pytest.fixture(scope='module')
def text_encoder(tmp_path_factory):
    return write_tiny_text_encoder(tmp_path_factory.mktemp('amp') / 'text_encoder')


def one_video_batch(frames: int, height: int, width: int) -> dict:
    """An A2D-style batch: one video whose middle frame is annotated with two objects, the first one referred."""
    samples = NestedTensor(torch.randn(frames, 1, 3, height, width, generator=torch.Generator().manual_seed(1)),
                           torch.zeros(frames, 1, height, width, dtype=torch.bool))
    masks = torch.zeros(2, height, width, dtype=torch.bool)
    masks[0, height // 4:height // 2, width // 4:width // 2] = masks[1, height // 2:, width // 2:] = True
    targets = [[None] for _ in range(frames)]
    targets[frames // 2] = [{'masks': masks, 'referred_instance_idx': torch.tensor(0)}]
    return {'samples': samples, 'targets': targets, 'valid_indices': torch.tensor([frames // 2]),
            'text_queries': ['a man in black pulling up']}


@pytest.mark.parametrize('checkpointing', [False, True], ids=['plain', 'checkpointing'])
@pytest.mark.parametrize('amp_dtype', ['float16', 'bfloat16'])
def test_training_steps_under_autocast_take_finite_steps_that_move_every_weight(text_encoder, device, amp_dtype,
                                                                                checkpointing, record_property):
    values = dict(TINY_TRAINING_MODEL, text_encoder_type=str(text_encoder), enable_amp=True, amp_dtype=amp_dtype,
                  backbone_activation_checkpointing=checkpointing)
    config = load_config(A2D_CONFIG, config_overrides(values), running_mode='train', device=str(device))
    dtype = autocast_dtype(config, device, training=True)
    if dtype is None:
        pytest.skip(f'no {amp_dtype} autocast on {device.type}: fp16 is a CUDA rule of this project '
                    '(utils.autocast_dtype)')
    if dtype == torch.bfloat16 and device.type == 'cuda' and not torch.cuda.is_bf16_supported():
        pytest.skip(f'{torch.cuda.get_device_name(device)} has no bf16 support')
    torch.manual_seed(0)
    model, criterion, _ = build_model(config)
    optimizer = trainer.build_optimizer(model.to(device), config)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    batch = one_video_batch(*(CUDA_CLIP if device.type == 'cuda' else CPU_CLIP))
    losses, scales, taken = [], [], 0
    for iteration in range(STEPS):
        scale_before = scaler.get_scale() if scaler.is_enabled() else 1.0
        progress = trainer.train_one_epoch(model, criterion, [batch], optimizer, scaler, device, iteration, config,
                                           StopRequest())
        losses.append(progress['loss_sums']['loss'])
        scales.append(scaler.get_scale() if scaler.is_enabled() else 1.0)
        taken += scales[-1] >= scale_before  # GradScaler halves the scale when it skips a step (inf/NaN gradients)
    record_property('losses', ' '.join(f'{loss:.4f}' for loss in losses))
    assert all(math.isfinite(loss) for loss in losses), losses
    assert all(math.isfinite(s) and s > 0 for s in scales), scales
    assert taken > 0, f'GradScaler skipped all {STEPS} steps (scales {scales})'
    unchanged = [n for n, p in model.named_parameters() if p.requires_grad and torch.equal(p.detach(), before[n])]
    assert not unchanged, f'{len(unchanged)} of {len(before)} trainable tensors unchanged, e.g. {unchanged[:5]}'
