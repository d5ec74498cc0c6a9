"""The project's studies and measurements, one module per question: run from the repository root with
`python -m benchmarks.<name> --help`. Shared machinery (machine info, provenance, result writers) is `common.py`;
statistics over seeds come from `ggam_layers.train.stats`; every training goes through `ggam_layers.train`."""
