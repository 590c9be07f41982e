"""Command-line commands (each module adds its sub-commands to the `odock` parser)."""
