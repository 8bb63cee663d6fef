"""Write the synthetic referring-video dataset (datasets/synthetic.py) in the A2D-Sentences layout.

    python tools/make_synthetic_dataset.py OUT_DIR [--seed 0] [--train-videos 600] [--test-videos 60]
    python tools/make_synthetic_dataset.py OUT_DIR --fixed-query "an object"     # the control without text
    python tools/make_synthetic_dataset.py OUT_DIR --crossing-rate 0 --absent-expression-rate 0   # no "when"
    python tools/make_synthetic_dataset.py OUT_DIR --long-videos 20 [--long-frames 48]

`python main.py -rm train -c configs/synthetic.yaml --cpu` generates the default dataset by itself; this tool
writes other variants, to use with `--set dataset_path=OUT_DIR` (the text encoder is taken from
OUT_DIR/text_encoder). `--long-videos N` writes instead N test videos longer than a window, whose objects enter and
leave (datasets/synthetic.py's LongVideoSpec): OUT_DIR/videos/*.mp4, the list OUT_DIR/videos.jsonl that
`inference.py --videos` takes, and the ground truth OUT_DIR/masks/<video>/<object>/<frame>.png.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from datasets.synthetic import LongVideoSpec, SyntheticSpec, write_long_videos, write_synthetic_dataset  # noqa: E402
from utils import UsageError, WriteError, check_directory_path, error_message  # noqa: E402


def check_args(args):
    """Values argparse cannot check by itself, reported like the other usage errors: in one line."""
    for flag, count in (('--train-videos', args.train_videos), ('--test-videos', args.test_videos),
                        ('--long-frames', args.long_frames)):
        if count < 1:
            raise UsageError(f'{flag} must be at least 1, got {count}')
    if args.long_videos is not None and args.long_videos < 1:
        raise UsageError(f'--long-videos must be at least 1, got {args.long_videos}')
    if args.seed < 0:
        raise UsageError(f'--seed must be 0 or more, got {args.seed}')
    for flag, rate in (('--crossing-rate', args.crossing_rate),
                       ('--absent-expression-rate', args.absent_expression_rate)):
        if not 0 <= rate <= 1:
            raise UsageError(f'{flag} must lie in 0..1, got {rate}')
    check_directory_path(args.output, 'output directory')
    if Path(args.output).exists():
        raise UsageError(f'output directory {args.output} exists; give a new directory')


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('output', help='directory to create (must not exist)')
    defaults = SyntheticSpec()
    parser.add_argument('--seed', type=int, default=defaults.seed)
    parser.add_argument('--train-videos', type=int, default=defaults.num_train_videos)
    parser.add_argument('--test-videos', type=int, default=defaults.num_test_videos)
    parser.add_argument('--fixed-query', default='',
                        help='replace every expression by this sentence (a control: the text no longer tells which '
                             'object is meant)')
    parser.add_argument('--crossing-rate', type=float, default=defaults.crossing_rate,
                        help='share of the videos in which one object enters or leaves the frame between the '
                             'annotated frames (default %(default)s)')
    parser.add_argument('--absent-expression-rate', type=float, default=defaults.absent_expression_rate,
                        help='share of the videos with one more expression naming an object they do not show '
                             '(default %(default)s)')
    parser.add_argument('--long-videos', type=int, metavar='N',
                        help='write N long test videos (objects entering and leaving) instead of the dataset')
    parser.add_argument('--long-frames', type=int, default=LongVideoSpec().num_frames,
                        help='frames per long video (default %(default)s)')
    args = parser.parse_args(argv)
    spec = SyntheticSpec(seed=args.seed, num_train_videos=args.train_videos, num_test_videos=args.test_videos,
                         fixed_query=args.fixed_query, crossing_rate=args.crossing_rate,
                         absent_expression_rate=args.absent_expression_rate)
    try:
        check_args(args)
        if args.long_videos is not None:
            root = write_long_videos(args.output, LongVideoSpec(seed=args.seed, num_frames=args.long_frames),
                                     args.long_videos)
            print(f'wrote {root}; segment them with: python inference.py -c configs/synthetic.yaml -ckpt CHECKPOINT '
                  f'--videos {root / "videos.jsonl"} -o OUT --cpu')
            return 0
        root = write_synthetic_dataset(args.output, spec)
    except (UsageError, WriteError, OSError) as error:
        print(f'error: {error_message(error)}', file=sys.stderr)
        return 2
    print(f'wrote {root}; train with: python main.py -rm train -c configs/synthetic.yaml --cpu '
          f'--set dataset_path={root}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
