"""Odock benchmark: the gateway beside a direct call to the mock provider (and peers), one command."""
