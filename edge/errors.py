"""The one error hierarchy of the package, shared by edge/ and export/.

The CLIs turn any EdgeError into one line on stderr and a non-zero exit code; everything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

from typing import Any

# The one line both CLIs print when no onnxruntime build is installed (it comes from an extra).
NO_ONNXRUNTIME = ("onnxruntime is not installed: pip install 'edge-adapters[cpu]' (CPU) or "
                  "'edge-adapters[gpu]' (x86-64 CUDA); on Jetson NVIDIA's onnxruntime-gpu "
                  "wheel (docs/JETSON.md)")


class EdgeError(Exception):
    """Base of every error the package raises on purpose."""

    exit_code = 1


class ConfigError(EdgeError):
    """A firmware config or CLI option is invalid; the message names the key or flag."""

    exit_code = 2


class ProviderError(ConfigError):
    """An execution provider the config asks for cannot run here, or fails to start with
    the options given; the message names the provider, the key and why."""


class DataError(EdgeError):
    """Training or sample data cannot be used (bad shape, NaN, mismatched labels...)."""

    exit_code = 3


class AdapterError(EdgeError):
    """An adapter file or directory cannot be read, written or applied."""

    exit_code = 4


class AdapterRejected(AdapterError):
    """An adapter was checked against a live base or bundle and refused."""


class IncompatibleBundle(EdgeError):
    """A bundle, model file or adapter does not fit what it is used with."""

    exit_code = 5


class ExportError(EdgeError):
    """An export failed or its parity check against torch did not pass."""

    exit_code = 6


class BadMessage(EdgeError):
    """A sensor or control message could not be used; the text is the reason sent back."""

    exit_code = 7


class StorageError(EdgeError):
    """The gateway's state on disk (the outbox in device.state_dir) cannot be written."""

    exit_code = 8


def validation_problem(exc: Any) -> str:
    """`<field path>: <message>` of a pydantic ValidationError's first error, for one-line
    errors that name the offending field."""
    err = exc.errors()[0]
    return f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}"
