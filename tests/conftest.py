"""Shared fixtures: a private Mosquitto broker, a reference bundle trained on real data, and
runtime configs that point at both."""

from __future__ import annotations

from pathlib import Path

import pytest

from export.demo.local_broker import BrokerMissing, start_broker, write_runtime_config


@pytest.fixture
def mosquitto(tmp_path):
    """A fresh broker per test (no retained state leaks between tests). Its log is printed
    at teardown, which pytest shows only for failing tests."""
    try:
        broker = start_broker(tmp_path / "mosquitto")
    except BrokerMissing as exc:
        pytest.skip(str(exc))
    yield broker
    broker.stop()
    print(f"--- mosquitto log ({broker.conf}) ---\n{broker.log_text()}")


@pytest.fixture(scope="session")
def basicmotions_bundle(tmp_path_factory) -> Path:
    """A bundle trained for a few seconds on real BasicMotions data: a tiny reference base
    and one LoRA adapter named `line-a` (tests/reference_bundle.py)."""
    from reference_bundle import build_bundle

    return build_bundle(tmp_path_factory.mktemp("basicmotions"))


@pytest.fixture
def runtime_config(tmp_path, mosquitto, basicmotions_bundle):
    """`runtime_config(lines=..., **sections)` -> a config file for this test's broker."""
    def make(**kwargs) -> Path:
        kwargs.setdefault("lines", {"line-a": {"adapter": "line-a"}, "line-b": {}})
        return write_runtime_config(tmp_path, port=mosquitto.port, bundle=basicmotions_bundle,
                                    **kwargs)
    return make


@pytest.fixture
def service(runtime_config):
    """`service(**config_kwargs)` -> a started in-process Service; stopped at teardown."""
    from edge.service import Service

    started = []

    def make(**kwargs) -> Service:
        svc = Service(runtime_config(**kwargs))
        started.append(svc)
        assert svc.start(), "service did not connect"
        return svc

    yield make
    for svc in started:
        svc.stop(5)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models gain nothing from threads, and two threads on a busy 2-core box spin."""
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def keys(tmp_path) -> tuple[Path, Path]:
    """(private, public) Ed25519 signing key files."""
    from export.signing import keygen

    return keygen(out=tmp_path / "keys" / "signing")


@pytest.fixture
def swap_config(runtime_config, keys, tmp_path):
    """A runtime config trusting `keys`, watching tmp_path/inbox; line-a follows the newest
    line-a, line-b is the base, line-c is pinned to line-a v1."""
    def make(**kwargs):
        kwargs.setdefault("lines", {"line-a": {"adapter": "line-a"}, "line-b": {},
                                    "line-c": {"adapter": "line-a", "version": 1}})
        kwargs.setdefault("adapters", {"require_signed": True, "trusted_keys": [str(keys[1])],
                                       "watch_dir": str(tmp_path / "inbox"),
                                       "watch_interval_s": 0.05})
        return runtime_config(**kwargs)
    return make


@pytest.fixture
def started():
    """`started(config, bundle=None)` -> a started Service; every one stopped at teardown."""
    from edge.service import Service

    services: list = []

    def start(config, bundle=None):
        svc = Service(config, bundle_dir=bundle)
        services.append(svc)
        assert svc.start()
        return svc
    yield start
    for svc in services:
        svc.stop()
