"""Adding a dataset touches datasets/ and configs/ only: a made-up dataset and evaluator, registered from this test
file, train and evaluate through the unchanged trainer. Also: code written against the original repository
(`build_model(args)`, `build_dataset(image_set, **vars(args))` with the original's config namespace) still works.
"""
import argparse
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

import datasets
import trainer
from config import Config, as_config, load_config
from datasets.evaluator import Evaluator
from datasets.transforms import collate_videos
from engine.launch import local_process
from models.postprocessing import mask_logits
from tests.fake_datasets import square_video_item, make_a2d_dataset
from tests.helpers import A2D_CONFIG, REPO, TINY_TRAINING_MODEL, max_relative_error, write_tiny_text_encoder

SIZE = 32


class SquaresDataset(Dataset):
    """Videos of 4 frames, one white square per video (its place depends on the sample), query 'the square';
    the middle frame is annotated."""

    def __init__(self, image_set: str, num_samples: int):
        self.image_set, self.num_samples = image_set, num_samples
        self.collator = collate_videos

    def __len__(self):
        return self.num_samples

    def __getitem__(self, index):
        return square_video_item(index, self.image_set, SIZE)


class SquaresEvaluator(Evaluator):
    """Mean IoU of the top-scored mask; best checkpoint on the highest mean IoU."""
    best_metric = 'mean_iou'
    higher_is_better = True
    checkpoint_key = 'best_mean_iou'

    def __init__(self, out_dir: Path):
        self.out_dir, self.ious = out_dir, []

    def update(self, batch, outputs):
        frame = batch['valid_indices'][0].item()
        for q, target in enumerate(batch['targets'][frame]):
            referred = outputs['pred_is_referred'][0, q].softmax(-1)[:, 0]
            logits = mask_logits(outputs)[0, q, referred.argmax()][None, None]
            predicted = torch.nn.functional.interpolate(logits, (SIZE, SIZE), mode='bilinear')[0, 0] > 0
            truth = target['masks'][0]
            self.ious.append(((predicted & truth).sum() / (predicted | truth).sum().clamp(min=1)).item())

    def summarize(self):
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / 'ious.json').write_text(json.dumps(self.ious))
        return {'mean_iou': float(np.mean(self.ious)), 'samples': len(self.ious)}


@pytest.fixture
def squares_registered(monkeypatch):
    monkeypatch.setattr(datasets, '_DATASETS', dict(datasets._DATASETS))  # forgotten after the test
    datasets.register_dataset(
        'squares', lambda image_set, config, transforms: SquaresDataset(image_set, 6 if image_set == 'train' else 4),
        lambda config, dataset, run_dir, epoch: SquaresEvaluator(run_dir / 'squares' / f'epoch_{epoch}'))


@pytest.mark.slow
def test_a_dataset_registered_from_outside_trains_and_evaluates_through_the_trainer(squares_registered, tmp_path):
    text_encoder = write_tiny_text_encoder(tmp_path / 'text_encoder')
    run_dir = tmp_path / 'run'
    config = Config(**dict(TINY_TRAINING_MODEL, dataset_name='squares', text_encoder_type=str(text_encoder), epochs=1,
                           lr_drop=[5], batch_size=2, eval_batch_size=3, window_size=4, num_workers=0, device='cpu',
                           output_dir=str(run_dir), eval_pictures=0))
    assert trainer.run(local_process(), config) == 'done'
    metrics = json.loads((run_dir / 'metrics_epoch_0.json').read_text())
    assert metrics['samples'] == 4 and 0 <= metrics['mean_iou'] <= 1
    assert len(json.loads((run_dir / 'squares' / 'epoch_0' / 'ious.json').read_text())) == 4
    best = torch.load(run_dir / 'checkpoints' / 'best.pth.tar', weights_only=True)
    assert best['best_mean_iou'] == pytest.approx(metrics['mean_iou'])
    assert 'best mean_iou' in (run_dir / 'log.txt').read_text()

    # resuming keeps the best score under the evaluator's own key
    config.epochs = 2
    assert trainer.run(local_process(), config, resume=str(run_dir / 'checkpoints' / 'last.pth.tar')) == 'done'
    second = json.loads((run_dir / 'metrics_epoch_1.json').read_text())['mean_iou']
    last = torch.load(run_dir / 'checkpoints' / 'last.pth.tar', weights_only=True)
    assert last['best_mean_iou'] == pytest.approx(max(metrics['mean_iou'], second))

    config.running_mode, config.checkpoint_path = 'eval', str(run_dir / 'checkpoints' / '0.pth.tar')
    config.output_dir = str(tmp_path / 'eval')
    assert trainer.run(local_process(), config) == 'done'
    assert json.loads((tmp_path / 'eval' / 'metrics_epoch_0.json').read_text())['mean_iou'] == \
        pytest.approx(metrics['mean_iou'], abs=1e-6)


def test_an_unregistered_dataset_name_is_refused_with_the_known_ones():
    with pytest.raises(ValueError, match=r"dataset_name: 'squares' is not one of 'a2d_sentences', 'jhmdb_sentences'"):
        datasets.build_dataset('test', Config(dataset_name='squares'))


def test_the_trainer_names_no_dataset():
    names = re.compile(r"""['"](a2d_sentences|jhmdb_sentences|ref_youtube_vos|mevis|ref_davis17)['"]""")
    assert not names.search((REPO / 'trainer.py').read_text())


# --------------------------------------------------------------------------------------------------------------
# the original's config namespace

def original_yaml_values(path):
    """The `{key: value}` of one of the original repository's YAML files: the keys it had (ours has more) with
    our values (or the defaults, for the ones our file leaves out), read the way the original's main.py reads
    them."""
    from ruamel.yaml import YAML
    original_keys = ['lr', 'lr_backbone', 'text_encoder_lr', 'weight_decay', 'epochs', 'clip_max_norm', 'enable_amp',
                     'seed', 'backbone_name', 'backbone_pretrained', 'backbone_pretrained_path', 'train_backbone',
                     'num_encoder_layers', 'num_decoder_layers', 'dim_feedforward', 'd_model', 'dropout', 'nheads',
                     'num_queries', 'mask_kernels_dim', 'freeze_text_encoder', 'text_encoder_type', 'aux_loss',
                     'set_cost_is_referred', 'set_cost_dice', 'is_referred_loss_coef', 'sigmoid_focal_loss_coef',
                     'dice_loss_coef', 'eos_coef', 'dataset_name', 'resize_and_crop_augmentations',
                     'horizontal_flip_augmentations', 'train_short_size', 'train_max_size', 'eval_short_size',
                     'eval_max_size', 'output_dir', 'num_workers', 'dataset_coco_gt_format_path',
                     'calculate_precision_and_iou_metrics', 'wandb_mode']
    ours = {**Config().to_dict(), **{k: v['value'] for k, v in YAML(typ='safe').load(Path(path).read_text()).items()}}
    ours['resize_and_crop_augmentations'] = ours.pop('resize_frames')
    return {k: ours[k] for k in original_keys}


def test_as_config_reads_the_original_namespace():
    values = original_yaml_values(A2D_CONFIG)
    values['resize_and_crop_augmentations'] = False
    # what the original's main.py adds: its command-line arguments (-ws not given: None) and device lists
    args = argparse.Namespace(**values, config_path='configs/a2d_sentences.yaml', running_mode='eval',
                              window_size=None, batch_size=3, eval_batch_size=3, checkpoint_path=None, num_gpus=2,
                              num_devices=2, device_ids=[0, 1])
    config = as_config(args)
    assert config.resize_frames is False and config.batch_size == 3 and config.window_size == 8  # the default
    assert config.dataset_path == './a2d_sentences' and config.swin_embed_dim == 96  # keys the original lacked
    with pytest.raises(KeyError, match='learning_rate'):
        as_config({'learning_rate': 0.1})


@pytest.mark.slow
def test_build_model_on_the_original_namespace_passes_the_golden_case(golden, shared_dir, deterministic_state_dict,
                                                                       tmp_path):
    """Only the original's YAML keys; backbone_pretrained off and the text encoder a local directory holding the
    roberta-base architecture with (random) weights, as the golden data was made."""
    from transformers import AutoTokenizer, RobertaConfig, RobertaModel

    from models import build_model
    from utils import NestedTensor
    roberta = tmp_path / 'roberta-base'
    RobertaModel(RobertaConfig.from_json_file(shared_dir / 'parity' / 'roberta-base-config.json'),
                 add_pooling_layer=False).save_pretrained(roberta)
    AutoTokenizer.from_pretrained(shared_dir / 'parity' / 'tokenizer').save_pretrained(roberta)
    values = original_yaml_values(A2D_CONFIG)
    values.update(backbone_pretrained=False, text_encoder_type=str(roberta))
    model, criterion, postprocessor = build_model(argparse.Namespace(**values))
    model.load_state_dict(deterministic_state_dict(model.state_dict()), strict=True)
    for name in ('single', 'padded'):
        inputs, expected = golden['cases'][name]['inputs'], golden['cases'][name]['outputs']
        with torch.inference_mode():
            outputs = model.eval()(NestedTensor(inputs['samples'], inputs['mask']), inputs['valid_indices'],
                                   inputs['text_queries'])
        for key in ('pred_masks', 'pred_is_referred'):  # the tolerance of tests/test_models.py
            assert max_relative_error(outputs[key], expected[key]) <= 1e-4, (name, key)
    assert type(postprocessor).__name__ == 'A2DSentencesPostProcess'
    assert set(criterion.weight_dict) == set(golden['criterion']['a2d']['weight_dict'])


def test_build_dataset_on_the_original_namespace(tmp_path, monkeypatch):
    """The original reads ./a2d_sentences from the working directory: with only its keys, so do we."""
    make_a2d_dataset(tmp_path / 'a2d_sentences')
    monkeypatch.chdir(tmp_path)
    values = original_yaml_values(A2D_CONFIG)
    values.update(train_short_size=64, train_max_size=96, eval_short_size=64, eval_max_size=96)
    dataset = datasets.build_dataset('train', **values, window_size=3, cache_dir=str(tmp_path / 'cache'))
    video, targets, query = dataset[0]
    assert video.shape[:2] == (3, 3) and isinstance(query, str) and targets[1] is not None
    with pytest.raises(ValueError, match='evaluation only'):
        datasets.build_dataset('train', **dict(values, dataset_name='jhmdb_sentences'))


@pytest.mark.parametrize('key, value, message', [
    ('batch_size', 0, 'batch_size: must be at least 1'), ('window_size', 0, 'window_size: must be at least 1'),
    ('eval_batch_size', 0, 'eval_batch_size: must be at least 1'),
    ('nheads', 3, r'd_model \(256\) must be divisible by nheads \(3\)'),
    ('backbone_name', 'swin-b', "backbone_name: 'swin-b' is not one of 'swin-t'"),
    ('swin_window_size', [8, 7], 'swin_window_size: expected 3 positive sizes')])
def test_values_that_cannot_work_are_refused_at_config_load(key, value, message):
    with pytest.raises(ValueError, match=message):
        load_config(A2D_CONFIG, **{key: value})


def test_the_original_key_name_still_reads(tmp_path):
    path = tmp_path / 'old.yaml'
    path.write_text('resize_and_crop_augmentations:\n  desc: old name\n  value: false\n')
    assert load_config(path).resize_frames is False
    assert load_config(None, ['resize_and_crop_augmentations=false']).resize_frames is False
