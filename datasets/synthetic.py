"""A synthetic referring-video dataset that a small MTTR learns on a CPU in minutes, written in the A2D-Sentences
on-disk layout so the real A2D loader, evaluation and metrics run on it unchanged.

Every video shows a few coloured shapes (circle, square, triangle, diamond; small or big) moving in straight lines
over a textured, noisy background. Every object is referred to by one expression that singles it out, e.g.
"the red circle", "the big blue square moving left", "the green triangle on the right": the colours of the
objects of one video differ, so the expression is needed to know which object to segment. The masks in the
annotation files are the drawn shapes, pixel for pixel.

The expressions also say "when": in some videos one object enters or leaves the frame, so that it is absent
from one annotated frame and present in another, and some videos have one more expression that names an object
they do not show ("the white square" among a red, a green and a blue shape). An annotated frame's `.h5` file
lists the instances visible in it, as A2D's do; with the config key `absent_referred_samples` the A2D loader
also makes samples of the frames where a referred instance is absent, trained toward "not referred".

Beside the data, `text_encoder/` holds a small RoBERTa-architecture model (config.json, no weights) and a
byte-level BPE tokenizer fitted to the expressions' vocabulary, for training with `text_encoder_pretrained:
false` on a machine without hub access.

    root = write_synthetic_dataset('/tmp/synthetic', SyntheticSpec(seed=0))
    config = ensure_synthetic_dataset(config)   # generate on first use, fill in dataset_path/text_encoder_type

Everything is determined by the spec (its seed included): the same spec writes the same masks, expressions and
frames on every machine.
"""
import csv
import dataclasses
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import h5py
import numpy as np

from datasets.video_files import write_mp4

# The version of what this module writes; part of the default directory name, so data written by an older
# generator is never mistaken for the current one.
GENERATOR_VERSION = 2
MARKER_FILE = 'synthetic_dataset.json'
TEXT_ENCODER_DIR = 'text_encoder'

COLOURS: Dict[str, Tuple[int, int, int]] = {
    'red': (225, 30, 30),
    'green': (30, 190, 50),
    'blue': (40, 70, 235),
    'yellow': (240, 220, 30),
    'purple': (160, 50, 200),
    'white': (245, 245, 245),
}
SHAPES = ('circle', 'square', 'triangle', 'diamond')
SIZES = ('small', 'big')
DIRECTIONS = {'left': (-1, 0), 'right': (1, 0), 'up': (0, -1), 'down': (0, 1)}
FILLER_WORDS = ('the', 'a', 'moving', 'on', 'that', 'is', 'object', 'shape')
EXTENT = 1.25  # every shape lies within EXTENT * radius of its centre


@dataclass(frozen=True)
class SyntheticSpec:
    """What to generate. Sizes are in pixels at `frame_size`; `annotated_frames` are 1-based, as in A2D."""
    seed: int = 0
    num_train_videos: int = 600
    num_test_videos: int = 60
    frame_size: int = 64
    num_frames: int = 8
    annotated_frames: Tuple[int, ...] = (3, 6)
    min_objects: int = 2
    max_objects: int = 3
    radius_small: float = 7.0
    radius_big: float = 10.0
    speed: float = 1.5  # pixels per frame
    # "When": the share of videos in which one object enters or leaves the frame (absent from the first or the
    # last annotated frame, its centre inside the frame in the other), at crossing_speed pixels per frame
    crossing_rate: float = 0.35
    crossing_speed: float = 5.0
    # the share of videos with one more expression, naming a colour none of its objects has
    absent_expression_rate: float = 0.5
    # Control experiments: every expression replaced by this sentence (then the text cannot tell the objects apart)
    fixed_query: str = ''

    def to_dict(self):
        return {**dataclasses.asdict(self), 'annotated_frames': list(self.annotated_frames),
                'generator_version': GENERATOR_VERSION}


@dataclass
class SyntheticObject:
    colour: str
    shape: str
    size: str
    direction: str
    centres: np.ndarray  # [T, 2] (x, y) per frame
    radius: float


# --- drawing ---------------------------------------------------------------------------------------------------

def shape_mask(shape: str, centre, radius: float, size: int) -> np.ndarray:
    """`[size, size]` bool: the pixels whose centre lies inside the shape."""
    ys, xs = np.mgrid[0:size, 0:size] + 0.5
    dx, dy = xs - centre[0], ys - centre[1]
    if shape == 'circle':
        return dx ** 2 + dy ** 2 <= radius ** 2
    if shape == 'square':
        half = radius * 0.85  # about the area of the circle
        return (np.abs(dx) <= half) & (np.abs(dy) <= half)
    if shape == 'diamond':
        return np.abs(dx) + np.abs(dy) <= radius * 1.2
    if shape == 'triangle':  # equilateral, pointing up, inscribed in a circle of radius 1.25 * radius
        top, bottom = -1.25 * radius, 0.625 * radius
        half_width = (dy - top) / (bottom - top) * 1.25 * radius * np.sqrt(3) / 2
        return (dy >= top) & (dy <= bottom) & (np.abs(dx) <= half_width)
    raise ValueError(f'unknown shape {shape!r}; expected one of {SHAPES}')


def background(rng: np.random.Generator, size: int) -> np.ndarray:
    """`[size, size, 3]` float: a dim, smooth colour gradient with a blotchy grey texture."""
    ys, xs = np.mgrid[0:size, 0:size] / size
    base = rng.uniform(40, 110, 3)
    slope = rng.uniform(-30, 30, (2, 3))
    image = base + xs[..., None] * slope[0] + ys[..., None] * slope[1]
    coarse = rng.normal(0, 14, (size // 8 + 1, size // 8 + 1))
    texture = np.kron(coarse, np.ones((8, 8)))[:size, :size]
    return image + texture[..., None]


def place_objects(rng: np.random.Generator, spec, path) -> List[SyntheticObject]:
    """Objects with distinct colours (`spec.min_objects` to `spec.max_objects`), drawn again until no two overlap in
    any frame; `path(index, radius, direction)` draws the centres [T, 2] of the index-th object with `rng`."""
    num_objects = int(rng.integers(spec.min_objects, spec.max_objects + 1))
    colours = rng.choice(list(COLOURS), num_objects, replace=False)
    for _ in range(1000):
        objects = []
        for index, colour in enumerate(colours):
            size_name = SIZES[int(rng.integers(len(SIZES)))]
            radius = spec.radius_small if size_name == 'small' else spec.radius_big
            direction = list(DIRECTIONS)[int(rng.integers(len(DIRECTIONS)))]
            centres = path(index, radius, direction)
            objects.append(SyntheticObject(str(colour), SHAPES[int(rng.integers(len(SHAPES)))], size_name,
                                           direction, centres, radius))
        if _separated(objects):
            return objects
    raise RuntimeError('could not place the objects without overlap; use fewer or smaller objects')


def render_objects(rng: np.random.Generator, spec: SyntheticSpec) -> List[SyntheticObject]:
    """Objects with distinct colours whose shapes never overlap in any frame; all stay inside the frame, except,
    in a share `spec.crossing_rate` of the videos, one that enters or leaves it (see `crossing_path`)."""
    size, num_frames = spec.frame_size, spec.num_frames
    crossing = rng.random() < spec.crossing_rate

    def path(index, radius, direction):
        if crossing and index == 0:
            return crossing_path(rng, spec, radius, direction)
        velocity = np.array(DIRECTIONS[direction], dtype=float) * spec.speed
        travel = velocity * (num_frames - 1)
        margin = radius * EXTENT + 1
        low = np.maximum(margin, margin - travel)
        high = np.minimum(size - margin, size - margin - travel)
        if np.any(low > high):
            raise ValueError(f'frame_size {size} is too small for objects of radius {radius} moving '
                             f'{spec.speed} px for {num_frames} frames')
        start = rng.uniform(low, high)
        return start + np.arange(num_frames)[:, None] * velocity

    return place_objects(rng, spec, path)


def crossing_path(rng: np.random.Generator, spec: SyntheticSpec, radius: float, direction: str) -> np.ndarray:
    """Centres [T, 2] of an object that enters the frame (absent from the first annotated frame, its centre inside
    the frame in the last) or leaves it (the other way round) through the edge it moves towards/from, at
    `spec.crossing_speed`; its other coordinate keeps it inside the frame."""
    size, speed = spec.frame_size, spec.crossing_speed
    first, last = min(spec.annotated_frames) - 1, max(spec.annotated_frames) - 1
    outside = radius * EXTENT + 1  # a centre this far beyond an edge draws nothing
    # depth: how far the centre lies inside the edge it crosses (negative: beyond it); 0 at time `edge`
    earliest, latest = first + outside / speed, last  # entering; leaving mirrors it
    if earliest > latest:
        raise ValueError(f'annotated_frames {spec.annotated_frames} are too close for an object of radius {radius} '
                         f'to cross an edge at {speed} px per frame between them')
    edge = rng.uniform(earliest, latest)
    entering = rng.random() < 0.5
    frames = np.arange(spec.num_frames, dtype=float)
    depth = speed * (frames - edge) if entering else speed * ((first + last - edge) - frames)
    unit = np.array(DIRECTIONS[direction], dtype=float)
    # moving right or down, an entering object crosses the low edge (0) and a leaving one the high edge (size)
    low_edge = (unit.sum() > 0) == entering
    along = depth if low_edge else size - depth
    across = np.full(spec.num_frames, rng.uniform(outside, size - outside))  # inside the frame
    return np.stack([along, across], axis=1) if unit[0] else np.stack([across, along], axis=1)


def _separated(objects: List[SyntheticObject]) -> bool:
    for i, a in enumerate(objects):
        for b in objects[i + 1:]:
            distance = np.linalg.norm(a.centres - b.centres, axis=1)
            if np.any(distance < (a.radius + b.radius) * EXTENT + 1):
                return False
    return True


def render_video(rng: np.random.Generator, objects: List[SyntheticObject], spec: SyntheticSpec):
    """Returns frames `[T, H, W, 3]` uint8 and masks `[num_objects, T, H, W]` bool (the drawn pixels)."""
    size = spec.frame_size
    base = background(rng, size)
    frames = np.empty((spec.num_frames, size, size, 3), dtype=np.uint8)
    masks = np.zeros((len(objects), spec.num_frames, size, size), dtype=bool)
    for t in range(spec.num_frames):
        image = base + rng.normal(0, 6, (size, size, 1))
        for k, obj in enumerate(objects):
            mask = shape_mask(obj.shape, obj.centres[t], obj.radius, size)
            shade = np.array(COLOURS[obj.colour], dtype=float) * rng.uniform(0.9, 1.0)
            image[mask] = shade + rng.normal(0, 5, (int(mask.sum()), 3))
            masks[k, t] = mask
        frames[t] = np.clip(image, 0, 255).astype(np.uint8)
    return frames, masks


# --- referring expressions ---------------------------------------------------------------------------------------

def describe(objects: List[SyntheticObject], index: int, annotated_positions, visible: np.ndarray,
             rng: np.random.Generator) -> str:
    """An expression naming the colour and the shape of object `index`, sometimes with one more true attribute
    (its size, its direction of motion, or its side of the frame when it is visible and the leftmost/rightmost
    visible object in every annotated frame). visible: [objects, annotated frames] bool, whether each object
    shows in each annotated frame (0-based `annotated_positions`)."""
    obj = objects[index]
    extras = [f'moving {obj.direction}', 'size']
    xs = np.array([[o.centres[t][0] for t in annotated_positions] for o in objects])  # [objects, frames]
    if visible[index].all():
        if np.all(xs[index] == np.where(visible, xs, np.inf).min(0)):
            extras.append('on the left')
        if np.all(xs[index] == np.where(visible, xs, -np.inf).max(0)):
            extras.append('on the right')
    choice = int(rng.integers(len(extras) + 2))  # two chances in (extras + 2) of colour and shape alone
    article = 'the' if rng.random() < 0.8 else 'a'
    if choice >= len(extras):
        return f'{article} {obj.colour} {obj.shape}'
    if extras[choice] == 'size':
        return f'{article} {obj.size} {obj.colour} {obj.shape}'
    return f'{article} {obj.colour} {obj.shape} {extras[choice]}'


def describe_absent(objects: List[SyntheticObject], rng: np.random.Generator) -> str:
    """An expression naming a colour that none of `objects` has, and a shape: an object the video does not show."""
    colour = rng.choice(sorted(set(COLOURS) - {o.colour for o in objects}))
    article = 'the' if rng.random() < 0.8 else 'a'
    return f'{article} {colour} {SHAPES[int(rng.integers(len(SHAPES)))]}'


def vocabulary() -> List[str]:
    """Every word an expression can contain."""
    return sorted(set(COLOURS) | set(SHAPES) | set(SIZES) | set(DIRECTIONS) | set(FILLER_WORDS))


def example_sentences() -> List[str]:
    """Sentences covering the vocabulary, to fit the tokenizer on."""
    sentences = []
    for colour in COLOURS:
        for shape in SHAPES:
            sentences.append(f'the {colour} {shape}')
            sentences.append(f'a {colour} {shape}')
            for size in SIZES:
                sentences.append(f'the {size} {colour} {shape}')
            for direction in DIRECTIONS:
                sentences.append(f'the {colour} {shape} moving {direction}')
            for side in ('left', 'right'):
                sentences.append(f'the {colour} {shape} on the {side}')
    sentences += [' '.join(FILLER_WORDS), 'a moving object', 'that is the shape']
    return sentences


# --- writing -----------------------------------------------------------------------------------------------------

def video_id(split: str, index: int) -> str:
    return f'syn{split}{index:05d}'


def write_clip(path: Path, frames: np.ndarray):
    """An H.264 mp4 that keeps the colours: full-resolution chroma (yuv444p) and near-lossless quality."""
    write_mp4(path, frames, rate=8, pix_fmt='yuv444p', options={'crf': '4', 'preset': 'veryfast'})


def write_frame_annotation(path: Path, instance_ids: List[int], masks: np.ndarray):
    """One A2D `.h5` file: 'instance', 'reMask' (transposed: [W, H] for one instance, [N, W, H] for several) and
    'reBBox' ([4, N] x1, y1, x2, y2)."""
    boxes = []
    for mask in masks:
        ys, xs = np.nonzero(mask)
        boxes.append([xs.min(), ys.min(), xs.max(), ys.max()])
    stored = masks.astype(np.uint8).transpose(0, 2, 1)
    with h5py.File(path, 'w') as f:
        f['instance'] = np.asarray(instance_ids, dtype=np.float64)
        f['reMask'] = stored[0] if len(instance_ids) == 1 else stored
        f['reBBox'] = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).T


def generate_video(spec: SyntheticSpec, split: str, index: int):
    """(frames [T, H, W, 3] uint8, masks [expressions, T, H, W] bool, objects, expressions) of one video. Expression
    k < len(objects) refers to object k; one more, in a share `spec.absent_expression_rate` of the videos, names an
    object the video does not show (its masks are empty)."""
    rng = np.random.default_rng([spec.seed, 0 if split == 'train' else 1, index])
    objects = render_objects(rng, spec)
    frames, masks = render_video(rng, objects, spec)
    positions = [f - 1 for f in spec.annotated_frames]
    visible = masks[:, positions].any(axis=(2, 3))  # [objects, annotated frames]
    expressions = [spec.fixed_query or describe(objects, k, positions, visible, rng) for k in range(len(objects))]
    if rng.random() < spec.absent_expression_rate and len(objects) < len(COLOURS):
        expressions.append(spec.fixed_query or describe_absent(objects, rng))
        masks = np.concatenate([masks, np.zeros_like(masks[:1])])
    return frames, masks, objects, expressions


# --- long videos: objects entering and leaving -------------------------------------------------------------------

@dataclass(frozen=True)
class LongVideoSpec:
    """Test videos longer than a window, for the rules that choose an object query across windows: each object
    crosses the frame in a straight line, entering and leaving through its edges at its own time, so the objects
    on screen change during the video. Drawn as the training videos (size, colours, shapes, background)."""
    seed: int = 0
    num_frames: int = 48
    frame_size: int = 64
    min_objects: int = 2
    max_objects: int = 3
    min_speed: float = 1.5  # pixels per frame
    max_speed: float = 3.0
    radius_small: float = 7.0
    radius_big: float = 10.0


def long_video_objects(rng: np.random.Generator, spec: LongVideoSpec) -> List[SyntheticObject]:
    """Objects with distinct colours, each crossing the frame (from outside it to outside it) in a straight line,
    visible during a part of the video, never overlapping another."""
    size, num_frames = spec.frame_size, spec.num_frames

    def path(index, radius, direction):
        unit = np.array(DIRECTIONS[direction], dtype=float)
        speed = rng.uniform(spec.min_speed, spec.max_speed)
        outside = radius * EXTENT + 1  # the centre's distance beyond an edge at which the shape is out of frame
        crossing = (size + 2 * outside) / speed  # frames from entering to having left
        enter = rng.uniform(-0.5 * crossing, num_frames - 0.5 * crossing)  # (time of entering, may be < 0)
        across = rng.uniform(outside, size - outside)  # the other coordinate, constant
        along = -outside + (np.arange(num_frames) - enter) * speed  # distance travelled along the direction
        position = np.where(unit.sum() > 0, along, size - along)  # right/down from 0, left/up from the far edge
        return np.stack([position, np.full(num_frames, across)], axis=1) if unit[0] else \
            np.stack([np.full(num_frames, across), position], axis=1)
    return place_objects(rng, spec, path)


def generate_long_video(spec: LongVideoSpec, index: int):
    """(frames [T, H, W, 3] uint8, masks [objects, T, H, W] bool, objects, expressions) of long test video
    `index`: an expression per object naming its colour and shape (what the colours of a video make unique)."""
    rng = np.random.default_rng([spec.seed, 2, index])
    objects = long_video_objects(rng, spec)
    render_spec = SyntheticSpec(frame_size=spec.frame_size, num_frames=spec.num_frames)
    frames, masks = render_video(rng, objects, render_spec)
    expressions = [f'the {obj.colour} {obj.shape}' for obj in objects]
    return frames, masks, objects, expressions


def long_video_id(index: int) -> str:
    return f'synlong{index:05d}'


def write_long_videos(root, spec: LongVideoSpec, count: int, progress: bool = True) -> Path:
    """`count` long test videos under `root` (which must not exist): `videos/<id>.mp4`, the list `videos.jsonl`
    that inference.py --videos takes (the expressions as queries), and the ground truth
    `masks/<id>/<object>/<frame>.png` (0/255; object k is the k-th query)."""
    root = Path(root)
    if root.exists():
        raise FileExistsError(f'{root} exists; write_long_videos writes a new directory')
    from PIL import Image
    from tqdm import tqdm
    (root / 'videos').mkdir(parents=True)
    lines = []
    for index in tqdm(range(count), desc='writing long synthetic videos', disable=not progress, dynamic_ncols=True):
        vid = long_video_id(index)
        frames, masks, _, expressions = generate_long_video(spec, index)
        write_clip(root / 'videos' / f'{vid}.mp4', frames)
        for k, object_masks in enumerate(masks):
            (root / 'masks' / vid / str(k)).mkdir(parents=True)
            for t, mask in enumerate(object_masks):
                Image.fromarray(mask.astype(np.uint8) * 255).save(root / 'masks' / vid / str(k) / f'{t:06d}.png')
        lines.append(json.dumps({'video': str((root / 'videos' / f'{vid}.mp4').resolve()), 'queries': expressions,
                                 'name': vid}))
    (root / 'videos.jsonl').write_text('\n'.join(lines) + '\n')
    (root / 'long_videos.json').write_text(json.dumps({**dataclasses.asdict(spec), 'count': count,
                                                       'generator_version': GENERATOR_VERSION}, indent=2))
    return root


def write_synthetic_dataset(root, spec: SyntheticSpec = SyntheticSpec(), progress: bool = True) -> Path:
    """Write the dataset and its text encoder directory under `root` (which must not exist yet)."""
    root = Path(root)
    if root.exists():
        raise FileExistsError(f'{root} exists; write_synthetic_dataset writes a new directory')
    if spec.max_objects > len(COLOURS):
        raise ValueError(f'max_objects {spec.max_objects}: at most {len(COLOURS)} (one colour each)')
    if not all(1 <= f <= spec.num_frames for f in spec.annotated_frames):
        raise ValueError(f'annotated_frames {spec.annotated_frames} must lie in 1..num_frames ({spec.num_frames})')
    clips_dir = root / 'Release' / 'clips320H'
    masks_dir = root / 'text_annotations' / 'a2d_annotation_with_instances'
    clips_dir.mkdir(parents=True)
    masks_dir.mkdir(parents=True)
    videoset_rows, annotation_rows, descriptions = [], [], {}
    videos = [('train', i) for i in range(spec.num_train_videos)] + [('test', i) for i in range(spec.num_test_videos)]
    from tqdm import tqdm
    for split, index in tqdm(videos, desc='writing the synthetic dataset', disable=not progress,
                             dynamic_ncols=True):
        vid = video_id(split, index)
        frames, masks, objects, expressions = generate_video(spec, split, index)
        write_clip(clips_dir / f'{vid}.mp4', frames)
        (masks_dir / vid).mkdir()
        for frame in spec.annotated_frames:  # an instance is listed in the frames it shows in, as in A2D
            shown = [k for k, mask in enumerate(masks[:, frame - 1]) if mask.any()]
            write_frame_annotation(masks_dir / vid / f'{frame:05d}.h5', shown, masks[shown, frame - 1])
        videoset_rows.append([vid, 0, '00:00:00', f'00:00:{spec.num_frames // 8:02d}', spec.frame_size,
                              spec.frame_size, spec.num_frames, len(spec.annotated_frames),
                              0 if split == 'train' else 1])
        annotation_rows += [[vid, k, expression] for k, expression in enumerate(expressions)]
        descriptions[vid] = [{'colour': o.colour, 'shape': o.shape, 'size': o.size, 'direction': o.direction}
                             for o in objects]
    with open(root / 'Release' / 'videoset.csv', 'w', newline='') as f:
        csv.writer(f, lineterminator='\n').writerows(videoset_rows)
    with open(root / 'text_annotations' / 'a2d_annotation.txt', 'w', newline='') as f:
        writer = csv.writer(f, lineterminator='\n')
        writer.writerow(['video_id', 'instance_id', 'query'])
        writer.writerows(annotation_rows)
    (root / 'text_annotations' / 'a2d_missed_videos.txt').write_text('')
    (root / 'objects.json').write_text(json.dumps(descriptions, indent=1))
    write_text_encoder(root / TEXT_ENCODER_DIR)
    # the marker comes last: a directory without it is incomplete
    (root / MARKER_FILE).write_text(json.dumps(spec.to_dict(), indent=2))
    return root


def write_text_encoder(directory, hidden_size: int = 64, num_layers: int = 2, num_heads: int = 4,
                       intermediate_size: int = 128):
    """A RoBERTa-architecture config (no weights: trained from scratch) and a byte-level BPE tokenizer fitted to
    the expressions' vocabulary, loadable with `AutoTokenizer.from_pretrained(directory)`."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaConfig, RobertaTokenizerFast

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    special_tokens = ['<s>', '<pad>', '</s>', '<unk>', '<mask>']  # RoBERTa's ids 0..4
    bpe = ByteLevelBPETokenizer()
    # one merge per word is enough to spell every vocabulary word as a single token
    bpe.train_from_iterator(example_sentences(), vocab_size=1000, min_frequency=1, special_tokens=special_tokens,
                            show_progress=False)
    bpe.save_model(str(directory))  # vocab.json and merges.txt, RoBERTa's tokenizer files
    tokenizer = RobertaTokenizerFast.from_pretrained(directory, model_max_length=32)
    tokenizer.save_pretrained(directory)
    config = RobertaConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, num_hidden_layers=num_layers,
                           num_attention_heads=num_heads, intermediate_size=intermediate_size,
                           max_position_embeddings=40, type_vocab_size=1, pad_token_id=1, bos_token_id=0,
                           eos_token_id=2)
    config.save_pretrained(directory)
    return directory


# --- first use ---------------------------------------------------------------------------------------------------

def default_dataset_path(cache_dir: str, spec: SyntheticSpec = SyntheticSpec()) -> Path:
    name = f'synthetic_referring_v{GENERATOR_VERSION}' + ('' if spec == SyntheticSpec() else
                                                            f'_seed{spec.seed}')
    return Path(os.path.expanduser(os.path.expandvars(cache_dir))) / name


def read_marker(root) -> Optional[dict]:
    marker = Path(root) / MARKER_FILE
    return json.loads(marker.read_text()) if marker.is_file() else None


def ensure_synthetic_dataset(config, spec: SyntheticSpec = SyntheticSpec(), progress: bool = True):
    """Make sure the synthetic dataset the config uses exists, generating it on first use; returns `config` with
    `dataset_path` and `text_encoder_type` filled in (changed in place).

    - `dataset_path` empty: `<cache_dir>/synthetic_referring_v<version>`; a path that does not exist yet is
      generated there; an existing directory must be a complete synthetic dataset (it has `synthetic_dataset.json`,
      e.g. one written by tools/make_synthetic_dataset.py).
    - `text_encoder_type` empty: the `text_encoder/` directory written with the data.

    Call it once, in the process that launches the run, before the model and the datasets are built.
    """
    root = Path(os.path.expanduser(config.dataset_path)) if config.dataset_path else \
        default_dataset_path(config.cache_dir, spec)
    if root.exists():
        if read_marker(root) is None:
            raise FileNotFoundError(f'{root} (config key dataset_path) exists but is not a complete synthetic dataset: '
                                    f'it lacks {MARKER_FILE}. Remove it to have it generated again, or point '
                                    'dataset_path to another directory')
    else:
        root.parent.mkdir(parents=True, exist_ok=True)
        print(f'generating the synthetic dataset into {root} (first use; takes about a minute)')
        staging = Path(tempfile.mkdtemp(prefix=f'.{root.name}.', dir=root.parent))
        try:
            write_synthetic_dataset(staging / 'data', spec, progress=progress)
            try:
                os.rename(staging / 'data', root)
            except OSError:
                if read_marker(root) is None:  # not written meanwhile by another process
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    config.dataset_path = str(root)
    if not config.text_encoder_type:
        config.text_encoder_type = str(root / TEXT_ENCODER_DIR)
    return config
