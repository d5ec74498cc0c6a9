"""The project's studies and measurements: run a study from the repository root with
`python -m benchmarks.<name> --help`. A study's command-line module re-exports its pieces, each its own module (one
measurement or one concept: e.g. `step_time` over `steps`, `timing`, `memory`, ...; `ablation` over `ablation_plan`,
`ablation_run`, `ablation_report`, ...). Shared machinery (machine info, provenance, result writers) is `common.py`,
the one process pool (workers with limits that exit with their parent) `pool.py`; statistics over seeds come from
`ggam_layers.train.stats`; every training goes through `ggam_layers.train`."""
