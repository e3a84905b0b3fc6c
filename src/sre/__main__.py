"""`python -m sre` is the `sre` command."""

from sre.cli import main

main()
