"""A collection of videos segmented by every process of a run (one per GPU, or CPU processes; spawned by
inference.py or started by torchrun on one node or many), as inference.py --videos LIST does.

The list is a JSON-lines file, a video a line: `{"video": "path/or/url", "queries": ["the man in black", ...]}`,
with an optional `"name"` for its results folder (default: the file's name without its extension). Process r of W
takes the videos r, r + W, r + 2W, ... of the list, so each is segmented once; each video's results go into
`OUT/<name>/`, laid out as a one-video run lays them out (video_inference/one_video.py), whose `summary.json`,
written last, marks it complete: a video whose folder is complete for the same queries and settings is skipped, so
a run that was killed resumes with the rest. A video that cannot be segmented is reported in one line and skipped.
`OUT/summary.json` gives every video's status.
"""
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import List, Optional, Sequence

from tqdm import tqdm

from engine.launch import Process
from utils import UsageError, WriteError, all_gather_lists, error_message, safe_name, write_json
from video_inference.one_video import SegmentationOptions, read_summary, segment_into_folder
from video_inference.segmenter import VideoSegmenter

SUMMARY = 'summary.json'
LIST_FORM = 'one JSON object a line: {"video": "path/or/url", "queries": ["a text query", ...], "name": optional}'


@dataclass
class VideoEntry:
    line: int
    video: str
    queries: List[str]
    name: str


def read_video_list(path) -> List[VideoEntry]:
    """The entries of a video list, checked: a line that is not such an object, a video without queries, or a
    results folder name given twice is a UsageError naming the file and the line."""
    path = Path(path)
    try:
        lines = path.read_text(encoding='utf-8').splitlines()
    except UnicodeDecodeError as error:
        raise UsageError(f'--videos {path}: not UTF-8 text ({error.reason} at byte {error.start}); expected '
                         f'{LIST_FORM}') from error
    except OSError as error:
        raise UsageError(f'--videos {path}: cannot read it ({error_message(error)})') from error
    entries, names = [], {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f'--videos {path}, line {number}'
        try:
            item = json.loads(line, object_pairs_hook=_no_duplicate_keys)
        except ValueError as error:
            raise UsageError(f'{where}: {error_message(error)}; expected {LIST_FORM}') from error
        if not isinstance(item, dict) or not isinstance(item.get('video'), str) or not item['video'].strip():
            raise UsageError(f'{where}: expected {LIST_FORM}')
        queries = item.get('queries')
        if not isinstance(queries, list) or not queries or not all(isinstance(q, str) and q.strip() for q in queries):
            raise UsageError(f'{where}: "queries" must be a non-empty list of non-empty texts, got {queries!r}')
        unknown = sorted(set(item) - {'video', 'queries', 'name'})
        if unknown:
            raise UsageError(f'{where}: unknown key(s) {", ".join(unknown)}; expected {LIST_FORM}')
        name = item.get('name', Path(item['video'].rstrip('/')).stem or 'video')
        try:
            name = safe_name(name, 'results folder name', where)
        except ValueError as error:
            raise UsageError(f'{error}; give another with "name"') from error
        if name in names:
            raise UsageError(f'{where}: the results folder {name!r} is also that of line {names[name]}; give one of '
                             'them another "name"')
        names[name] = number
        entries.append(VideoEntry(number, item['video'], [q.strip() for q in queries], name))
    if not entries:
        raise UsageError(f'--videos {path} lists no video; expected {LIST_FORM}')
    return entries


def _no_duplicate_keys(pairs):
    keys = [key for key, _ in pairs]
    repeated = sorted({key for key in keys if keys.count(key) > 1})
    if repeated:
        raise ValueError(f'the key {repeated[0]!r} appears twice')
    return dict(pairs)


def _complete(summary: Optional[dict], entry: VideoEntry, options: SegmentationOptions, record: dict) -> bool:
    """The folder holds the results of this video for these queries and settings."""
    return summary is not None and summary.get('queries') == entry.queries and \
        summary.get('options') == asdict(options) and all(summary.get(k) == v for k, v in record.items())


def segment_collection(process: Process, segmenter: VideoSegmenter, entries: Sequence[VideoEntry], out_dir: Path,
                       options: SegmentationOptions, record: dict) -> Optional[dict]:
    """This process's share of `entries`; returns the collection's summary on rank 0 (None elsewhere) once every
    process is done. A stop signal ends each process after its current video."""
    share = list(entries)[process.rank::process.world_size]
    statuses = []
    for entry in tqdm(share, desc='videos', unit='video', disable=not process.is_main, dynamic_ncols=True):
        folder = Path(out_dir) / entry.name
        status = {'line': entry.line, 'video': entry.video, 'folder': entry.name, 'rank': process.rank}
        if process.stop.signum is not None:
            statuses.append({**status, 'status': 'not started (stopped by a signal)'})
            continue
        if _complete(read_summary(folder), entry, options, record):
            statuses.append({**status, 'status': 'complete (skipped)'})
            continue
        try:
            summary = segment_into_folder(segmenter, entry.video, entry.queries, folder, options, record,
                                          progress_bar=process.is_main)
        except (UsageError, WriteError, OSError, ValueError, RuntimeError) as error:  # (the next video may be fine)
            message = error_message(error) if isinstance(error, (UsageError, WriteError)) else \
                f'{type(error).__name__}: {error_message(error)}'
            print(f'error: {entry.video} (line {entry.line}): {message}; skipped', file=sys.stderr, flush=True)
            statuses.append({**status, 'status': 'failed', 'error': message})
            continue
        statuses.append({**status, 'status': 'segmented', 'frames': summary['num_frames'],
                         'seconds': summary['seconds'], 'stop_reason': summary['stop_reason']})
    statuses = sorted(all_gather_lists(statuses), key=lambda s: s['line'])
    if not process.is_main:
        return None
    counts = {}
    for status in statuses:
        key = status['status'].split(' ')[0]
        counts[key] = counts.get(key, 0) + 1
    summary = {**record, 'videos': statuses, 'counts': counts, 'processes': process.world_size,
               'options': asdict(options)}
    write_json(Path(out_dir) / SUMMARY, summary, 'summary', indent=1)
    return summary
