"""`python -m flowscope` runs the command line."""

from flowscope.cli import main

main()
