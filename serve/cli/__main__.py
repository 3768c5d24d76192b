"""`python -m serve.cli ...`: the same as the `serve` command (the tests and benchmarks start it so)."""
import sys

from serve.cli.main import main

sys.exit(main())
