"""torch.hub entry points for the three released MTTR checkpoints.

    model, postprocessor = torch.hub.load('path/to/this/repo', 'mttr_refer_youtube_vos', source='local',
                                          checkpoint='refer-youtube-vos_window-12.pth.tar')

Each entry point builds the network of the paper in eval mode, loads the weights (with weights_only=True) and
returns `(model, postprocessor)`, as the original's hubconf does. Besides `model(samples, valid_indices, queries)`
(one query per video), `model.segment(samples, valid_indices, queries)` segments one video for any number of
queries in one call, encoding it once; the Refer-YouTube-VOS post-processor then takes one metadata dict per
query. `checkpoint` is a local file, or a URL that is
fetched into torch.hub's cache; without `checkpoint`, `download=True` fetches the official file (the URLs in
OFFICIAL_CHECKPOINT_URLS) and `download=False`, the default, raises an error that gives the URL. The text
encoder's weights come from the checkpoint, so only roberta-base's config and tokenizer are needed: pass
`text_encoder_type` a local directory holding them to work offline.
"""
import hashlib
import pathlib
import typing

import torch

dependencies = ['torch', 'transformers', 'timm', 'einops', 'scipy', 'pycocotools', 'numpy', 'ruamel.yaml']

REPO_DIR = pathlib.Path(__file__).resolve().parent
# Only the entry points are public callables: torch.hub.list lists every public callable of this module.
_CheckpointSource = typing.Optional[typing.Union[str, pathlib.Path]]  # a local file or a URL
# The files linked from the original MTTR README (Google Drive file ids).
OFFICIAL_CHECKPOINT_URLS = {
    'refer_youtube_vos_window12':
        'https://drive.google.com/uc?export=download&confirm=t&id=1R_F0ETKipENiJUnVwarHnkPmUIcKXRaL',
    'a2d_sentences_window10':
        'https://drive.google.com/uc?export=download&confirm=t&id=1evEmZyv82vHHpY-chvoVDjUWWW1disun',
    'a2d_sentences_window8':
        'https://drive.google.com/uc?export=download&confirm=t&id=1lKKeUwm-GZEAW5c3uOrl7e9bbLSPq28S',
}


def _is_url(text: str) -> bool:
    return text.startswith(('http://', 'https://'))


def _read_weights(name: str, checkpoint: _CheckpointSource, download: bool):
    """The checkpoint dict from a local file, a URL or (download=True) the official URL."""
    if checkpoint is None:
        if not download:
            raise ValueError(f'mttr_{name}: pass checkpoint=PATH (a downloaded checkpoint file) or checkpoint=URL, '
                             f'or download=True to fetch the official one from {OFFICIAL_CHECKPOINT_URLS[name]}')
        checkpoint = OFFICIAL_CHECKPOINT_URLS[name]
    checkpoint = str(checkpoint)
    if not _is_url(checkpoint):
        return checkpoint  # models.load_model_weights reads it with a clear error
    # Drive URLs all end in 'uc', so the cached file is named after the entry point (and the URL when it is not
    # the official one) rather than after the URL's last component.
    file_name = f'mttr_{name}.pth.tar' if checkpoint == OFFICIAL_CHECKPOINT_URLS[name] else \
        f'mttr_{name}_{hashlib.sha256(checkpoint.encode()).hexdigest()[:12]}.pth.tar'
    try:
        return torch.hub.load_state_dict_from_url(checkpoint, map_location='cpu', weights_only=True,
                                                  file_name=file_name)
    except Exception as error:
        raise RuntimeError(f'could not fetch the MTTR checkpoint from {checkpoint} ({type(error).__name__}: '
                           f'{error}). Download it by hand (links in the README) and pass checkpoint=PATH') from error


def _build(name: str, config_file: str, window_size: int, checkpoint: _CheckpointSource, download: bool,
           text_encoder_type: str, device, config_overrides: typing.Sequence[str]):
    from engine.run_config import load_run_config
    from models import build_trained_network, postprocessing

    config = load_run_config(REPO_DIR / 'configs' / config_file,
                             [f'text_encoder_type={text_encoder_type}', *config_overrides], running_mode='eval',
                             needs_dataset=False, window_size=window_size, device=str(device))
    weights = _read_weights(name, checkpoint, download)
    return build_trained_network(config, weights), postprocessing.build(config)


def mttr_refer_youtube_vos(checkpoint: _CheckpointSource = None, download: bool = False,
                           text_encoder_type: str = 'roberta-base', device='cpu',
                           config_overrides: typing.Sequence[str] = ()):
    """MTTR trained on Refer-YouTube-VOS with windows of 12 frames (J&F 55.32 on the validation set).

    Returns (model, ReferYoutubeVOSPostProcess). checkpoint: a local file or a URL; download=True without a
    checkpoint fetches the official file. config_overrides: extra 'KEY=VALUE' config entries.
    """
    return _build('refer_youtube_vos_window12', 'refer_youtube_vos.yaml', 12, checkpoint, download,
                  text_encoder_type, device, config_overrides)


def mttr_a2d_sentences_window10(checkpoint: _CheckpointSource = None, download: bool = False,
                                text_encoder_type: str = 'roberta-base', device='cpu',
                                config_overrides: typing.Sequence[str] = ()):
    """MTTR trained on A2D-Sentences with windows of 10 frames (mAP 46.1; 39.2 on JHMDB-Sentences).

    Returns (model, A2DSentencesPostProcess). Arguments as in mttr_refer_youtube_vos.
    """
    return _build('a2d_sentences_window10', 'a2d_sentences.yaml', 10, checkpoint, download, text_encoder_type,
                  device, config_overrides)


def mttr_a2d_sentences_window8(checkpoint: _CheckpointSource = None, download: bool = False,
                               text_encoder_type: str = 'roberta-base', device='cpu',
                               config_overrides: typing.Sequence[str] = ()):
    """MTTR trained on A2D-Sentences with windows of 8 frames (mAP 44.7; 36.6 on JHMDB-Sentences).

    Returns (model, A2DSentencesPostProcess). Arguments as in mttr_refer_youtube_vos.
    """
    return _build('a2d_sentences_window8', 'a2d_sentences.yaml', 8, checkpoint, download, text_encoder_type,
                  device, config_overrides)
