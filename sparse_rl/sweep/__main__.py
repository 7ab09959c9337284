import sys

from sparse_rl.sweep.cli import main

sys.exit(main())
