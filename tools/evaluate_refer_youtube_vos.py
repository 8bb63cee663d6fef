"""The former name of tools/evaluate_jf.py (which scores Refer-YouTube-VOS, MeViS and Ref-DAVIS17), kept for one
release: it says so on stderr and runs tools/evaluate_jf.py with the same arguments."""
import sys
from pathlib import Path

if __package__ in (None, ''):
    # Run as a script: make the repository root importable.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tools import evaluate_jf  # noqa: E402


def main(argv=None) -> int:
    print('note: tools/evaluate_refer_youtube_vos.py is now tools/evaluate_jf.py; the old name goes in the next '
          'release', file=sys.stderr)
    return evaluate_jf.main(argv)


if __name__ == '__main__':
    sys.exit(main())
