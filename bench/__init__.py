"""samplerbench's harness: sweep cells, run them, store rows, report and check regressions."""

INTERRUPTED = "interrupted: finished cells are saved; run the same command again to resume"  # Ctrl-C, exit 130
