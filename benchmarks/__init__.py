"""Speed and memory benchmarks; each module prints ratios and can update docs/benchmarks.md."""
