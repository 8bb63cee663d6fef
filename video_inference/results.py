"""A text query's results folder, written window by window as the segmentation goes: `<nn>_<query>/` with
`masks/<frame>.png` (0/255, at the input's size), `overlay.mp4` (the mask in colour, the query as a caption),
`preview.png`, `scores.json` (per-frame records, the object queries chosen, the windows) and
`object_query_probabilities.npy` ([frames, object queries] probability of "referred"). The overlay keeps the
input's sound (video_inference/audio.py).

Nothing of a frame is kept once it is written: the per-frame records and probabilities go to temporary files in the
folder and are put together when the query is closed, so the memory stays flat for a video of any length. Each mask
PNG is written whole or not at all (a full disk leaves no half-written mask).
"""
import json
import re
import shutil
from pathlib import Path
from typing import List, Optional

import numpy as np
from PIL import Image

from datasets.pictures import draw_overlay, save_png
from utils import atomic_write, open_to_append, writing
from video_inference.audio import AudioTrack
from video_inference.choice import RunningMean
from video_inference.overlays import OVERLAY_COLOURS, OverlayVideoWriter
from video_inference.segmenter import WindowResult

# scores.json's frames and the probabilities, as they come (parts of the outputs, put together by `close`)
RECORDS, PROBABILITIES = '.frames.jsonl.partial', '.probabilities.f32.partial'


def query_folder_name(index: int, query: str) -> str:
    """The folder of a text query's results: `<nn>_<the-query-s-words>` (a safe name whatever the query)."""
    slug = re.sub(r'[^a-z0-9]+', '-', query.lower()).strip('-')[:60].rstrip('-')
    return f'{index:02d}_{slug or "query"}'


def write_mask_png(path, mask: np.ndarray):
    """A binary mask `[H, W]` (0/1 or bool) as a single-channel 0/255 PNG, replacing `path` whole (a WriteError
    naming it when it cannot be written)."""
    save_png(path, Image.fromarray(mask.astype(np.uint8) * 255), 'mask')


def write_npy_from_raw(path: Path, raw: Path, columns: int, dtype=np.float32):
    """`path` as a .npy of shape [rows, columns] whose data are the raw bytes of `raw`, copied, not loaded."""
    rows = raw.stat().st_size // (columns * np.dtype(dtype).itemsize)

    def write(f):
        np.lib.format.write_array_header_1_0(f, {'descr': np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                                 'fortran_order': False, 'shape': (rows, columns)})
        with open(raw, 'rb') as source:
            shutil.copyfileobj(source, f)
    atomic_write(path, write)


class QueryResults:
    """The results folder of one text query (`index`, `query`) under `out_dir`. `add` writes a window's frames;
    `close` writes scores.json and the probabilities; `abort` removes what a failed run left half-done (the
    overlay video and the temporary files). `preview_position`: the frame whose overlay is preview.png (None: the
    first output frame of each window, for a live source whose length is unknown). `fragmented`: an overlay video
    that can be played while it is being written and after a crash (a live source)."""

    def __init__(self, out_dir: Path, index: int, query: str, frame_rate: float,
                 preview_position: Optional[int] = None, fragmented: bool = False,
                 audio: Optional[AudioTrack] = None):
        self.index, self.query, self.frame_rate = index, query, frame_rate
        self.folder = Path(out_dir) / query_folder_name(index, query)
        self.preview_position, self.fragmented = preview_position, fragmented
        self.colour = OVERLAY_COLOURS[index % len(OVERLAY_COLOURS)]
        with writing(self.folder, 'results folder'):
            (self.folder / 'masks').mkdir(parents=True, exist_ok=True)
            for stale in (self.folder / 'masks').glob('*.png'):  # from an earlier run on other frames
                stale.unlink()
            for name in (RECORDS, PROBABILITIES):
                (self.folder / name).unlink(missing_ok=True)  # (what an interrupted run left, or a link)
            self.records = open_to_append(self.folder / RECORDS)
            self.probabilities = open_to_append(self.folder / PROBABILITIES, binary=True)
        self.video = OverlayVideoWriter(self.folder / 'overlay.mp4', frame_rate, audio, container_options={
            'movflags': 'frag_keyframe+empty_moov'} if fragmented else None)
        self.windows: List[dict] = []  # (a few numbers per window)
        self.scores = RunningMean()  # each object query's mean probability over the frames
        self.count = 0

    def add(self, result: WindowResult, q: int):
        masks, probabilities, slot = result.masks[q], result.probabilities[q], result.object_queries[q]
        self.windows.append({**result.window.to_dict(), 'object_query': slot})
        self.scores.add(probabilities)
        for offset, ((frame, image), mask) in enumerate(zip(result.frames, masks)):
            mask_path = Path('masks') / f'{frame.name}.png'  # (a file's stem or a frame number: one name)
            write_mask_png(self.folder / mask_path, mask)
            overlay = draw_overlay(image, mask, self.query, self.colour)  # [H0, W0, 3] uint8
            self.video.write(overlay)
            position = self.count
            if position == self.preview_position or (self.preview_position is None and offset == 0):
                save_png(self.folder / 'preview.png', Image.fromarray(overlay), 'preview')
            with writing(self.folder / RECORDS, 'results folder'):
                self.records.write(json.dumps({
                    'frame': position, 'source_index': frame.source_index, 'time': round(frame.time, 6),
                    'mask': str(mask_path), 'mask_pixels': int(mask.sum()), 'window': result.index,
                    'object_query': slot, 'referred_probability': float(probabilities[offset, slot])}) + '\n')
                self.probabilities.write(probabilities[offset].astype(np.float32).tobytes())
            self.count += 1

    def close(self, metadata: dict) -> Path:
        """scores.json and object_query_probabilities.npy; the folder."""
        self._close_files(audio=True)
        scores = self.scores.mean()
        slots = {window['object_query'] for window in self.windows}
        single = slots.pop() if len(slots) == 1 else None
        head = {'query': self.query, **metadata, 'num_frames': self.count, 'frame_rate': self.frame_rate,
                'object_query': single,  # (None when the object query changes between windows)
                'object_query_score': None if single is None else float(scores[single]),
                'object_query_scores': [round(float(s), 6) for s in scores],
                'windows': self.windows}
        records_path = self.folder / RECORDS

        def write(f):
            text = json.dumps(head, indent=1)
            f.write(text[:-2] + ',\n "frames": [\n')  # (head without its closing brace, then the frames)
            with open(records_path) as records:
                for number, line in enumerate(records):
                    f.write(('' if number == 0 else ',\n') + '  ' + line.rstrip('\n'))
            f.write('\n ]\n}')
        with writing(self.folder / 'scores.json', 'scores file'):
            atomic_write(self.folder / 'scores.json', write, mode='w')
            write_npy_from_raw(self.folder / 'object_query_probabilities.npy', self.folder / PROBABILITIES,
                               len(scores))
        records_path.unlink()
        (self.folder / PROBABILITIES).unlink()
        return self.folder

    def _close_files(self, audio: bool = False):
        self.records.close()
        self.probabilities.close()
        self.video.close(with_audio=audio)

    def abort(self):
        """After a failure: the overlay video and the temporary files go (the masks written so far stay whole)."""
        try:
            self._close_files()
        except Exception:  # (the failure that got us here is what gets reported)
            pass
        for name in (RECORDS, PROBABILITIES) + (() if self.fragmented else ('overlay.mp4',)):
            (self.folder / name).unlink(missing_ok=True)
