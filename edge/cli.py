"""`edge-runtime`: the gateway's command line, a thin layer over edge.service and edge.config.

    edge-runtime --version
    edge-runtime run --config firmware_configs/cpu.toml [--bundle DIR] [--log-level info]
                     [--log-format text|json] [--workers N]
    edge-runtime check-config firmware_configs/cpu.toml
    edge-runtime doctor --config firmware_configs/jetson-orin-nano.toml [--bundle DIR] [--json]
    edge-runtime capture list --config FILE
    edge-runtime capture export --config FILE --out captured.npz [--line L] [--since ISO]
    edge-runtime capture clear --config FILE

An EdgeError becomes one `error: ...` line on stderr and its exit code; `--debug` keeps the
traceback (edge/cli_errors.py, shared with `edge-export`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from . import __version__
from .cli_errors import ErrorLineGroup, debug_option
from .logs import FORMATS, setup_logging

LOG_LEVELS = ("debug", "info", "warning", "error")


def version_line() -> str:
    """`edge-runtime <version> (onnxruntime <version>, providers: ...)`: what an OT engineer
    reads off a gateway before anything else."""
    try:
        import onnxruntime as ort
    except ImportError:
        return f"edge-runtime {__version__} (onnxruntime not installed)"
    return (f"edge-runtime {__version__} (onnxruntime {ort.__version__}, providers: "
            f"{', '.join(ort.get_available_providers())})")


def _print_version(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(version_line())
        ctx.exit(0)


@click.group(cls=ErrorLineGroup)
@debug_option
@click.option("--version", is_flag=True, expose_value=False, is_eager=True,
              callback=_print_version, help="Print the package, onnxruntime and provider "
              "versions, then exit.")
def main() -> None:
    """Serve adapter bundles over MQTT on a factory gateway."""


CONFIG_OPTION = click.option("--config", "config", required=True,
                             type=click.Path(dir_okay=False, path_type=Path),
                             help="Firmware config (firmware_configs/<device>.toml).")
BUNDLE_OPTION = click.option("--bundle", type=click.Path(file_okay=False, path_type=Path),
                             default=None, help="Bundle directory; overrides device.bundle.")


@main.command("run")
@CONFIG_OPTION
@BUNDLE_OPTION
@click.option("--log-level", type=click.Choice(LOG_LEVELS), default="info", show_default=True)
@click.option("--log-format", type=click.Choice(FORMATS), default="text", show_default=True,
              help="json: one object per line (time, level, logger, message, line, id...) "
              "for journald and log shippers.")
@click.option("--workers", type=int, default=None, help="Worker processes sharing the sensor "
              "topics; overrides [workers] count (docs/WORKERS.md).")
def run_command(config: Path, bundle: Path | None, log_level: str, log_format: str,
                workers: int | None) -> None:
    """Run the service until SIGTERM or SIGINT, then drain and exit 0."""
    setup_logging(log_level, log_format)
    sys.exit(run(config=config, bundle=bundle, workers=workers, log_level=log_level,
                 log_format=log_format))


def run(*, config: str | Path, bundle: str | Path | None = None, workers: int | None = None,
        log_level: str = "info", log_format: str = "text") -> int:
    """Load the config and bundle, serve until a signal; the exit code. More than one
    worker (or workers of an earlier run to retire): a supervisor and its worker processes."""
    from .config import load_config
    from .workers.role import with_workers
    from .workers.supervisor import Supervisor, needs_supervisor

    cfg = with_workers(load_config(config), workers)
    if needs_supervisor(cfg):
        return Supervisor(cfg, Path(config), None if bundle is None else Path(bundle),
                          log_level=log_level, log_format=log_format).run()
    from .heap import freeze_loaded
    from .service import Service

    service = Service(cfg, bundle_dir=bundle)
    freeze_loaded()
    return service.run_forever()


@main.command("check-config")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def check_config_command(file: Path) -> None:
    """Validate FILE; print every problem (file: key path: value: allowed), or 'ok'."""
    problems = check_config(file=file)
    for line in problems:
        click.echo(line)
    if problems:
        sys.exit(2)
    click.echo("ok")


def check_config(*, file: str | Path) -> list[str]:
    """Every problem line of a config file; empty when it is valid."""
    from .config import check_config as check

    return check(file)


@main.command("doctor")
@CONFIG_OPTION
@BUNDLE_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--atol", type=float, default=None,
              help="Max |logit difference| to the CPU; default by precision and provider.")
def doctor_command(config: Path, bundle: Path | None, as_json: bool, atol: float | None) -> None:
    """Check the machine, its providers and the bundle on each of them; exit 1 on a problem."""
    setup_logging("error")
    report = doctor(config=config, bundle=bundle, atol=atol)
    if as_json:
        click.echo(json.dumps(report, indent=2, default=str))
    else:
        from .doctor import report_lines

        for line in report_lines(report):
            click.echo(line)
    sys.exit(0 if report["ok"] else 1)


def doctor(*, config: str | Path, bundle: str | Path | None = None,
           atol: float | None = None) -> dict:
    """The doctor report (edge/doctor.py) for a config and bundle."""
    from .config import load_config
    from .doctor import diagnose

    return diagnose(load_config(config), bundle, atol=atol)


@main.group("capture")
def capture_group() -> None:
    """The windows kept as drift evidence in <device.state_dir>/capture (docs/MQTT.md)."""


@capture_group.command("list")
@CONFIG_OPTION
def capture_list_command(config: Path) -> None:
    """Print the captured windows per line and reason."""
    rows = capture_list(config=config)
    if not rows:
        click.echo("no captured windows")
    for r in rows:
        click.echo(f"{r['line']}  {r['reason']}  {r['windows']} window(s)  {r['first']} .. "
                   f"{r['last']}  {r['adapters']}")


def capture_list(*, config: str | Path) -> list[dict]:
    """One summary row per (line, reason) of the config's capture store."""
    from .drift.capture_export import summary

    return summary(_capture_store(config))


@capture_group.command("export")
@CONFIG_OPTION
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The .npz to write (the format `edge-export train --data` reads).")
@click.option("--line", default=None, help="Only this line's windows.")
@click.option("--since", default=None, help="Only windows received at or after this ISO 8601 "
              "time (UTC without a zone).")
def capture_export_command(config: Path, out: Path, line: str | None, since: str | None) -> None:
    """Write the captured windows to an npz; y holds the PREDICTED classes (provisional)."""
    done = capture_export(config=config, out=out, line=line, since=since)
    click.echo(f"wrote {done.windows} window(s) of {done.shape[0]} channel(s) x "
               f"{done.shape[1]} to {out}")
    if done.left_out:
        click.echo(f"left out {done.left_out} older window(s) of another shape")
    click.echo("y holds the model's PREDICTED classes, not true labels: label the windows "
               "before `edge-export train --data`")
    if done.classes < 2:
        click.echo("only one predicted class: training needs at least 2 after labelling")


def capture_export(*, config: str | Path, out: str | Path, line: str | None = None,
                   since: str | None = None):
    """Export the config's capture store to `out`; the ExportSummary."""
    from .drift.capture_export import export_npz, parse_since

    return export_npz(_capture_store(config), Path(out), line=line, since=parse_since(since))


@capture_group.command("clear")
@CONFIG_OPTION
def capture_clear_command(config: Path) -> None:
    """Remove every captured window."""
    click.echo(f"removed {capture_clear(config=config)} captured window(s)")


def capture_clear(*, config: str | Path) -> int:
    """Empty the config's capture store; how many records it held."""
    return _capture_store(config).clear()


def _capture_store(config: str | Path):
    from .config import load_config
    from .drift.capture import FOLDER
    from .drift.capture_store import CaptureStore

    cfg = load_config(config)
    return CaptureStore(Path(cfg.device.state_dir) / FOLDER, cfg.drift.capture.max_bytes)


if __name__ == "__main__":
    main()
