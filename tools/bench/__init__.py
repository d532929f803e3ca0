"""Benchmarks: msbfs side by side with its references (native directories, bindfs, Debian's
C virtiofsd) in one run, printing ratios. Not tests: nothing here asserts a time."""
