"""`python -m flax_mnist`: the same as the `flax-mnist` command."""

import sys

from flax_mnist.cli import main

sys.exit(main())
