"""Subcommands of the digitnet CLI, one module each."""
