"""`--prices prices.toml`: what an hour of compute and a kWh cost, and the cost of a run.

    currency = "EUR"
    cpu_hour = 0.05     # per CPU-hour (CPU seconds of the training process / 3600)
    gpu_hour = 2.50     # per GPU-hour
    kwh = 0.30          # per kWh, at the stated power draw:
    watts = 65          # the machine's draw while training (wall time x watts)

Every key but `currency` may be left out (0: not charged). The cost of a run is
cpu_s / 3600 * cpu_hour + gpu_s / 3600 * gpu_hour + wall_s * watts / 3.6e6 * kwh; give either
hourly prices (a cloud machine, energy included) or energy (a machine of one's own), or both.
No price file: no money figures, only times.
"""

from __future__ import annotations

import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from edge.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["Prices", "load_prices", "run_cost"]

_NUMBERS = ("cpu_hour", "gpu_hour", "kwh", "watts")


@dataclass(frozen=True)
class Prices:
    currency: str
    cpu_hour: float = 0.0
    gpu_hour: float = 0.0
    kwh: float = 0.0
    watts: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def load_prices(path: str | Path | None) -> Prices | None:
    """Read and check a price file; None without one. Errors name the file and the key."""
    if path is None:
        return None
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"--prices {path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--prices {path}: unreadable ({exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"--prices {path}: not valid TOML ({exc})") from None
    unknown = sorted(set(data) - {"currency", *_NUMBERS})
    if unknown:
        raise ConfigError(f"--prices {path}: unknown key {unknown[0]!r}; known: currency, "
                          f"{', '.join(_NUMBERS)}")
    currency = data.get("currency")
    if not isinstance(currency, str) or not currency.strip():
        raise ConfigError(f"--prices {path}: 'currency' must be a name like \"EUR\"")
    values = {key: _number(path, key, data[key]) for key in _NUMBERS if key in data}
    if values.get("kwh", 0.0) > 0 and values.get("watts", 0.0) == 0:
        raise ConfigError(f"--prices {path}: 'kwh' needs 'watts', the power drawn while "
                          "training")
    return Prices(currency=currency.strip(), **values)


def _number(path: Path, key: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"--prices {path}: {key!r} must be a number, got {value!r}")
    if value < 0:
        raise ConfigError(f"--prices {path}: {key!r} must not be negative, got {value!r}")
    return float(value)


def run_cost(prices: Prices | None, *, wall_s: float, cpu_s: float,
             gpu_s: float | None) -> dict | None:
    """{"currency", "amount", "energy_kwh"} of one run's time, or None without prices."""
    if prices is None:
        return None
    energy_kwh = wall_s * prices.watts / 3.6e6  # W x s = J; 3.6e6 J per kWh
    amount = (cpu_s / 3600 * prices.cpu_hour + (gpu_s or 0.0) / 3600 * prices.gpu_hour
              + energy_kwh * prices.kwh)
    return {"currency": prices.currency, "amount": amount, "energy_kwh": energy_kwh}
