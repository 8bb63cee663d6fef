"""One video (a file, a frames folder or a live source) segmented into a results folder, as inference.py writes it
for one video and for each video of a collection:

    OUT/<nn>_<query>/   one folder per text query (video_inference/results.py)
    OUT/summary.json    what was segmented: frames, windows, the object query rule, the time taken and, per
                        window, the latency from its last frame read to its masks written; written last, so a
                        folder without it is incomplete
"""
import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence

from utils import UsageError, write_json, writing
from video_inference.audio import AudioTrack
from video_inference.choice import FILE_RULE
from video_inference.results import QueryResults
from video_inference.segmenter import VideoSegmenter, default_overlap
from video_inference.sources import StreamFrames, open_input

SUMMARY = 'summary.json'


@dataclass
class SegmentationOptions:
    """How to segment: the window, the object query rule and the part of the video."""
    window_size: int = 12
    rule: str = FILE_RULE
    overlap: Optional[int] = None  # None: the rule's default (segmenter.default_overlap)
    object_query: Optional[int] = None
    second_pass: str = 'network'
    start: float = 0.0
    end: Optional[float] = None
    fps: Optional[float] = None
    folder_fps: float = 30.0
    online: bool = False  # a live source: read as it comes, masks written window by window
    input_format: Optional[str] = None
    input_options: dict = field(default_factory=dict)
    stall_timeout: float = 10.0

    @property
    def window_overlap(self) -> int:
        return default_overlap(self.rule, self.window_size) if self.overlap is None else self.overlap


def open_source(video: str, options: SegmentationOptions):
    if options.online:
        return StreamFrames(video, options.start, options.end, options.fps, options.input_format,
                            options.input_options, options.stall_timeout)
    return open_input(video, options.start, options.end, options.fps, options.folder_fps)


def rule_description(options: SegmentationOptions) -> str:
    if options.object_query is not None:
        return f'object query {options.object_query}, given by --object-query'
    return {'video': 'one object query for the whole video: highest probability of "referred" averaged over all '
                     'frames',
            'window': 'per window: highest probability of "referred" averaged over the window',
            'linked': 'per window, linked across windows by mask overlap on shared frames, chosen over the whole '
                      'video',
            'causal': 'per window as frames arrive: probability of "referred" plus mask overlap with the previous '
                      'window\'s choice'}[options.rule]


def segment_into_folder(segmenter: VideoSegmenter, video: str, queries: Sequence[str], out_dir: Path,
                        options: SegmentationOptions, record: Optional[dict] = None, progress_bar: bool = True,
                        frames=None) -> dict:
    """Segment `video` for every query into `out_dir` (created); returns the summary it writes. `record`: more
    entries for scores.json and the summary (e.g. the checkpoint). `frames`: the video opened already
    (`open_source`). A source that stalls or fails part-way gives the results of the frames before, and the summary
    says why it stopped (`stop_reason`)."""
    started = time.monotonic()
    frames = frames if frames is not None else open_source(video, options)
    out_dir = Path(out_dir)
    with writing(out_dir, 'output folder'):
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / SUMMARY).unlink(missing_ok=True)  # (the folder is complete again only once this run is done)
    remove_stale_files(out_dir)
    num_frames = None if options.online else len(frames.frames)
    audio = None if options.online else AudioTrack.of(video, options.start, options.end)
    metadata = {'input': str(video), **(record or {}), 'window_size': options.window_size,
                'window_overlap': options.window_overlap, 'object_query_rule': options.rule,
                'object_query_rule_description': rule_description(options)}
    writers: List[QueryResults] = []
    latencies: List[float] = []
    try:
        for result in segmenter.segment(frames, queries, options.window_size, options.rule, options.window_overlap,
                                        options.object_query, options.second_pass, scratch_dir=out_dir,
                                        num_frames=num_frames, progress_bar=progress_bar):
            if not writers:
                writers = [QueryResults(out_dir, q, query, frames.frame_rate, audio=audio, fragmented=options.online,
                                        preview_position=None if num_frames is None else num_frames // 2)
                           for q, query in enumerate(queries)]
            for q, writer in enumerate(writers):
                writer.add(result, q)
            latencies.append(time.monotonic() - result.frames_in)
        if not writers:
            raise UsageError(f'{video}: the source ended before its first frame' +
                             (f' ({frames.stop_reason})' if getattr(frames, 'stop_reason', None) else ''))
        folders = [writer.close(metadata) for writer in writers]
    except BaseException:
        for writer in writers:
            writer.abort()
        raise
    summary = {**metadata, 'queries': list(queries), 'folders': [folder.name for folder in folders],
               'num_frames': writers[0].count, 'windows': len(latencies),
               'frame_size': list(frames.size) if frames.size else None, 'frame_rate': frames.frame_rate,
               'seconds': round(time.monotonic() - started, 3),
               'latency_seconds': {'mean': round(sum(latencies) / len(latencies), 4), 'max': round(max(latencies), 4),
                                   'per_window': [round(value, 4) for value in latencies]},
               'stop_reason': getattr(frames, 'stop_reason', None), 'options': asdict(options)}
    write_json(out_dir / SUMMARY, summary, 'summary', indent=1)
    return summary


def remove_stale_files(out_dir: Path):
    """What a run killed while writing into `out_dir` left: scratch folders and temporary files (the caller holds
    the output folder's lock, so no live run is writing them)."""
    for path in sorted(out_dir.glob('.scratch-*')):
        if path.is_dir() and not path.is_symlink():
            size = sum(p.stat().st_size for p in path.rglob('*') if p.is_file())
            shutil.rmtree(path)
            print(f'note: removed {path} ({size / 2 ** 20:.1f} MiB), the scratch folder of an interrupted run',
                  file=sys.stderr)
    for pattern in ('.*.tmp', '.*.partial'):
        for path in sorted(out_dir.rglob(pattern)):
            if path.is_file() and not path.is_symlink():
                path.unlink()


def read_summary(out_dir: Path) -> Optional[dict]:
    """The summary of a complete results folder, None for an incomplete (or unreadable) one."""
    try:
        return json.loads((Path(out_dir) / SUMMARY).read_text(encoding='utf-8'))
    except (OSError, ValueError):
        return None
