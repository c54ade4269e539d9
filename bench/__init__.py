"""samplerbench's harness: sweep cells, run them, store rows, report and check regressions."""
