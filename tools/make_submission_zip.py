"""Write the Refer-YouTube-VOS submission zip from a predictions folder, or check a zip before uploading it.

    python tools/make_submission_zip.py write PREDICTIONS_DIR submission.zip [--dataset-root ROOT]
    python tools/make_submission_zip.py check submission.zip --dataset-root ROOT
    python tools/make_submission_zip.py check submission.zip --meta META_JSON [--test-meta TEST_META_JSON]

The competition server expects `Annotations/<video>/<exp_id>/<frame>.png`, one single-channel 0/255 mask per
frame listed in `meta_expressions/valid/meta_expressions.json`, at the size of the frame. The valid meta file
also lists the test videos; the server's valid split (202 videos) leaves out every video of
`meta_expressions/test/meta_expressions.json`, so give that file (or a dataset root holding it) to check
against the same split. `write` followed by a meta file or a dataset root checks the zip it wrote.
"""
import argparse
import sys
from pathlib import Path

if __package__ in (None, ''):
    # Run as a script (`python tools/make_submission_zip.py`): make the repository root importable.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from datasets.files import check_output_file  # noqa: E402
from datasets.submission import check_submission_zip, excluded_test_videos, write_submission_zip  # noqa: E402
from utils import WriteError, error_message  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest='command', required=True)
    write = commands.add_parser('write', help='zip a predictions folder (and check it when a meta file or root is given)')
    write.add_argument('predictions_dir', help='folder holding Annotations/<video>/<exp_id>/<frame>.png (or that folder)')
    write.add_argument('zip_path', help='the zip to write, e.g. submission_epoch_0.zip')
    check = commands.add_parser('check', help='check that a zip has the layout the server expects')
    check.add_argument('zip_path')
    for sub in (write, check):
        sub.add_argument('--dataset-root', help='Refer-YouTube-VOS root: meta files under meta_expressions/, '
                                                'frame sizes from valid/JPEGImages/')
        sub.add_argument('--meta', help='valid meta_expressions.json (default: <dataset-root>/meta_expressions/valid/...)')
        sub.add_argument('--test-meta', help='test meta_expressions.json whose videos are left out '
                                             '(default: <dataset-root>/meta_expressions/test/... when present)')
        sub.add_argument('--no-progress', action='store_true', help='no progress bar')
    args = parser.parse_args(argv)
    try:
        return run(args, parser)
    except (OSError, ValueError, WriteError) as error:  # missing or unreadable inputs, an output it cannot write
        print(f'error: {error_message(error)}', file=sys.stderr)
        return 2


def run(args, parser) -> int:
    if args.command == 'write':
        zip_path = write_submission_zip(args.predictions_dir, check_output_file(args.zip_path, 'submission zip'))
        print(f'wrote {zip_path}')
        if args.meta is None and args.dataset_root is None:
            return 0
    meta = args.meta
    if meta is None:
        if args.dataset_root is None:
            parser.error('check needs --meta or --dataset-root')
        meta = Path(args.dataset_root) / 'meta_expressions' / 'valid' / 'meta_expressions.json'
    test_videos = excluded_test_videos(args.test_meta, args.dataset_root)
    if not test_videos:
        print('note: no test meta file given, so every video of the valid meta file is expected; the server\'s '
              'valid split leaves out the test videos (pass --test-meta)')
    result = check_submission_zip(args.zip_path, meta, args.dataset_root, test_videos,
                                  show_progress=not args.no_progress)
    print(result.summary())
    return 0 if result.ok else 1


if __name__ == '__main__':
    sys.exit(main())
