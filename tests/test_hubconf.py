"""hubconf.py through torch.hub, with small MTTRs under seeded random weights saved as local checkpoints.

Nothing is downloaded: the URL path is checked with torch.hub's download function replaced."""
import pytest
import torch

import hubconf
from models.postprocessing import A2DSentencesPostProcess, ReferYoutubeVOSPostProcess
from tests.helpers import REPO, tiny_model_files
from utils import NestedTensor

ENTRY_POINTS = ['mttr_refer_youtube_vos', 'mttr_a2d_sentences_window10', 'mttr_a2d_sentences_window8']


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    """(checkpoint, hub keyword arguments) of a tiny MTTR; the text encoder's directory is among the overrides."""
    checkpoint, overrides = tiny_model_files(tmp_path_factory.mktemp('hub'))
    (text_encoder,) = [o.split('=', 1)[1] for o in overrides if o.startswith('text_encoder_type=')]
    sizes = [o for o in overrides if not o.startswith('text_encoder_')]
    return checkpoint, dict(text_encoder_type=text_encoder, config_overrides=sizes)


@pytest.fixture
def no_download(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f'a download was attempted: {args} {kwargs}')
    monkeypatch.setattr(torch.hub, 'load_state_dict_from_url', refuse)


def test_the_public_callables_are_the_three_entry_points():
    """torch.hub.list(github) lists every public callable of hubconf.py (only GitHub repos can be listed)."""
    public = [name for name in dir(hubconf) if callable(getattr(hubconf, name)) and not name.startswith('_')]
    assert sorted(public) == sorted(ENTRY_POINTS)


def test_refer_youtube_vos_from_a_local_checkpoint(tiny, no_download):
    checkpoint, kwargs = tiny
    model, postprocessor = torch.hub.load(str(REPO), 'mttr_refer_youtube_vos', source='local',
                                          checkpoint=checkpoint, **kwargs)
    assert isinstance(postprocessor, ReferYoutubeVOSPostProcess)
    assert not model.training
    saved = torch.load(checkpoint, weights_only=True)['model_state_dict']
    assert all(torch.equal(value, saved[key]) for key, value in model.state_dict().items())
    samples = NestedTensor(torch.randn(3, 1, 3, 64, 96), torch.zeros(3, 1, 64, 96, dtype=torch.bool))
    with torch.inference_mode():
        outputs = model(samples, torch.arange(3), ['the red box'])
    metadata = {'resized_frame_size': (64, 96), 'original_frame_size': (100, 150)}
    (prediction,) = postprocessor(outputs, [metadata], (64, 96))
    assert prediction['pred_masks'].shape == (3, 1, 100, 150)


def test_the_hub_model_segments_one_video_for_several_queries_in_one_call(tiny, no_download):
    checkpoint, kwargs = tiny
    model, postprocessor = torch.hub.load(str(REPO), 'mttr_refer_youtube_vos', source='local',
                                          checkpoint=checkpoint, **kwargs)
    samples = NestedTensor(torch.randn(3, 1, 3, 64, 96), torch.zeros(3, 1, 64, 96, dtype=torch.bool))
    queries = ['the red box', 'the background', 'a box on the left']
    outputs = model.segment(samples, torch.arange(3), queries)  # the video encoded once
    metadata = {'resized_frame_size': (64, 96), 'original_frame_size': (100, 150)}
    predictions = postprocessor(outputs, [metadata] * len(queries), (64, 96))
    assert [p['pred_masks'].shape for p in predictions] == [(3, 1, 100, 150)] * 3
    for index, query in enumerate(queries):
        with torch.inference_mode():
            alone = model(samples, torch.arange(3), [query])
        for key in ('pred_masks', 'pred_is_referred'):
            error = (outputs[key][:, index] - alone[key][:, 0]).abs().max() / alone[key].abs().max()
            assert error <= 1e-5, (query, key)


@pytest.mark.parametrize('entry_point', ['mttr_a2d_sentences_window10', 'mttr_a2d_sentences_window8'])
def test_a2d_sentences_entry_points(tiny, no_download, entry_point):
    checkpoint, kwargs = tiny
    model, postprocessor = getattr(hubconf, entry_point)(checkpoint=str(checkpoint), **kwargs)
    assert isinstance(postprocessor, A2DSentencesPostProcess)
    assert not model.training


def test_nothing_is_downloaded_unless_asked(no_download):
    for entry_point, name in zip(ENTRY_POINTS, ['refer_youtube_vos_window12', 'a2d_sentences_window10',
                                                'a2d_sentences_window8']):
        with pytest.raises(ValueError, match='download=True') as error:
            getattr(hubconf, entry_point)(text_encoder_type='unused')
        assert hubconf.OFFICIAL_CHECKPOINT_URLS[name] in str(error.value)


def test_download_goes_through_the_hub_cache_with_weights_only(tiny, monkeypatch):
    checkpoint, kwargs = tiny
    calls = []

    def fake_download(url, **options):
        calls.append((url, options))
        return torch.load(checkpoint, weights_only=True)
    monkeypatch.setattr(torch.hub, 'load_state_dict_from_url', fake_download)
    hubconf.mttr_refer_youtube_vos(download=True, **kwargs)
    hubconf.mttr_refer_youtube_vos(checkpoint='https://example.org/uc?id=mine', **kwargs)
    (official_url, official), (own_url, own) = calls
    assert official_url == hubconf.OFFICIAL_CHECKPOINT_URLS['refer_youtube_vos_window12']
    assert official['file_name'] == 'mttr_refer_youtube_vos_window12.pth.tar'
    assert own_url == 'https://example.org/uc?id=mine'
    assert own['file_name'].startswith('mttr_refer_youtube_vos_window12_') and own['file_name'] != official['file_name']
    assert official['weights_only'] is True and own['weights_only'] is True


def test_failed_download_says_what_to_do(tiny, monkeypatch):
    def offline(url, **options):
        raise OSError('network unreachable')
    monkeypatch.setattr(torch.hub, 'load_state_dict_from_url', offline)
    with pytest.raises(RuntimeError, match='network unreachable.*pass checkpoint=PATH'):
        hubconf.mttr_refer_youtube_vos(download=True, **tiny[1])


def test_checkpoint_of_another_architecture_lists_the_keys(tiny, tmp_path):
    checkpoint, kwargs = tiny
    state_dict = dict(torch.load(checkpoint, weights_only=True)['model_state_dict'])
    state_dict.pop('is_referred_head.weight')
    torch.save(state_dict, tmp_path / 'other.pth')
    with pytest.raises(KeyError, match=r'missing keys: is_referred_head\.weight; unexpected keys: none'):
        hubconf.mttr_refer_youtube_vos(checkpoint=tmp_path / 'other.pth', **kwargs)
