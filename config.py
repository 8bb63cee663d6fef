"""The run configuration: one typed object built from a YAML file, command-line flags and `--set` overrides.

Config files keep the original MTTR format, one entry per key:

    lr:
      desc: main learning rate
      value: 0.0001

Every key is declared in `Config` below with its type and default (the paper's value), so a file with an
unknown key or a value of the wrong type is rejected with the key's name when it is loaded.
"""
import dataclasses
import io
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

from ruamel.yaml import YAML

DATASET_NAMES = ('a2d_sentences', 'jhmdb_sentences', 'ref_youtube_vos')


@dataclass
class Config:
    # optimisation (REFERENCE.md §5)
    lr: float = 1e-4
    lr_backbone: float = 1e-5
    text_encoder_lr: float = 5e-5
    weight_decay: float = 1e-4
    epochs: int = 70
    lr_drop: List[int] = field(default_factory=lambda: [50])
    lr_drop_gamma: float = 0.4
    clip_max_norm: float = 0.1
    enable_amp: bool = True
    # autocast dtype with enable_amp: float16 (CUDA only, with gradient scaling, as the original) or bfloat16
    # (CUDA or CPU, no scaling; evaluation then runs under it too)
    amp_dtype: str = 'float16'
    seed: int = 42
    # backbone
    backbone_name: str = 'swin-t'
    backbone_pretrained: bool = True
    backbone_pretrained_path: str = 'pretrained_swin_transformer/swin_tiny_patch244_window877_kinetics400_1k.pth'
    train_backbone: bool = True
    # Video Swin sizes (Swin-T by default; smaller values give a model for quick CPU experiments)
    swin_embed_dim: int = 96
    swin_depths: List[int] = field(default_factory=lambda: [2, 2, 6, 2])
    swin_num_heads: List[int] = field(default_factory=lambda: [3, 6, 12, 24])
    swin_window_size: List[int] = field(default_factory=lambda: [8, 7, 7])
    # multimodal transformer
    num_encoder_layers: int = 3
    num_decoder_layers: int = 3
    dim_feedforward: int = 2048
    d_model: int = 256
    dropout: float = 0.1
    nheads: int = 8
    num_queries: int = 50
    mask_kernels_dim: int = 8
    aux_loss: bool = True
    # text encoder: a Hugging Face hub name or a local model directory
    text_encoder_type: str = 'roberta-base'
    text_encoder_pretrained: bool = True
    freeze_text_encoder: bool = True
    # matching and loss
    set_cost_is_referred: float = 2
    set_cost_dice: float = 5
    is_referred_loss_coef: float = 2
    sigmoid_focal_loss_coef: float = 2
    dice_loss_coef: float = 5
    eos_coef: float = 0.1
    # data
    dataset_name: str = 'a2d_sentences'
    # datasets/synthetic.py: generated on first use (in the A2D-Sentences layout) when dataset_path is empty
    synthetic_dataset: bool = False
    dataset_path: str = './a2d_sentences'
    resize_and_crop_augmentations: bool = True
    horizontal_flip_augmentations: bool = True
    train_short_size: int = 320
    train_max_size: int = 576
    eval_short_size: int = 320
    eval_max_size: int = 576
    num_workers: int = 8
    cache_dir: str = '~/.cache/mttr'
    dataset_coco_gt_format_path: Optional[str] = None
    generate_new_samples_metadata: bool = False
    samples_metadata_path: Optional[str] = None
    valid_video_ids_path: Optional[str] = None
    # evaluation and logging
    calculate_precision_and_iou_metrics: bool = True
    eval_pictures: int = 4
    wandb_mode: str = 'disabled'
    output_dir: str = ''
    # speed and memory; none of these changes the results beyond float rounding
    backbone_activation_checkpointing: bool = False  # recompute each Swin block in backward: less training memory
    compile_model: bool = False  # torch.compile the network (first iterations are slow while it compiles)
    cpu_keep_freed_memory: bool = True  # CPU runs: utils.keep_freed_memory_in_process
    # set from the command line
    running_mode: str = 'train'
    window_size: int = 8
    batch_size: int = 1
    eval_batch_size: int = 1
    checkpoint_path: Optional[str] = None
    device: str = 'cuda'

    def __post_init__(self):
        if self.dataset_name not in DATASET_NAMES:
            raise ValueError(f'config key dataset_name: {self.dataset_name!r} is not one of {DATASET_NAMES}')
        if self.running_mode not in ('train', 'eval'):
            raise ValueError(f"config key running_mode: {self.running_mode!r} is not 'train' or 'eval'")
        if self.amp_dtype not in ('float16', 'bfloat16'):
            raise ValueError(f"config key amp_dtype: {self.amp_dtype!r} is not 'float16' or 'bfloat16'")
        if self.wandb_mode not in ('disabled', 'online', 'offline'):
            raise ValueError(f"config key wandb_mode: {self.wandb_mode!r} is not 'disabled', 'online' or 'offline'")

    def to_dict(self):
        return dataclasses.asdict(self)


_FIELD_TYPES = {f.name: f.type for f in dataclasses.fields(Config)}


def _type_name(expected):
    return getattr(expected, '__name__', None) or str(expected).replace('typing.', '')


def _coerce(key, value, expected):
    """Check `value` against the declared type of `key`; ints are accepted where floats are expected."""
    origin = typing.get_origin(expected)
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return None
        (expected,) = [t for t in typing.get_args(expected) if t is not type(None)]
        origin = typing.get_origin(expected)
    if origin is list:
        (item_type,) = typing.get_args(expected)
        if not isinstance(value, (list, tuple)):
            raise TypeError(f'config key {key}: expected a list of {_type_name(item_type)}, got {value!r}')
        return [_coerce(key, v, item_type) for v in value]
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if (expected is int and isinstance(value, bool)) or not isinstance(value, expected):
        raise TypeError(f'config key {key}: expected {_type_name(expected)}, got {value!r} '
                        f'({type(value).__name__})')
    return value


def _check_known(keys, source):
    unknown = sorted(set(keys) - set(_FIELD_TYPES))
    if unknown:
        raise KeyError(f'{source}: unknown config key(s) {", ".join(unknown)}; known keys are listed in config.py')


def read_config_file(path):
    """Read a `key: {desc, value}` YAML file into a plain dict of checked values."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'config file not found: {path}')
    raw = YAML(typ='safe').load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ValueError(f'{path}: expected a mapping of config keys, got {type(raw).__name__}')
    _check_known(raw, str(path))
    values = {}
    for key, entry in raw.items():
        if not isinstance(entry, dict) or 'value' not in entry:
            raise ValueError(f"{path}: config key {key} must be a mapping with 'desc' and 'value', got {entry!r}")
        values[key] = _coerce(key, entry['value'], _FIELD_TYPES[key])
    return values


def parse_override(text):
    """Parse one `KEY=VALUE` override; VALUE is read as a YAML scalar or list (e.g. `lr=2e-4`, `lr_drop=[10,20]`)."""
    if '=' not in text:
        raise ValueError(f'--set expects KEY=VALUE, got {text!r}')
    key, raw_value = text.split('=', 1)
    key = key.strip()
    _check_known([key], '--set')
    value = YAML(typ='safe').load(io.StringIO(raw_value)) if raw_value.strip() else ''
    if _FIELD_TYPES[key] in (str, Optional[str]) and value is not None and not isinstance(value, str):
        value = raw_value.strip()  # e.g. --set text_encoder_type=123 stays a string
    return key, _coerce(key, value, _FIELD_TYPES[key])


def load_config(path=None, overrides=None, **flags):
    """Build a Config: defaults < YAML file < flags (keyword arguments) < overrides (list of 'KEY=VALUE')."""
    values = read_config_file(path) if path is not None else {}
    _check_known(flags, 'flags')
    values.update({k: _coerce(k, v, _FIELD_TYPES[k]) for k, v in flags.items() if v is not None})
    for text in overrides or []:
        key, value = parse_override(text)
        values[key] = value
    return Config(**values)


def save_config(config, path):
    """Write the config in the same `key: {desc, value}` format it is read from."""
    yaml = YAML()
    yaml.default_flow_style = None
    with open(path, 'w') as f:
        yaml.dump({k: {'value': v} for k, v in config.to_dict().items()}, f)
