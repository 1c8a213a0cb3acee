"""``python -m s3stream.emulator``: serve until SIGTERM or SIGINT, after printing ``READY <url>``."""

from s3stream.emulator import main

main()
