"""`edge-export merge | attach | add-adapter | keygen | sign | push | revoke`: thin commands over
export/onnx/merge.py, export/onnx/attach.py and export/signing.py."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from edge.contract import DEFAULT_PREFIX
from edge.errors import ConfigError
from export.cli.card_options import card_options
from export.cli.group import main


def _shape(value: str | None) -> tuple[int, ...] | None:
    if not value:
        return None
    try:
        return tuple(int(v) for v in value.split(","))
    except ValueError:
        raise ConfigError(f"--input-shape {value!r}: expected 1 to 3 integers: F (feature "
                          "vectors), C,L (windows) or C,H,W (images), like 3,128") from None


def _echo_report(report) -> None:
    for line in report.lines():
        click.echo(line)


_base_options = [
    click.option("--base", default="reference", show_default=True,
                 help="'reference' or 'package.module:callable' returning an nn.Module."),
    click.option("--weights", type=click.Path(dir_okay=False),
                 help="Base weights (.safetensors, or a weights-only torch state dict)."),
    click.option("--target", type=click.Path(dir_okay=False),
                 help="firmware_configs/<device>.toml: opset, precision, batch, max rank."),
    click.option("--atol", type=float, help="Parity tolerance [default: 1e-4 fp32, 1e-2 fp16]."),
    click.option("--data", help="Real samples for the parity check (.npz, .ts, ucr:NAME:test)."),
    click.option("--input-shape", help="One sample's shape when --base is not the reference: "
                 "F (feature vectors), C,L (windows) or C,H,W (images)."),
    click.option("--exporter", type=click.Choice(["auto", "dynamo", "torchscript"]),
                 help="torch -> ONNX exporter [default: the target's, else auto: torchscript "
                 "for the reference model, dynamo for others] (docs/MODELS.md)."),
    click.option("--force", is_flag=True, help="Overwrite --out."),
]


def base_options(fn):
    for option in reversed(_base_options):
        fn = option(fn)
    return fn


@main.command("merge")
@base_options
@click.option("--adapter", required=True, type=click.Path(file_okay=False),
              help="PEFT adapter directory.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="model.onnx")
def merge_command(input_shape: str | None, **options: Any) -> None:
    """Fold a LoRA adapter into the base and export one ONNX file (a bottleneck adapter
    stays in the static graph)."""
    from export.onnx.merge import export_merged

    _echo_report(export_merged(input_shape_=_shape(input_shape), **options))


@main.command("attach")
@base_options
@click.option("--adapter", "adapters", required=True, multiple=True,
              type=click.Path(file_okay=False), help="PEFT adapter directory (repeatable).")
@click.option("--name", "names", multiple=True,
              help="Name per --adapter, in order [default: the directory names].")
@click.option("--max-rank", type=int, help="Rank slots are padded to [default: target's or 8].")
@click.option("--bank", type=int, default=0, show_default=True,
              help="K > 0: slots hold K adapters, one run serves rows of different lines.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Bundle folder.")
@card_options
def attach_command(input_shape: str | None, adapters: tuple[str, ...], names: tuple[str, ...],
                   **options: Any) -> None:
    """Export a bundle: base.onnx with adapter slots, adapters as .onnx_adapter files."""
    from export.onnx.attach import export_attach

    _echo_report(export_attach(input_shape_=_shape(input_shape), adapters=list(adapters),
                               names=list(names) or None, **options))


@main.command("add-adapter")
@click.option("--bundle", required=True, type=click.Path(file_okay=False))
@click.option("--adapter", required=True, type=click.Path(file_okay=False))
@click.option("--name", required=True, help="Adapter name in the bundle (the line, say).")
@click.option("--version", type=int, help="[default: the next version of --name]")
@click.option("--base", help="With --weights: also check parity against torch.")
@click.option("--weights", type=click.Path(dir_okay=False))
@click.option("--atol", type=float)
@click.option("--force", is_flag=True, help="Replace an existing --name/--version (the old "
              "one stays when the new one fails a check).")
@card_options
def add_adapter_command(**options: Any) -> None:
    """Convert a new adapter for an existing bundle (plain or --bank); base.onnx stays byte
    for byte. Its outputs on the bundle's reference inputs go into the manifest."""
    from export.onnx.attach import add_adapter

    _echo_report(add_adapter(**options))


@main.command("keygen")
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="Writes OUT.key (private, 0600) and OUT.pub (give this to gateways).")
@click.option("--force", is_flag=True)
def keygen_command(**options: Any) -> None:
    """Create an Ed25519 signing key pair for adapters."""
    from export.signing import keygen

    private, public = keygen(**options)
    click.echo(f"wrote {private} (keep secret) and {public} (list it in adapters.trusted_keys)")


@main.command("sign")
@click.option("--bundle", required=True, type=click.Path(file_okay=False))
@click.option("--name", required=True)
@click.option("--version", type=int, help="[default: the newest]")
@click.option("--key", required=True, type=click.Path(dir_okay=False), help="OUT.key of keygen.")
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="Envelope file (drop it in a gateway's watch folder, or push it).")
@click.option("--force", is_flag=True)
def sign_command(**options: Any) -> None:
    """Write a signed adapter envelope."""
    from export.signing import sign

    out = sign(**options)
    click.echo(f"wrote {out} ({Path(out).stat().st_size} bytes)")


def gateway_options(command: Callable) -> Callable:
    """The options that reach one gateway over MQTT (push, revoke): its id and prefix, the
    broker, how long to wait, TLS and credentials."""
    options = [
        click.option("--device", required=True, help="The gateway's device.id."),
        click.option("--broker", default="127.0.0.1", show_default=True, metavar="HOST[:PORT]",
                     help="MQTT broker the gateway uses [port: 1883, 8883 with TLS]."),
        click.option("--prefix", default=DEFAULT_PREFIX, show_default=True,
                     help="The gateway's topics.prefix."),
        click.option("--timeout", type=float, default=30.0, show_default=True,
                     help="Seconds to wait for the gateway's answer, all steps together."),
        click.option("--tls", is_flag=True, help="TLS with the system trust store (implied by "
                     "--tls-ca/--tls-cert)."),
        click.option("--tls-ca", type=click.Path(dir_okay=False),
                     help="CA certificate of the broker."),
        click.option("--tls-cert", type=click.Path(dir_okay=False), help="Client certificate."),
        click.option("--tls-key", type=click.Path(dir_okay=False),
                     help="Client certificate's key."),
        click.option("--username-env", metavar="VAR",
                     help="Environment variable with the user name."),
        click.option("--password-env", metavar="VAR",
                     help="Environment variable with the password."),
        click.option("--client-id", help="MQTT client id [default: edge-export-push-<random>]."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@main.command("push")
@click.option("--envelope", type=click.Path(dir_okay=False),
              help="An envelope file from `edge-export sign` (instead of --bundle/--name).")
@click.option("--bundle", type=click.Path(file_okay=False), help="Bundle holding the adapter.")
@click.option("--name", help="Adapter name in --bundle (checked against --envelope).")
@click.option("--version", type=int, help="[default: the newest of --name]")
@click.option("--key", type=click.Path(dir_okay=False),
              help="OUT.key of keygen: signs the envelope built from --bundle.")
@click.option("--activate", metavar="LINE", help="Then switch LINE to this version.")
@gateway_options
def push_command(**options: Any) -> None:
    """Publish an adapter to a gateway and wait for it to confirm (or say why it refused)."""
    from export.fleet.push import push

    result = push(progress=lambda line: click.echo(line, err=True), **options)
    click.echo(result.describe())


@main.command("revoke")
@click.option("--name", required=True, help="Adapter name.")
@click.option("--version", required=True, type=int, help="The version to withdraw.")
@click.option("--key", required=True, type=click.Path(dir_okay=False),
              help="OUT.key of keygen (a key the gateway trusts).")
@click.option("--reason", default="", help="Why; kept in the gateway's adapter state.")
@gateway_options
def revoke_command(**options: Any) -> None:
    """Withdraw an adapter version from a gateway (signed); its lines fall back."""
    from export.fleet.revoke import revoke

    result = revoke(progress=lambda line: click.echo(line, err=True), **options)
    click.echo(result.describe())
