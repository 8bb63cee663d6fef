"""The datasets and their evaluators, by name.

A dataset is three things: a loader (a torch Dataset with a `collator` for its DataLoader, see
`transforms.collate_videos` for the batch it makes), an evaluator (`evaluator.Evaluator`: metrics, predictions,
submission files) and a config in configs/. They are registered below under the config's `dataset_name`; the
trainer and the command-line programs reach them only through `build_dataset` and `build_evaluator`.

To add a dataset: write its module in this folder with a `build(image_set, config, transforms)` that returns the
Dataset and a `build_evaluator(config, dataset, run_dir, epoch)`, add one `register_dataset` line at the end of
this file, and a YAML file in configs/.
"""
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Tuple

from torch.utils.data import Dataset

from config import Config, as_config
from .evaluator import Evaluator
from .files import SubsetWarning
from .transforms import VideoTransforms, transforms_from_config

BuildDataset = Callable[[str, Config, VideoTransforms], Dataset]  # (image_set, config, transforms) -> the loader
BuildEvaluator = Callable[[Config, Dataset, Path, int], Evaluator]  # (config, test dataset, run_dir, epoch)


@dataclass(frozen=True)
class DatasetEntry:
    build: BuildDataset
    build_evaluator: BuildEvaluator
    image_sets: Tuple[str, ...] = ('train', 'test')  # the splits it has ('test' only: evaluation only)


_DATASETS: Dict[str, DatasetEntry] = {}


def register_dataset(name: str, build: BuildDataset, build_evaluator: BuildEvaluator, image_sets: Tuple[str, ...] = ('train', 'test')):
    """Make `name` a valid `dataset_name`. Registering a name again replaces its entry."""
    _DATASETS[name] = DatasetEntry(build, build_evaluator, tuple(image_sets))


def dataset_names() -> Tuple[str, ...]:
    return tuple(_DATASETS)


def build_dataset(image_set: str, config=None, **config_values) -> Dataset:
    """The `image_set` ('train' or 'test') of the config's dataset: `build_dataset('test', config)`, or as the
    original calls it, `build_dataset('test', **vars(args))` with its config namespace (see `config.as_config`)."""
    if isinstance(config, str):  # the original's positional dataset_name
        config_values['dataset_name'] = config
        config = None
    config = as_config(config if config is not None else config_values)
    entry = _DATASETS[config.dataset_name]
    if image_set not in entry.image_sets:
        raise ValueError(f'{config.dataset_name} has no {image_set!r} split (it has: {", ".join(entry.image_sets)})'
                         + ('; it is used for evaluation only: run with -rm eval' if image_set == 'train' else ''))
    transforms = transforms_from_config(image_set, config)
    with warnings.catch_warnings():
        if config.synthetic_dataset:  # generated data is not a subset of the real dataset: no row-count warnings
            warnings.simplefilter('ignore', SubsetWarning)
        return entry.build(image_set, config, transforms)


def build_evaluator(config: Config, dataset: Dataset, run_dir: Path, epoch: int) -> Evaluator:
    return _DATASETS[config.dataset_name].build_evaluator(config, dataset, Path(run_dir), epoch)


from . import a2d_sentences, jhmdb_sentences, refer_youtube_vos  # noqa: E402  (they import the names above)
from .coco_evaluator import build_coco_evaluator  # noqa: E402

register_dataset('a2d_sentences', a2d_sentences.build, build_coco_evaluator)
register_dataset('jhmdb_sentences', jhmdb_sentences.build, build_coco_evaluator, image_sets=('test',))
register_dataset('ref_youtube_vos', refer_youtube_vos.build, refer_youtube_vos.build_evaluator)

from . import mevis, ref_davis17  # noqa: E402
register_dataset('ref_davis17', ref_davis17.build, ref_davis17.build_evaluator, image_sets=('test',))
register_dataset('mevis', mevis.build, mevis.build_evaluator)
