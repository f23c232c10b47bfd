"""Benchmark scripts and the results pipeline. Not installed: run them from the repository
root as ``python -m bench.<script>`` (for example ``python -m bench.results --help``)."""
