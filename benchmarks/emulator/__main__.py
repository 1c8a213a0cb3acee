"""``python -m benchmarks.emulator``: serve until SIGTERM or SIGINT, after printing ``READY <url>``."""

from benchmarks.emulator import main

main()
