"""`lepton` (the umbrella command) and `lepton-controller` (the fleet service).

One module per subcommand beside this file (`configure(parser)`, `run(args)`); `lepton build`
is the factory's own, `controller/factory/cli.py`."""

from __future__ import annotations

from collections.abc import Sequence

from lepton_edge.shared.cli import Subcommand, run_cli

LEPTON_COMMANDS = (
    Subcommand(
        "demo", "lepton_edge.controller.cli.demo", "run a simulated fleet end to end", "demo"
    ),
    Subcommand(
        "build",
        "lepton_edge.controller.factory.cli",
        "build a signed bundle of measured fp32/fp16/int8 variants",
        "factory",
    ),
    Subcommand(
        "devices",
        "lepton_edge.controller.cli.devices",
        "list devices of the fleet",
        "controller",
    ),
    Subcommand(
        "models", "lepton_edge.controller.cli.models", "push and list bundles", "controller"
    ),
    Subcommand(
        "rollout",
        "lepton_edge.controller.cli.rollout",
        "create, watch, pause, resume or abort rollouts",
        "controller",
    ),
    Subcommand(
        "select",
        "lepton_edge.controller.cli.select",
        "show a device's ladder and why each variant was chosen or rejected",
        "controller",
    ),
    Subcommand(
        "schema", "lepton_edge.shared.schema", "write the JSON Schema of every wire message"
    ),
)

CONTROLLER_COMMANDS = (
    Subcommand("serve", "lepton_edge.controller.cli.serve", "run the controller API", "controller"),
    Subcommand(
        "token",
        "lepton_edge.controller.cli.token",
        "create admin and enrollment tokens",
        "controller",
    ),
    Subcommand(
        "key",
        "lepton_edge.controller.cli.key",
        "export the public key agents pin to verify bundles",
        "controller",
    ),
    Subcommand(
        "broker-config",
        "lepton_edge.controller.cli.broker_config",
        "write the broker's password and ACL files",
        "controller",
    ),
)


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(
        "lepton", "lepton-edge: AI models on fleets of edge devices.", LEPTON_COMMANDS, argv
    )


def controller_main(argv: Sequence[str] | None = None) -> int:
    return run_cli(
        "lepton-controller", "The lepton-edge fleet controller.", CONTROLLER_COMMANDS, argv
    )
