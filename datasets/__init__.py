"""The datasets and their evaluators, by name.

A dataset is three things: a loader (a torch Dataset with a `collator` for its DataLoader, see
`transforms.collate_videos` for the batch it makes), an evaluator (`evaluator.Evaluator`: metrics, predictions,
submission files) and a config in configs/. They are registered below under the config's `dataset_name`; the
trainer and the command-line programs reach them only through `build_dataset` and `build_evaluator`.

To add a dataset: write its module in this folder with a `build(image_set, config, transforms)` that returns the
Dataset and a `build_evaluator(config, dataset, run_dir, epoch)`, add one `register_dataset` line at the end of
this file, and a YAML file in configs/.
"""
import importlib
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Tuple, Union

from torch.utils.data import Dataset

from config import Config, as_config
from .evaluator import Evaluator
from .files import SubsetWarning
from .transforms import VideoTransforms, transforms_from_config

BuildDataset = Callable[[str, Config, VideoTransforms], Dataset]  # (image_set, config, transforms) -> the loader
BuildEvaluator = Callable[[Config, Dataset, Path, int], Evaluator]  # (config, test dataset, run_dir, epoch)


@dataclass(frozen=True)
class DatasetEntry:
    # the functions, or where they are ('datasets.mevis:build'): imported when first used, so that checking a
    # config's dataset_name loads no dataset's libraries
    build: Union[BuildDataset, str]
    build_evaluator: Union[BuildEvaluator, str]
    image_sets: Tuple[str, ...] = ('train', 'test')  # the splits it has ('test' only: evaluation only)
    options: Tuple[str, ...] = ()  # the keys of OPTIONS it reads


# Config keys that only some datasets read: a dataset that does not read one refuses a config that turns it on.
OPTIONS = ('absent_referred_samples',)


_DATASETS: Dict[str, DatasetEntry] = {}


def register_dataset(name: str, build: Union[BuildDataset, str], build_evaluator: Union[BuildEvaluator, str],
                     image_sets: Tuple[str, ...] = ('train', 'test'), options: Tuple[str, ...] = ()):
    """Make `name` a valid `dataset_name`. `build` and `build_evaluator` are functions or 'module:function' names;
    `options` the keys of `OPTIONS` its loader reads. Registering a name again replaces its entry."""
    _DATASETS[name] = DatasetEntry(build, build_evaluator, tuple(image_sets), tuple(options))


def dataset_names() -> Tuple[str, ...]:
    return tuple(_DATASETS)


def check_dataset_name(name: str):
    """A ValueError naming the registered datasets when `name` is not one of them."""
    if name not in _DATASETS:
        raise ValueError(f'config key dataset_name: {name!r} is not one of {", ".join(map(repr, _DATASETS))}')


def check_dataset_config(config: Config):
    """`check_dataset_name`, and a ValueError when the config turns on an option of `OPTIONS` that its dataset does
    not read."""
    check_dataset_name(config.dataset_name)
    entry = _DATASETS[config.dataset_name]
    for key in OPTIONS:
        if getattr(config, key) and key not in entry.options:
            readers = [name for name, other in _DATASETS.items() if key in other.options]
            raise ValueError(f'config key {key}: {config.dataset_name} does not read it (only '
                             f'{", ".join(readers)} does); set it to false')


def _function(target: Union[Callable, str]) -> Callable:
    if callable(target):
        return target
    module, name = target.split(':')
    return getattr(importlib.import_module(module), name)


def build_dataset(image_set: str, config=None, **config_values) -> Dataset:
    """The `image_set` ('train' or 'test') of the config's dataset: `build_dataset('test', config)`, or as the
    original calls it, `build_dataset('test', **vars(args))` with its config namespace (see `config.as_config`)."""
    if isinstance(config, str):  # the original's positional dataset_name
        config_values['dataset_name'] = config
        config = None
    config = as_config(config if config is not None else config_values)
    check_dataset_config(config)
    entry = _DATASETS[config.dataset_name]
    if image_set not in entry.image_sets:
        raise ValueError(f'{config.dataset_name} has no {image_set!r} split (it has: {", ".join(entry.image_sets)})'
                         + ('; it is used for evaluation only: run with -rm eval' if image_set == 'train' else ''))
    transforms = transforms_from_config(image_set, config)
    with warnings.catch_warnings():
        if config.synthetic_dataset:  # generated data is not a subset of the real dataset: no row-count warnings
            warnings.simplefilter('ignore', SubsetWarning)
        return _function(entry.build)(image_set, config, transforms)


def build_evaluator(config: Config, dataset: Dataset, run_dir: Path, epoch: int) -> Evaluator:
    check_dataset_name(config.dataset_name)
    return _function(_DATASETS[config.dataset_name].build_evaluator)(config, dataset, Path(run_dir), epoch)


register_dataset('a2d_sentences', 'datasets.a2d_sentences:build', 'datasets.coco_evaluator:build_coco_evaluator',
                 options=('absent_referred_samples',))
register_dataset('jhmdb_sentences', 'datasets.jhmdb_sentences:build', 'datasets.coco_evaluator:build_coco_evaluator',
                 image_sets=('test',))
register_dataset('ref_youtube_vos', 'datasets.refer_youtube_vos:build', 'datasets.refer_youtube_vos:build_evaluator')
register_dataset('ref_davis17', 'datasets.ref_davis17:build', 'datasets.ref_davis17:build_evaluator',
                 image_sets=('test',))
register_dataset('mevis', 'datasets.mevis:build', 'datasets.mevis:build_evaluator')
