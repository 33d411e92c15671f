"""`lepton-agent` subcommands other than `run` (one module each)."""
