"""`python -m ggam_layers.train ...`, the same as `ggam-layers train ...`."""
import sys

from ..cli import main

raise SystemExit(main(['train', *sys.argv[1:]]))
