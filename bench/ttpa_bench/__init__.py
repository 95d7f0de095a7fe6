"""What the benchmark scripts in ``bench/`` share, so that no script imports another: the report format
(``report``), the two sides of a training step, ours and PyTorch's (``sides``), and the workloads
(``workloads``: presets, FLOP counts, synthetic batches). The scripts put ``bench/`` on the path by
being run from it (``python bench/<script>.py``)."""
