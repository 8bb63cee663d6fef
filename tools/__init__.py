"""Command-line tools; the submission helpers here are importable (`from tools.make_submission_zip import ...`)."""
