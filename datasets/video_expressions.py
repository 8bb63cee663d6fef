"""What the video-expression benchmarks share (Refer-YouTube-VOS, MeViS and, for evaluation, Ref-DAVIS17): their
expressions file (`read_meta_expressions`), training windows (`windows_of`), frames and masks on disk, the
whole-video evaluation item and the base class of their datasets, the post-processing of an evaluation batch per
expression (`predicted_masks`) and the one writer of predicted masks (`write_mask_pngs`).
"""
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from models.postprocessing import ReferYoutubeVOSPostProcess, referred_query_outputs
from models.windows import window_layout
from utils import safe_name, writing
from .files import DuplicateKeyError, read_json
from .pictures import save_png
from .transforms import VideoTransforms

META_LAYOUT = ('{"videos": {<video>: {"expressions": {<exp_id>: {"exp": <text>, ...}}, "frames": [<frame>, ...]}}}, '
               'normally at <root>/meta_expressions/<split>/meta_expressions.json')


def read_meta_expressions(path) -> Dict[str, dict]:
    """The `videos` mapping of a meta_expressions.json. An error names the file and the video (and expression)
    when it does not have that form: an expression without an "exp" text, frame names that are not strings, a video
    or expression listed twice, or a video id, expression id or frame name (they become folder and file names)
    that is not a plain name."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'meta expressions file not found: {path} (expected a JSON file {META_LAYOUT})')
    try:
        meta = read_json(path, META_LAYOUT)
    except DuplicateKeyError as error:
        raise ValueError(_repeated_id_message(error)) from None
    videos = meta.get('videos') if isinstance(meta, dict) else None
    if not isinstance(videos, dict):
        raise ValueError(f'{path}: no "videos" mapping at the top level (expected {META_LAYOUT})')
    for video_id, video in videos.items():
        if not isinstance(video, dict) or not isinstance(video.get('expressions'), dict) \
                or not isinstance(video.get('frames'), list) or not video['frames']:
            raise ValueError(f'{path}: video {video_id!r} needs an "expressions" mapping and a non-empty "frames" '
                             f'list (expected {META_LAYOUT})')
        safe_name(video_id, 'video id', path)
        for frame in video['frames']:
            if not isinstance(frame, str):
                raise ValueError(f'{path}: video {video_id}: frame {frame!r} is a {type(frame).__name__}; expected '
                                 'frame names as strings, e.g. "00000"')
            safe_name(frame, f'frame name of video {video_id}', path)
        for exp_id, expression in video['expressions'].items():
            safe_name(exp_id, f'expression id of video {video_id}', path)
            text = expression.get('exp') if isinstance(expression, dict) else None
            if text is None:
                raise ValueError(f'{path}: expression {exp_id} of video {video_id} has no "exp" (expected '
                                 '{"exp": <text>, ...})')
            if not isinstance(text, str):
                raise ValueError(f'{path}: expression {exp_id} of video {video_id}: "exp" is {text!r}; expected a '
                                 'text')
    return videos


def _repeated_id_message(error: DuplicateKeyError) -> str:
    """A repeated key of a meta file, said in its terms where it is a video or an expression id."""
    if error.location == ['videos']:
        return f'{error.path}: video {error.key} is listed twice (the second entry would replace the first)'
    if len(error.location) == 3 and error.location[0] == 'videos' and error.location[2] == 'expressions':
        return (f'{error.path}: expression {error.key} of video {error.location[1]} is listed twice (the second '
                'would replace the first)')
    return str(error)


def windows_of(frames: List[str], window_size: int) -> List[List[str]]:
    """Non-overlapping windows (`models.windows.window_layout`: the last one taken from the end); a video
    shorter than a window is padded with its last frame."""
    windows = [frames[w.start:w.end] for w in window_layout(len(frames), window_size)]
    if len(frames) < window_size:
        windows[0] = windows[0] + [frames[-1]] * (window_size - len(frames))
    return windows


def read_mask(path: Path) -> np.ndarray:
    """`[H, W]` object ids of a palette (or grayscale) annotation PNG."""
    try:
        image = Image.open(path)
        image.load()
    except OSError as e:
        raise RuntimeError(f'cannot read the mask {path}: {e}') from e
    if image.mode not in ('P', 'L'):
        raise ValueError(f'{path}: expected a palette PNG whose pixel values are object ids, got mode {image.mode}')
    return np.array(image)


def read_frame(path: Path) -> Image.Image:
    try:
        return Image.open(path).convert('RGB')
    except OSError as e:
        raise RuntimeError(f'cannot read the frame {path}: {e}') from e


def whole_video_item(frames_dir: Path, video_id: str, frame_names: List[str], expressions, transforms):
    """An evaluation item: a whole video with all its expressions `[(exp_id, text query, {more metadata}), ...]`,
    as `(frames [T, 3, H, W], [[None] * T per expression], [text queries], [metadata per expression])`; the
    metadata holds what the post-processing and the prediction files need."""
    frames = [read_frame(frames_dir / video_id / f'{frame}.jpg') for frame in frame_names]
    original_size = (frames[0].height, frames[0].width)
    video, _, _ = transforms(frames, [None] * len(frames), '')
    metadata = [{'video_id': video_id, 'exp_id': exp_id, **more, 'frame_indices': frame_names,
                 'original_frame_size': original_size, 'resized_frame_size': tuple(video.shape[-2:])}
                for exp_id, _, more in expressions]
    return video, [[None] * len(frames) for _ in expressions], [text for _, text, _ in expressions], metadata


class VideoExpressionsDataset(Dataset):
    """Videos with referring expressions (Refer-YouTube-VOS, MeViS): training samples are windows of one
    expression, `(video, [frames], exp_id, ...)`, made into items by `_train_item`; evaluation samples are whole
    videos with all their expressions, `(video, [frames], [(exp_id, text query)])`."""
    image_set: str
    samples: list
    frames_dir: Path
    transforms: VideoTransforms

    def __len__(self):
        return len(self.samples)

    def describe(self, idx) -> str:
        """Which sample item `idx` is, for error messages."""
        if self.image_set == 'train':
            video_id, window, exp_id = self.samples[idx][:3]
            return f'video {video_id}, expression {exp_id}, frames {window[0]}-{window[-1]}'
        return f'video {self.samples[idx][0]}'

    def __getitem__(self, idx):
        if self.image_set == 'train':
            return self._train_item(*self.samples[idx])
        video_id, frame_names, expressions = self.samples[idx]
        return whole_video_item(self.frames_dir, video_id, frame_names,
                                [(exp_id, text, {}) for exp_id, text in expressions], self.transforms)

    def _train_item(self, *sample):
        raise NotImplementedError


def predicted_masks(batch, outputs, postprocessor: ReferYoutubeVOSPostProcess) -> Iterator[Tuple[dict, np.ndarray]]:
    """`(metadata, masks [T, H0, W0] uint8 0/255)` of every expression of an evaluation batch, at the frames'
    original size, each from its own frames (a shorter video of the batch was padded in time).

    The object query is chosen on the mean over the expression's own frames. The original averaged over the
    batch's padded length, which differs only with `-ebs` above 1 and videos of different lengths (the paper
    evaluated with 1)."""
    padded_size = batch['samples'].tensors.shape[-2:]
    for q, metadata in enumerate(batch['videos_metadata']):
        num_frames = len(metadata['frame_indices'])
        (prediction,) = postprocessor(referred_query_outputs(outputs, q, num_frames), [metadata], padded_size)
        yield metadata, prediction['pred_masks'][:, 0].numpy() * 255


def write_mask_pngs(folder: Path, frame_names: Sequence[str], masks, what: str = 'predicted mask',
                    palette: Optional[bytes] = None) -> Path:
    """`<folder>/<frame>.png` for each frame: `masks` (`[T, H, W]` uint8) as single-channel PNGs, or as palette
    PNGs with `palette` (label maps), each whole or not at all (`pictures.save_png`: the files written before stay
    whole, none is left half-written, and the WriteError names the one that failed). Returns `folder`."""
    folder = Path(folder)
    with writing(folder, f'{what} folder'):
        folder.mkdir(parents=True, exist_ok=True)
    for frame_name, mask in zip(frame_names, masks):
        # (the dataset checked these names; an evaluator may be handed other metadata)
        path = folder / f'{safe_name(frame_name, "frame name", "the sample metadata")}.png'
        image = Image.fromarray(mask)
        if palette is not None:
            image.putpalette(palette)  # makes it a palette ('P') image
        save_png(path, image, what)
    return folder


def write_expression_masks(out_dir: Path, video_id: str, exp_id: str, frame_names: Sequence[str], masks) -> Path:
    """`<out_dir>/<video>/<exp_id>/<frame>.png`, single-channel 0/255 PNGs (`write_mask_pngs`): the layout of the
    Refer-YouTube-VOS (under `Annotations/`) and MeViS servers. Returns the expression's folder."""
    folder = (Path(out_dir) / safe_name(str(video_id), 'video id', 'the sample metadata')
              / safe_name(str(exp_id), 'expression id', 'the sample metadata'))
    return write_mask_pngs(folder, frame_names, masks)
