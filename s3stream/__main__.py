"""``python -m s3stream``."""

from s3stream.cli import main

main()
