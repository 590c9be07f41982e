"""`python -m odock` runs the `odock` command."""

from odock.cli import main

main()
