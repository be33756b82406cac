"""The engine a firmware config asks for: its providers (with the TensorRT cache in the
gateway's state and batch profiles from the bundle), and the bundle checked against what the
config says it should be.

    engine = open_engine(cfg, bundle_dir / manifest.base.file, manifest)
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import onnxruntime as ort

from .bundle import INDEX_INPUT, Manifest
from .config import Config
from .engine import Engine
from .errors import ConfigError, IncompatibleBundle
from .providers import TENSORRT, ProviderRequest, tensorrt_cache_options, tensorrt_profiles

TRT_CACHE = "trt-cache"  # under device.state_dir unless device.engine_cache_dir says otherwise


def provider_requests(cfg: Config, manifest: Manifest,
                      only: str | None = None) -> list[ProviderRequest]:
    """device.providers as requests (one provider alone with `only`); TensorRT gets its
    engine and timing cache and, for a dynamic batch, one profile up to max_batch."""
    out = []
    for index, provider in enumerate(cfg.device.providers):
        if only is not None and provider.name != only:
            continue
        options = cfg.device.ort_options(provider)
        if provider.name == TENSORRT:
            options = tensorrt_cache_options(options, engine_cache_dir(cfg, options),
                                             _profiles(cfg, manifest))
        out.append(ProviderRequest(provider.name, options, provider.required, index))
    return out


def engine_cache_dir(cfg: Config, options: dict[str, str] | None = None) -> Path:
    """Where TensorRT keeps engines: the provider's own trt_engine_cache_path, else
    device.engine_cache_dir, else <device.state_dir>/trt-cache."""
    given = (options or {}).get("trt_engine_cache_path")
    if given:
        return Path(given)
    return cfg.device.engine_cache_dir or cfg.device.state_dir / TRT_CACHE


def _profiles(cfg: Config, manifest: Manifest) -> dict[str, str]:
    if not manifest.dynamic_batch:
        return {}
    shape = [int(d) for d in manifest.inputs[0].shape[1:]]
    dynamic = {manifest.inputs[0].name: shape}
    if manifest.bank:
        dynamic[INDEX_INPUT] = []
    return tensorrt_profiles(dynamic, cfg.batching.max_batch)


def check_cache_writable(cfg: Config, requests: list[ProviderRequest],
                         available: list[str] | None = None) -> None:
    """An engine cache TensorRT cannot write costs a full engine build at every start:
    refuse to start instead, naming the key (only where TensorRT can run at all)."""
    available = ort.get_available_providers() if available is None else available
    for request in requests:
        if request.name != TENSORRT or TENSORRT not in available:
            continue
        path = Path(request.options["trt_engine_cache_path"])
        key = (f"{request.key}.options.trt_engine_cache_path"
               if "trt_engine_cache_path" in _given_options(cfg, request)
               else "device.engine_cache_dir")
        try:
            path.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=path):
                pass
        except OSError as exc:
            raise ConfigError(f"{key}: {str(path)!r}: the TensorRT engine cache is not "
                              f"writable ({exc.strerror or exc}); every start would rebuild "
                              "the engines") from None


def _given_options(cfg: Config, request: ProviderRequest) -> dict:
    return cfg.device.providers[request.index].options


def check_bundle_matches(cfg: Config, manifest: Manifest, bundle: Path) -> None:
    """A config that states its export settings must get a bundle exported with them, and
    the bundle's base must be under a licence [adapters.policy] allows."""
    export = cfg.export
    given = export.model_fields_set
    where = f"{cfg.source}: " if cfg.source else ""
    if "precision" in given and export.precision != manifest.base.precision:
        raise IncompatibleBundle(
            f"{where}export.precision is {export.precision}, but {bundle} was exported as "
            f"{manifest.base.precision}; re-export with --target {cfg.source or 'CONFIG'}")
    batch = manifest.inputs[0].shape[0] if not manifest.dynamic_batch else "dynamic"
    if "batch" in given and export.batch != batch:
        raise IncompatibleBundle(
            f"{where}export.batch is {export.batch}, but {bundle} was exported with batch "
            f"{batch}; re-export with --target {cfg.source or 'CONFIG'}")
    problem = cfg.adapters.policy.base_problem(manifest.base.card)
    if problem:  # a base under a licence the plant does not allow never serves a line
        raise IncompatibleBundle(f"{where}adapters.policy: {bundle}: {problem}")


def open_engine(cfg: Config, model_path: Path, manifest: Manifest, *,
                only: str | None = None, bind: str | None = None,
                placement: bool = False) -> Engine:
    """The service's engine for this config and bundle (or one provider alone, for doctor);
    `placement`: profile the first runs to tell which provider runs which node."""
    requests = provider_requests(cfg, manifest, only)
    check_cache_writable(cfg, requests)
    return Engine(model_path, providers=requests, threads=cfg.device.threads,
                  cpu_fallback=cfg.device.cpu_fallback or only is not None,
                  bind=bind or cfg.device.io_binding, placement=placement)

