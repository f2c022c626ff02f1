"""Subcommands of the ``rdpo`` CLI, one module each."""
