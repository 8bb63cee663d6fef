"""The one way to build the config of a run of MTTR, for every front end (main.py, inference.py, demo.py,
hubconf.py): the YAML file < the front end's flags < `--set` overrides, checked before anything is read or
written; every problem is a UsageError of one line."""
from pathlib import Path
from typing import Optional, Sequence

import datasets
from config import Config, load_config
from utils import UsageError, error_message


def load_run_config(config_path, overrides: Sequence[str] = (), *, running_mode: str,
                    checkpoint_path: Optional[str] = None, needs_dataset: bool = True, **flags) -> Config:
    """The config of a run (`running_mode` 'train' or 'eval'; inference and the demo are evaluation runs).

    Evaluation reads no pretrained backbone or text-encoder weights (the checkpoint holds every weight), unless an
    override says otherwise. The dataset name must be registered (datasets/__init__.py), and the dataset must read
    the options the config turns on. With the synthetic config, the synthetic dataset (and the tokenizer written
    beside it) is generated on first use: always when the run reads the dataset, and otherwise (`needs_dataset`
    false: inference) when the config names no text encoder. `checkpoint_path` must be a file."""
    if running_mode == 'eval':
        flags = dict(backbone_pretrained=False, text_encoder_pretrained=False, **flags)
    try:
        config = load_config(config_path, list(overrides), running_mode=running_mode, checkpoint_path=checkpoint_path,
                             **flags)
        datasets.check_dataset_config(config)
    except (FileNotFoundError, KeyError, TypeError, ValueError) as error:
        raise UsageError(error_message(error)) from error
    if config.synthetic_dataset and (needs_dataset or not config.text_encoder_type):
        from datasets.synthetic import ensure_synthetic_dataset
        try:
            ensure_synthetic_dataset(config)
        except (FileNotFoundError, ValueError) as error:
            raise UsageError(error_message(error)) from error
    if checkpoint_path is not None and not Path(checkpoint_path).is_file():
        raise UsageError(f'checkpoint not found: {checkpoint_path}')
    return config
