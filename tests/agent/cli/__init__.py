"""Tests of `lepton-agent` subcommands, one file per `agent/cli/` module."""
