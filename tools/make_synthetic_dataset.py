"""Write the synthetic referring-video dataset (datasets/synthetic.py) in the A2D-Sentences layout.

    python tools/make_synthetic_dataset.py OUT_DIR [--seed 0] [--train-videos 600] [--test-videos 60]
    python tools/make_synthetic_dataset.py OUT_DIR --fixed-query "an object"     # the control without text

`python main.py -rm train -c configs/synthetic.yaml --cpu` generates the default dataset by itself; this tool
writes other variants, to use with `--set dataset_path=OUT_DIR` (the text encoder is taken from
OUT_DIR/text_encoder).
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from datasets.synthetic import SyntheticSpec, write_synthetic_dataset  # noqa: E402


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
    args = parser.parse_args(argv)
    if Path(args.output).exists():
        parser.error(f'{args.output} exists; give a new directory')
    spec = SyntheticSpec(seed=args.seed, num_train_videos=args.train_videos, num_test_videos=args.test_videos,
                         fixed_query=args.fixed_query)
    root = write_synthetic_dataset(args.output, spec)
    print(f'wrote {root}; train with: python main.py -rm train -c configs/synthetic.yaml --cpu '
          f'--set dataset_path={root}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
