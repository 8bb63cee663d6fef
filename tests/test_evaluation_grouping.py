"""Evaluation encodes each video (A2D: each annotated frame's window) once for all its queries. On the fake
datasets it gives what evaluating one query at a time with the plain forward gives: the same metrics, the same
predictions and the same submission masks."""
import io
import json
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

import datasets
import trainer
from config import load_config
from datasets.transforms import collate_videos, collate_whole_videos
from engine.loaders import ShardSampler, make_loader
from models import build_trained_network
from tests.fake_datasets import (
    SMALL_FRAME_SIZES,
    make_a2d_dataset,
    make_ref_youtube_vos_dataset,
)
from tests.helpers import tiny_model_files

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings('ignore::datasets.files.SubsetWarning')]


class Recorder:
    """Passes everything on to an evaluator, keeping a copy of the updates."""

    def __init__(self, evaluator):
        self.evaluator, self.updates = evaluator, []

    def update(self, batch, outputs):
        self.updates.append(outputs)
        self.evaluator.update(batch, outputs)

    def summarize(self):
        return self.evaluator.summarize()


def one_query_at_a_time(model, dataset, evaluator, all_frames=False):
    """The evaluation before the shared encoding: one sample per query, the plain forward pass."""
    collate = collate_whole_videos if all_frames else collate_videos
    with torch.inference_mode():
        for video, targets, queries, *metadata in (dataset[i] for i in range(len(dataset))):
            for q, query in enumerate(queries):
                sample = (video, targets[q], query) + ((metadata[0][q],) if metadata else ())
                batch = collate([sample])
                outputs = model(batch['samples'], batch['valid_indices'], batch['text_queries'])
                evaluator.update(batch, {key: outputs[key] for key in ('pred_masks', 'pred_is_referred')})
    return evaluator.summarize()


def grouped(model, dataset, evaluator, config, batch_size):
    loader = make_loader(dataset, config.num_workers, batch_size, ShardSampler(dataset, 0, 1),
                                 torch.device('cpu'))
    return trainer.evaluate(model, evaluator, loader, torch.device('cpu'), config, 'evaluating')


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    return tiny_model_files(tmp_path_factory.mktemp('grouping'))


def test_a2d_metrics_and_predictions_equal_one_query_at_a_time(tiny, tmp_path):
    checkpoint, overrides = tiny
    fake = make_a2d_dataset(tmp_path / 'a2d')
    config = load_config(None, overrides, dataset_name='a2d_sentences', dataset_path=str(fake.root),
                         cache_dir=str(tmp_path / 'cache'), window_size=3, num_workers=0, device='cpu',
                         running_mode='eval', eval_pictures=0, query_batch=1, **SMALL_FRAME_SIZES)
    model = build_trained_network(config, checkpoint)
    dataset = datasets.build_dataset('test', config)
    assert [len(item) for item in dataset.items] == [2, 1]  # two queries share a window
    ours = Recorder(datasets.build_evaluator(config, dataset, tmp_path / 'grouped', 0))
    theirs = datasets.build_evaluator(config, dataset, tmp_path / 'alone', 0)
    ours_metrics = grouped(model, dataset, ours, config, batch_size=2)
    their_metrics = one_query_at_a_time(model, dataset, theirs)
    assert ours_metrics == their_metrics
    assert len(ours.evaluator.predictions) == len(theirs.predictions) == 3 * config.num_queries
    for mine, reference in zip(ours.evaluator.predictions, theirs.predictions):
        assert mine['image_id'] == reference['image_id'] and mine['segmentation'] == reference['segmentation']
        assert mine['score'] == pytest.approx(reference['score'], rel=1e-5, abs=1e-6)


def test_refer_youtube_vos_submission_equals_one_query_at_a_time(tiny, tmp_path):
    checkpoint, overrides = tiny
    fake = make_ref_youtube_vos_dataset(tmp_path / 'ytvos')
    config = load_config(None, overrides, dataset_name='ref_youtube_vos', dataset_path=str(fake.root),
                         cache_dir=str(tmp_path / 'cache'), num_workers=0, device='cpu', running_mode='eval',
                         query_batch=1, **SMALL_FRAME_SIZES)
    model = build_trained_network(config, checkpoint)
    dataset = datasets.build_dataset('test', config)
    ours = datasets.build_evaluator(config, dataset, tmp_path / 'grouped', 0)
    theirs = datasets.build_evaluator(config, dataset, tmp_path / 'alone', 0)
    # one video a batch: videos of other lengths in one batch are padded in time, and the padded frames take part
    # in the backbone's window attention (as in the original), whichever way the queries are evaluated
    ours_metrics = grouped(model, dataset, ours, config, batch_size=1)
    their_metrics = one_query_at_a_time(model, dataset, theirs, all_frames=True)
    assert ours_metrics['expressions'] == their_metrics['expressions'] == 4
    with zipfile.ZipFile(ours_metrics['submission_zip']) as a, zipfile.ZipFile(their_metrics['submission_zip']) as b:
        assert sorted(a.namelist()) == sorted(b.namelist()) and len(a.namelist()) == 16
        assert all(a.read(name) == b.read(name) for name in a.namelist())
    assert json.dumps(sorted(ours_metrics)) == json.dumps(sorted(their_metrics))


def test_windowed_evaluation_gives_what_inference_gives(tiny, tmp_path):
    """With eval_window_size, a whole video is run in windows and each expression's object query is chosen over the
    whole video: what inference.py does with the same window size, frames and query."""
    from datasets.transforms import transforms_from_config
    from video_inference.segmenter import VideoSegmenter
    from video_inference.sources import FolderFrames
    checkpoint, overrides = tiny
    fake = make_ref_youtube_vos_dataset(tmp_path / 'ytvos')
    config = load_config(None, overrides, dataset_name='ref_youtube_vos', dataset_path=str(fake.root),
                         cache_dir=str(tmp_path / 'cache'), num_workers=0, device='cpu', running_mode='eval',
                         eval_window_size=2, **SMALL_FRAME_SIZES)
    model = build_trained_network(config, checkpoint)
    dataset = datasets.build_dataset('test', config)
    evaluator = datasets.build_evaluator(config, dataset, tmp_path / 'windows', 0)
    metrics = grouped(model, dataset, evaluator, config, batch_size=1)
    segmenter = VideoSegmenter(model, transforms_from_config('test', config), torch.device('cpu'))
    video_id, frame_names, expressions = dataset.samples[0]  # 5 frames: windows [0, 2), [2, 4), [3, 5)
    frames = FolderFrames(fake.root / 'valid' / 'JPEGImages' / video_id, 0.0, None, None, 30.0)
    results = list(segmenter.segment(frames, [query for _, query in expressions], 2, rule='video'))
    assert len(results) == 3
    with zipfile.ZipFile(metrics['submission_zip']) as archive:
        for result in results:
            for offset, (frame, _) in enumerate(result.frames):
                for (exp_id, _), masks in zip(expressions, result.masks):
                    name = f'Annotations/{video_id}/{exp_id}/{frame_names[frame.source_index]}.png'
                    ours = np.array(Image.open(io.BytesIO(archive.read(name))))
                    assert np.array_equal(ours, masks[offset] * 255), name
