"""J&F of the object query rules (video_inference/choice.py) on long synthetic videos whose objects enter and leave
(datasets/synthetic.py's LongVideoSpec), with a checkpoint trained on the synthetic dataset.

    python tools/compare_object_query_rules.py -c configs/synthetic.yaml -ckpt runs/<run>/checkpoints/best.pth.tar \
        [--videos 40] [--frames 48] [-ws 8] [--json rules.json]

Every video is segmented for each of its expressions (one per object, "the <colour> <shape>") with each rule, and
scored against the drawn masks over all frames with the MeViS J and F (metrics.mevis_expression_scores: an empty
prediction of an empty target scores 1, so frames where the object has left count). Prints a markdown table:
J&F, J and F averaged over the expressions, the mean probability of "referred" of the chosen object query (what
inference.py records and the demo plots per frame) over the frames that show the expression's object and over
those that do not, and the seconds each rule took.
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from datasets.synthetic import LongVideoSpec, generate_long_video  # noqa: E402
from datasets.files import check_output_file  # noqa: E402
from engine.launch import set_up_process  # noqa: E402
from engine.run_config import load_run_config  # noqa: E402
from metrics import mevis_expression_scores, mevis_summary  # noqa: E402
from utils import UsageError, WriteError, error_message, write_json  # noqa: E402
from video_inference.choice import CAUSAL_RULES, RULES  # noqa: E402
from video_inference.segmenter import VideoSegmenter, default_overlap  # noqa: E402
from video_inference.sources import Frame  # noqa: E402


class InMemoryFrames:
    """A generated video as video_inference's sources give one: iterating yields `(Frame, PIL image)`."""

    def __init__(self, frames: np.ndarray, frame_rate: float = 8.0):
        self.items = [(Frame(t, t / frame_rate, f'{t:06d}'), Image.fromarray(frame)) for t, frame in enumerate(frames)]
        self.frames = [frame for frame, _ in self.items]

    def __iter__(self):
        return iter(self.items)


def segment(segmenter: VideoSegmenter, frames: InMemoryFrames, queries, window_size: int, rule: str):
    """Masks [queries, T, H, W] of every frame, and the probability of "referred" [queries, T] of the object query
    chosen for each frame."""
    results = list(segmenter.segment(frames, queries, window_size, rule, num_frames=len(frames.frames)))
    masks = np.stack([np.concatenate([result.masks[q] for result in results]) for q in range(len(queries))])
    probabilities = np.stack([np.concatenate([result.probabilities[q][:, result.object_queries[q]]
                                              for result in results]) for q in range(len(queries))])
    return masks, probabilities


def compare(segmenter: VideoSegmenter, spec: LongVideoSpec, count: int, window_size: int) -> dict:
    scores = {rule: {} for rule in RULES}
    referred = {rule: {True: [], False: []} for rule in RULES}  # probabilities of frames with / without the object
    seconds = dict.fromkeys(RULES, 0.0)
    for index in range(count):
        frames, masks, _, expressions = generate_long_video(spec, index)
        source = InMemoryFrames(frames)
        for rule in RULES:
            started = time.perf_counter()
            predicted, probabilities = segment(segmenter, source, expressions, window_size, rule)
            seconds[rule] += time.perf_counter() - started
            shown = masks.any(axis=(2, 3))  # [objects, T]
            for present in (True, False):
                referred[rule][present] += probabilities[shown == present].tolist()
            scores[rule].update(mevis_expression_scores(
                (f'video{index}', str(k), masks[k], predicted[k]) for k in range(len(expressions))))
    return {rule: {**mevis_summary(scores[rule]), 'expressions': len(scores[rule]), 'seconds': seconds[rule],
                   'referred_probability_present': mean_or_none(referred[rule][True]),
                   'referred_probability_absent': mean_or_none(referred[rule][False]),
                   'window_overlap': default_overlap(rule, window_size), 'causal': rule in CAUSAL_RULES}
            for rule in RULES}


def mean_or_none(values):
    """The mean, or None for no values (videos whose objects are always in view have no absent frame)."""
    return float(np.mean(values)) if values else None


def table(results: dict) -> str:
    def number(value):
        return '-' if value is None else f'{value:.3f}'

    lines = ['| rule | causal | windows overlap by | J&F | J | F | P(referred) present / absent | seconds |',
             '| --- | --- | --- | --- | --- | --- | --- | --- |']
    for rule, result in results.items():
        lines.append(f'| `{rule}` | {"yes" if result["causal"] else "no"} | {result["window_overlap"]} | '
                     f'{100 * result["J&F"]:.1f} | {100 * result["J"]:.1f} | {100 * result["F"]:.1f} | '
                     f'{number(result["referred_probability_present"])} / '
                     f'{number(result["referred_probability_absent"])} | '
                     f'{result["seconds"]:.0f} |')
    return '\n'.join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('-c', '--config_path', default='configs/synthetic.yaml')
    parser.add_argument('-ckpt', '--checkpoint_path', required=True)
    parser.add_argument('-ws', '--window_size', type=int, default=8, help='frames per window (default 8, the '
                                                                           'synthetic config\'s)')
    parser.add_argument('--videos', type=int, default=40, help='long videos to generate (default 40)')
    parser.add_argument('--frames', type=int, default=48, help='frames per video (default 48)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--json', help='write the results there')
    parser.add_argument('--set', dest='overrides', action='append', default=[], metavar='KEY=VALUE')
    args = parser.parse_args(argv)
    try:
        for flag, value, least in (('-ws', args.window_size, 1), ('--videos', args.videos, 1),
                                   ('--frames', args.frames, 2), ('--seed', args.seed, 0)):
            if value < least:
                raise UsageError(f'{flag} must be at least {least}, got {value}')
        if args.frames <= args.window_size:
            raise UsageError(f'--frames ({args.frames}) must exceed -ws ({args.window_size}): the rules differ only '
                             'on videos longer than a window')
        if args.json:
            check_output_file(args.json, 'results file')  # (before the minutes of segmenting)
        config = load_run_config(args.config_path, args.overrides, running_mode='eval',
                                 checkpoint_path=args.checkpoint_path, needs_dataset=False, device='cpu')
        set_up_process('cpu', config.cpu_keep_freed_memory)
        segmenter = VideoSegmenter.from_checkpoint(config, args.checkpoint_path)
        results = compare(segmenter, LongVideoSpec(seed=args.seed, num_frames=args.frames), args.videos,
                          args.window_size)
    except (UsageError, WriteError) as error:
        print(f'error: {error_message(error)}', file=sys.stderr)
        return 2
    print(f'{args.videos} long synthetic videos of {args.frames} frames, windows of {args.window_size}, '
          f'{results["video"]["expressions"]} expressions; checkpoint {args.checkpoint_path}\n')
    print(table(results))
    if args.json:
        try:
            write_json(args.json, results, 'results file', indent=2)
        except WriteError as error:
            print(f'error: {error_message(error)}', file=sys.stderr)
            return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
