"""Subcommands of `lepton` and `lepton-controller`: one module each (configure, run)."""
