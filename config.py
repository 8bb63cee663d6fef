"""The run configuration: one typed object built from a YAML file, command-line flags and `--set` overrides.

Config files keep the original MTTR format, one entry per key:

    lr:
      desc: main learning rate
      value: 0.0001

Every key is declared in `Config` below with its type and default (the paper's value), so a file with an
unknown key or a value of the wrong type is rejected with the key's name when it is loaded, and values that
cannot work (a batch size of 0, heads that do not divide the width, ...) are rejected there too.

Code written against the original repository passes an `argparse.Namespace` of the original YAML keys (plus
its command-line arguments) to `build_model(args)` and `build_dataset(image_set, **vars(args))`; `as_config`
turns such a namespace or dict into a `Config`, filling the keys the original did not have with their defaults.
"""
import argparse
import dataclasses
import io
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Union

from ruamel.yaml import YAML, YAMLError
from ruamel.yaml.constructor import DuplicateKeyError

BACKBONE_NAMES = ('swin-t',)
# Keys renamed since the original; files and code using the old name keep working.
RENAMED_KEYS = {'resize_and_crop_augmentations': 'resize_frames'}
# What the original's main.py and Trainer add to its config namespace besides the YAML keys: accepted (and
# ignored, where this project gets them elsewhere) by `as_config`.
ORIGINAL_RUNTIME_KEYS = frozenset({'config_path', 'num_gpus', 'gpu_ids', 'cpu', 'num_devices', 'device_ids',
                                   'distributed', 'rank', 'world_size'})


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
    # read the Kinetics-400 weights into the backbone when the network is built (evaluation, inference and the
    # hub entry points set it to false: the checkpoint holds the weights)
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
    # read the pretrained RoBERTa weights (false: only its config and tokenizer, e.g. when a checkpoint holds them)
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
    # A2D-Sentences layout: also a sample of every annotated frame without the referred instance, trained toward
    # "not referred" and scored for its probability of "referred", outside the mAP (false: the original's samples)
    absent_referred_samples: bool = False
    # resize frames to the train/eval short and max sizes below (false: feed them at their own size);
    # the original's name for it, resize_and_crop_augmentations, is still read
    resize_frames: bool = True
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
    # ref_davis17: the folder of the four Khoreva text files (default: <dataset_path>/davis_text_annotations)
    davis_text_annotations_path: Optional[str] = None
    # mevis: the split evaluated, valid_u (ground truth: J&F) or valid (no ground truth: the server's zip)
    mevis_eval_split: str = 'valid_u'
    # evaluation and logging
    calculate_precision_and_iou_metrics: bool = True
    # evaluation encodes each video once for all its queries, and decodes this many queries at a time
    query_batch: int = 4
    # whole-video evaluation (Refer-YouTube-VOS, MeViS, Ref-DAVIS17): null runs each video in one pass (the original's
    # Refer-YouTube-VOS protocol); N runs longer videos in windows of N frames, encoded once for all their
    # expressions, with one object query per expression chosen over the whole video (as inference.py)
    eval_window_size: Optional[int] = None
    eval_pictures: int = 4
    wandb_mode: str = 'disabled'
    output_dir: str = ''
    # speed and memory; none of these changes the results beyond float rounding
    backbone_activation_checkpointing: bool = False  # recompute each Swin block in backward: less training memory
    compile_model: bool = False  # torch.compile the network (first iterations are slow while it compiles)
    cpu_keep_freed_memory: bool = True  # CPU runs: engine/cpu_heap.py (set by the entry points)
    # set from the command line
    running_mode: str = 'train'
    window_size: int = 8
    batch_size: int = 1
    eval_batch_size: int = 1
    checkpoint_path: Optional[str] = None
    device: str = 'cuda'

    def __post_init__(self):
        # (dataset_name is checked by the dataset registry, datasets/__init__.py: datasets registered by the code)
        choices = {'running_mode': (self.running_mode, ('train', 'eval')),
                   'amp_dtype': (self.amp_dtype, ('float16', 'bfloat16')),
                   'wandb_mode': (self.wandb_mode, ('disabled', 'online', 'offline')),
                   'backbone_name': (self.backbone_name, BACKBONE_NAMES),
                   'mevis_eval_split': (self.mevis_eval_split, ('valid_u', 'valid'))}
        for key, (value, allowed) in choices.items():
            if value not in allowed:
                raise ValueError(f'config key {key}: {value!r} is not one of {", ".join(map(repr, allowed))}')
        for key in ('window_size', 'batch_size', 'eval_batch_size', 'num_queries', 'd_model', 'nheads',
                    'dim_feedforward', 'mask_kernels_dim', 'swin_embed_dim', 'train_short_size', 'train_max_size',
                    'eval_short_size', 'eval_max_size', 'query_batch'):
            if getattr(self, key) < 1:
                raise ValueError(f'config key {key}: must be at least 1, got {getattr(self, key)}')
        if self.eval_window_size is not None and self.eval_window_size < 1:
            raise ValueError(f'config key eval_window_size: must be at least 1 (or null), got {self.eval_window_size}')
        for key in ('epochs', 'num_workers', 'num_encoder_layers', 'num_decoder_layers', 'eval_pictures'):
            if getattr(self, key) < 0:
                raise ValueError(f'config key {key}: must be 0 or more, got {getattr(self, key)}')
        if self.d_model % self.nheads:
            raise ValueError(f'config keys d_model and nheads: d_model ({self.d_model}) must be divisible by '
                             f'nheads ({self.nheads})')
        if not 0 <= self.dropout < 1:
            raise ValueError(f'config key dropout: must be in [0, 1), got {self.dropout}')
        if len(self.swin_depths) != len(self.swin_num_heads) or len(self.swin_depths) < 3:
            raise ValueError(f'config keys swin_depths and swin_num_heads: one value per Swin stage (at least 3, '
                             f'the first 3 are used), got {self.swin_depths} and {self.swin_num_heads}')
        if len(self.swin_window_size) != 3 or min(self.swin_window_size) < 1:
            raise ValueError(f'config key swin_window_size: expected 3 positive sizes (frames, height, width), '
                             f'got {self.swin_window_size}')

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


def _is_optional(key):
    return type(None) in typing.get_args(_FIELD_TYPES[key])


def _current_name(key):
    return RENAMED_KEYS.get(key, key)


def _check_known(keys, source):
    unknown = sorted(set(map(_current_name, keys)) - set(_FIELD_TYPES))
    if unknown:
        raise KeyError(f'{source}: unknown config key(s) {", ".join(unknown)}; known keys are listed in config.py')


def _checked(key, value):
    """`(current name of key, value checked against its type)`."""
    key = _current_name(key)
    return key, _coerce(key, value, _FIELD_TYPES[key])


def read_config_file(path):
    """Read a `key: {desc, value}` YAML file into a plain dict of checked values."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'config file not found: {path}')
    try:
        raw = YAML(typ='safe').load(path.read_text(encoding='utf-8')) or {}
    except UnicodeDecodeError as error:
        raise ValueError(f'{path}: not UTF-8 text (byte {error.start}: {error.reason}); expected a YAML config '
                         'file') from error
    except YAMLError as error:
        mark = getattr(error, 'problem_mark', None)
        where = f', line {mark.line + 1}' if mark is not None else ''
        problem = getattr(error, 'problem', None) or ' '.join(str(error).split())
        if isinstance(error, DuplicateKeyError):
            problem = problem.split(' with value')[0]  # (the values of config keys are mappings: long and alike)
        raise ValueError(f'{path}{where}: {problem}; expected a YAML mapping of config keys, each once') from error
    if not isinstance(raw, dict):
        raise ValueError(f'{path}: expected a mapping of config keys, got {type(raw).__name__}')
    _check_known(raw, str(path))
    values = {}
    for key, entry in raw.items():
        if not isinstance(entry, dict) or 'value' not in entry:
            raise ValueError(f"{path}: config key {key} must be a mapping with 'desc' and 'value', got {entry!r}")
        name, value = _checked(key, entry['value'])
        values[name] = value
    return values


def parse_override(text):
    """Parse one `KEY=VALUE` override; VALUE is read as a YAML scalar or list (e.g. `lr=2e-4`, `lr_drop=[10,20]`)."""
    if '=' not in text:
        raise ValueError(f'--set expects KEY=VALUE, got {text!r}')
    key, raw_value = text.split('=', 1)
    key = _current_name(key.strip())
    _check_known([key], '--set')
    value = YAML(typ='safe').load(io.StringIO(raw_value)) if raw_value.strip() else ''
    if _FIELD_TYPES[key] in (str, Optional[str]) and value is not None and not isinstance(value, str):
        value = raw_value.strip()  # e.g. --set text_encoder_type=123 stays a string
    return _checked(key, value)


def load_config(path=None, overrides=None, **flags):
    """Build a Config: defaults < YAML file < flags (keyword arguments) < overrides (list of 'KEY=VALUE')."""
    values = read_config_file(path) if path is not None else {}
    _check_known(flags, 'flags')
    values.update(_checked(k, v) for k, v in flags.items() if v is not None)
    for text in overrides or []:
        key, value = parse_override(text)
        values[key] = value
    return Config(**values)


def as_config(args: Union[Config, argparse.Namespace, dict]) -> Config:
    """A `Config` from a Config, or from the original's config namespace (or a dict) of YAML keys and
    command-line arguments: renamed keys are read under their old name, missing keys take their defaults,
    the original's run-time keys (`ORIGINAL_RUNTIME_KEYS`) are ignored, and anything else unknown is an error."""
    if isinstance(args, Config):
        return args
    values = dict(vars(args) if isinstance(args, argparse.Namespace) else args)
    # (the original's argparse leaves flags that were not given at None: they take their defaults here too)
    values = {k: v for k, v in values.items() if k not in ORIGINAL_RUNTIME_KEYS
              and not (v is None and _current_name(k) in _FIELD_TYPES and not _is_optional(_current_name(k)))}
    _check_known(values, 'config')
    return Config(**dict(_checked(k, v) for k, v in values.items()))


def save_config(config, path):
    """Write the config in the same `key: {desc, value}` format it is read from."""
    yaml = YAML()
    yaml.default_flow_style = None
    with open(path, 'w') as f:
        yaml.dump({k: {'value': v} for k, v in config.to_dict().items()}, f)
