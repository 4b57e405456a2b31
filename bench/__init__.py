"""The benchmarks of thinkube-pipelines: `python -m bench` (or `make bench`) writes bench/RESULTS.md."""
