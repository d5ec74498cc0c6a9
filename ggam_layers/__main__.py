"""`python -m ggam_layers ...` runs the `ggam-layers` command line."""
from .cli import main

if __name__ == '__main__':
    raise SystemExit(main())
