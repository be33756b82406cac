"""`edge-runtime doctor`: can this gateway run its bundle on the providers it was bought for?

    report = diagnose(cfg, bundle)      # dict, as `--json` prints it
    report["ok"], report["problems"]    # one line per problem; the CLI exits 1 on any

It reports the machine (gpu_info.environment), then whether the service would start with
this config, then runs the bundle on each configured provider alone: the base and every held
adapter on the bundle's reference inputs against the CPU run, the warm-up time (a TensorRT
engine build included) and the latency at batch 1 and max_batch.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from .adapters import persisted_adapters
from .bank import AdapterBank
from .bundle import INDEX_INPUT, Manifest, read_manifest, read_reference_inputs, verify_base
from .config import Config
from .engine import DeviceSlots, Engine, read_adapter_arrays
from .engine_config import check_bundle_matches, open_engine
from .errors import EdgeError
from .gpu_info import environment
from .placement import describe as describe_placement
from .providers import why_missing
from .tolerance import logits_tolerance

LATENCY_RUNS = 20


def diagnose(cfg: Config, bundle: str | Path | None = None, *, atol: float | None = None,
             runs: int = LATENCY_RUNS) -> dict:
    """The whole report; `bundle` overrides device.bundle, `atol` every tolerance."""
    report: dict = {"environment": environment(), "config": str(cfg.source), "problems": []}
    problems = report["problems"]
    if report["environment"]["onnxruntime"]["clash"]:
        problems.append(report["environment"]["onnxruntime"]["clash"])
    bundle = bundle if bundle is not None else cfg.device.bundle
    if bundle is None:
        report["bundle"] = None
        report["ok"] = not problems
        return report
    try:
        checks = _bundle_checks(cfg, Path(bundle), atol, runs, problems)
    except EdgeError as exc:
        problems.append(str(exc).splitlines()[0])
        checks = None
    report["bundle"] = checks
    report["ok"] = not problems
    return report


def _bundle_checks(cfg: Config, bundle: Path, atol: float | None, runs: int,
                   problems: list[str]) -> dict:
    manifest = read_manifest(bundle)
    model = verify_base(bundle, manifest)
    check_bundle_matches(cfg, manifest, bundle)
    adapters, skipped = _held(cfg, bundle, manifest)
    problems.extend(skipped)
    x = _reference_inputs(bundle, manifest)
    cpu = Engine(model, bind="off")
    want = {name: _run(cpu, manifest, x, _prepare(cpu, manifest, bundle, arrays))
            for name, arrays in adapters.items()}
    starts = _would_start(cfg, model, manifest)
    if starts is not True:
        problems.append(f"the service would not start: {starts}")
    results = []
    for provider in cfg.device.providers:
        result = _provider_check(cfg, bundle, manifest, provider.name, adapters, x, want,
                                 atol, runs)
        problems.extend(f"{provider.name}: {p}" for p in result.pop("problems"))
        results.append(result)
    return {"path": str(bundle), "precision": manifest.base.precision,
            "batch": "dynamic" if manifest.dynamic_batch else manifest.inputs[0].shape[0],
            "bank": manifest.bank, "adapters": list(adapters)[1:], "starts": starts is True,
            "providers": results}


def _held(cfg: Config, bundle: Path, manifest: Manifest
          ) -> tuple[dict[str, dict | None], list[str]]:
    """'base' and every held adapter version (bundle and state_dir) -> slot arrays."""
    held: dict[str, dict | None] = {"base": None}
    for entry in manifest.adapters:
        held[f"{entry.name} v{entry.version}"] = read_adapter_arrays(bundle / entry.file)
    directory = cfg.device.state_dir / "adapters"
    found, problems = (persisted_adapters(directory, manifest, cfg.adapters.policy)
                       if directory.is_dir() else ([], []))
    for entry, path, _ in found:
        held.setdefault(f"{entry.name} v{entry.version}", read_adapter_arrays(path))
    return held, problems


def _reference_inputs(bundle: Path, manifest: Manifest) -> np.ndarray:
    x = read_reference_inputs(bundle, manifest)
    if x is not None:
        return x
    shape = tuple(int(d) for d in manifest.inputs[0].shape[1:])
    return np.random.default_rng(0).standard_normal((8, *shape)).astype(np.float32)


def _would_start(cfg: Config, model: Path, manifest: Manifest) -> bool | str:
    try:
        open_engine(cfg, model, manifest)
    except EdgeError as exc:
        return str(exc).splitlines()[0]
    return True


def _prepare(engine: Engine, manifest: Manifest, bundle: Path, arrays: dict | None):
    """One model's slot tensors in the form `engine.run` takes (a bank: entry 0 is it)."""
    if manifest.bank:
        bank = AdapterBank.for_bundle(bundle, manifest)
        bank.load(0, arrays)
        return engine.prepare_bank(bank.tensors)
    if arrays is None or not engine.bound:
        return arrays
    return engine.upload(arrays)


def _run(engine: Engine, manifest: Manifest, x: np.ndarray,
         prepared: dict | DeviceSlots | None) -> np.ndarray:
    feeds = {INDEX_INPUT: np.zeros(len(x), np.int64)} if manifest.bank else None
    return engine.run(x, prepared, feeds=feeds)


def _provider_check(cfg: Config, bundle: Path, manifest: Manifest, name: str,
                    adapters: dict[str, dict | None], x: np.ndarray,
                    want: dict[str, np.ndarray], atol: float | None, runs: int) -> dict:
    """One provider alone (plus the CPU for nodes it cannot take) against the CPU."""
    result: dict = {"provider": name, "problems": []}
    if name not in ort.get_available_providers():
        result.update(status="missing", reason=why_missing(name))
        return result
    start = time.perf_counter()
    try:
        engine = open_engine(cfg, bundle / manifest.base.file, manifest, only=name,
                             placement=True)
        if engine.provider != name:
            result.update(status="missing", reason=why_missing(name))
            return result
        _run(engine, manifest, x, _prepare(engine, manifest, bundle, None))
    except EdgeError as exc:
        result.update(status="failed", reason=str(exc).splitlines()[0])
        result["problems"].append(result["reason"])
        return result
    result["placement"] = engine.placement()  # the warm-up run's nodes, per provider
    limit = atol if atol is not None else logits_tolerance(manifest.base.precision, name,
                                                           engine.fp16)
    result.update(status="ok", warm_up_s=round(time.perf_counter() - start, 3),
                  adapters_on_device=engine.bound, atol=limit, parity={})
    for label, arrays in adapters.items():
        got = _run(engine, manifest, x, _prepare(engine, manifest, bundle, arrays))
        diff = float(np.max(np.abs(got - want[label])))
        result["parity"][label] = diff
        if not diff <= limit:
            result["problems"].append(f"{label}: max|diff| {diff:.2e} against the CPU is over "
                                      f"{limit:.0e}")
    label, arrays = list(adapters.items())[-1]
    prepared = _prepare(engine, manifest, bundle, arrays)
    result["latency_ms"] = {"adapter": label, **_latency(engine, manifest, prepared, x,
                                                         cfg.batching.max_batch, runs)}
    return result


def _latency(engine: Engine, manifest: Manifest, prepared, x: np.ndarray, max_batch: int,
             runs: int) -> dict[str, float]:
    """Median ms per run at batch 1 and max_batch."""
    out = {}
    for batch in sorted({1, max_batch}):
        rows = x[np.arange(batch) % len(x)]
        _run(engine, manifest, rows, prepared)
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            _run(engine, manifest, rows, prepared)
            times.append((time.perf_counter() - start) * 1000)
        out[f"batch_{batch}"] = round(float(np.median(times)), 3)
    return out


def report_lines(report: dict) -> list[str]:
    """The human form of `diagnose`'s report."""
    env = report["environment"]
    ortinfo = env["onnxruntime"]
    lines = [f"edge-runtime {env['package_version']}, Python {env['python']} on {env['machine']}",
             f"onnxruntime {ortinfo['version']} ({', '.join(ortinfo['installed']) or '?'}), "
             f"device {ortinfo['device']}",
             f"available providers: {', '.join(env['available_providers'])}"]
    lines += [f"  {name}: {state}" for name, state in env["provider_libraries"].items()]
    lines += [f"GPU: {g['name']}" + (f", {g['memory_mib']} MiB ({g['used_mib']} used), driver "
                                    f"{g['driver']}" if "memory_mib" in g else "")
              for g in env["gpus"]] or ["GPU: none found"]
    for label, lib in env["libraries"].items():
        lines.append(f"{label}: {lib.get('version') or lib.get('error')}")
    bundle = report.get("bundle")
    if bundle:
        lines.append(f"bundle {bundle['path']}: {bundle['precision']}, batch {bundle['batch']}"
                     f"{', bank ' + str(bundle['bank']) if bundle['bank'] else ''}, "
                     f"{len(bundle['adapters'])} held adapter(s); service starts: "
                     f"{'yes' if bundle['starts'] else 'no'}")
        lines += [_provider_line(p) for p in bundle["providers"]]
    lines += [f"problem: {p}" for p in report["problems"]]
    lines.append("ok" if report["ok"] else f"{len(report['problems'])} problem(s)")
    return lines


def _provider_line(p: dict) -> str:
    if p["status"] != "ok":
        return f"  {p['provider']}: {p['status']}: {p['reason']}"
    worst = max(p["parity"].values(), default=0.0)
    lat = p["latency_ms"]
    batches = ", ".join(f"{k.removeprefix('batch_')}: {v} ms" for k, v in lat.items()
                        if k.startswith("batch_"))
    where = "device" if p["adapters_on_device"] else "host"
    return (f"  {p['provider']}: ok, warm-up {p['warm_up_s']} s, max|diff| to CPU "
            f"{worst:.1e} over {len(p['parity'])} model(s) (atol {p['atol']:.0e}), adapters on "
            f"the {where}, latency {batches}\n    nodes: {describe_placement(p['placement'])}")

