"""trainer.py's optimisation schedule against the original's: the Refer-YouTube-VOS learning rates."""
import warnings

import pytest
import torch
from torch import nn

import trainer
from config import load_config
from tests.helpers import YTVOS_CONFIG


class ThreeGroups(nn.Module):
    """Parameters named like the network's three optimizer groups."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Linear(2, 2)
        self.text_encoder = nn.Linear(2, 2)
        self.head = nn.Linear(2, 2)


def learning_rates(scheduler_step, config, epochs=30):
    """Per epoch, the learning rate of every parameter group while that epoch trains."""
    optimizer = trainer.build_optimizer(ThreeGroups(), config)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[20], gamma=0.4) \
        if scheduler_step == 'original' else trainer.build_scheduler(optimizer, config)
    rates = []
    for epoch in range(epochs):
        rates.append([group['lr'] for group in optimizer.param_groups])
        optimizer.step()
        if scheduler_step == 'original':
            # the original trainer's call for Refer-YouTube-VOS: the epoch's summed loss as the epoch number
            epoch_loss = 2000.0 / (epoch + 1)
            with warnings.catch_warnings():
                warnings.simplefilter('ignore')  # (PyTorch deprecates the epoch argument)
                scheduler.step(epoch_loss)
        else:
            scheduler.step()
    return rates


def test_refer_youtube_vos_schedule_is_the_one_the_released_checkpoint_was_trained_with():
    config = load_config(YTVOS_CONFIG, freeze_text_encoder=False)
    ours, original = learning_rates('ours', config), learning_rates('original', config)
    assert len(ours) == len(original) == 30
    assert all(mine == pytest.approx(theirs, rel=1e-12) for mine, theirs in zip(ours, original))
    base = [1e-4, 1e-5, 5e-5]  # everything else, backbone, text encoder
    assert original[0] == pytest.approx(base)
    assert all(rates == pytest.approx([0.4 * b for b in base]) for rates in original[1:])  # 0.4x from epoch 1 on


def test_the_schedule_as_written_in_the_original_config_is_one_flag_away():
    config = load_config(YTVOS_CONFIG, ['lr_drop=[20]'], freeze_text_encoder=False)
    rates = learning_rates('ours', config)
    assert rates[19] == pytest.approx([1e-4, 1e-5, 5e-5]) and rates[20] == pytest.approx([4e-5, 4e-6, 2e-5])
