"""`lepton-agent`: the service that runs on every edge box. One module per subcommand here."""

from __future__ import annotations

from collections.abc import Sequence

from lepton_edge.shared.cli import Subcommand, run_cli

AGENT_COMMANDS = (
    Subcommand(
        "run", "lepton_edge.agent.cli.run", "run the agent (what the systemd unit starts)", "agent"
    ),
    Subcommand(
        "probe",
        "lepton_edge.agent.cli.probe",
        "print this device's hardware profile and a sample",
        "agent",
    ),
    Subcommand(
        "enroll",
        "lepton_edge.agent.cli.enroll",
        "enroll with a controller using a token",
        "agent",
    ),
    Subcommand(
        "infer",
        "lepton_edge.agent.cli.infer",
        "run a bundle's variants on local frames",
        "agent",
    ),
)


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli("lepton-agent", "The lepton-edge device agent.", AGENT_COMMANDS, argv)
