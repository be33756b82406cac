"""LoRA configuration, field for field what PEFT writes to `adapter_config.json`."""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field, fields

from edge.errors import AdapterError

from ..targets import TargetSpec, as_list, pattern_value
from .layer import LoraLayer


@dataclass
class LoraConfig:
    """LoRA hyper-parameters; names and meaning as in `peft.LoraConfig`."""

    r: int = 8
    lora_alpha: float = 16.0
    target_modules: TargetSpec = None
    exclude_modules: TargetSpec = None
    lora_dropout: float = 0.0
    bias: str = "none"
    fan_in_fan_out: bool = False
    use_rslora: bool = False
    modules_to_save: list[str] | None = None
    rank_pattern: dict[str, int] = field(default_factory=dict)
    alpha_pattern: dict[str, float] = field(default_factory=dict)
    init_lora_weights: bool = True

    kind = "lora"
    peft_type = "LORA"

    def __post_init__(self) -> None:
        self.target_modules = as_list(self.target_modules)
        self.exclude_modules = as_list(self.exclude_modules)
        if self.r < 1:
            raise AdapterError(f"LoRA rank must be >= 1, got r={self.r} (--rank)")
        if self.bias != "none":
            raise AdapterError(f"LoRA bias={self.bias!r} is not supported: train with bias='none'"
                               " and list biases' modules in modules_to_save instead")
        if self.fan_in_fan_out:
            raise AdapterError("fan_in_fan_out=True (GPT-2 Conv1D weights) is not supported")

    def rank_for(self, path: str) -> int:
        return int(pattern_value(self.rank_pattern, path, self.r))

    def scale_for(self, path: str) -> float:
        """`lora_alpha / r` per module, or `/ sqrt(r)` with rsLoRA."""
        r = self.rank_for(path)
        alpha = float(pattern_value(self.alpha_pattern, path, self.lora_alpha))
        return alpha / math.sqrt(r) if self.use_rslora else alpha / r

    def add_to(self, layer: LoraLayer, name: str, path: str) -> None:
        layer.add_adapter(name, self.rank_for(path), self.scale_for(path), self.lora_dropout,
                          self.init_lora_weights)

    @classmethod
    def from_train_options(cls, *, rank: int, alpha: float, target_modules: TargetSpec,
                           modules_to_save: list[str] | None,
                           exclude_modules: TargetSpec = None) -> LoraConfig:
        return cls(r=rank, lora_alpha=alpha, target_modules=target_modules,
                   modules_to_save=modules_to_save, exclude_modules=exclude_modules)

    def train_options(self) -> dict:
        return {"rank": self.r, "alpha": self.lora_alpha}

    def to_file_dict(self) -> dict:
        """The dict PEFT's `LoraConfig.from_pretrained` reads."""
        d = asdict(self)
        d.update(
            peft_type=self.peft_type,
            task_type=None,
            base_model_name_or_path=None,
            inference_mode=True,
            layers_to_transform=None,
            layers_pattern=None,
            revision=None,
            use_dora=False,
        )
        if d["exclude_modules"] is None:  # PEFT before 0.14 refuses the key, even as null
            del d["exclude_modules"]
        return d

    @classmethod
    def from_file_dict(cls, data: dict, *, source: str = "adapter_config.json") -> LoraConfig:
        """Read PEFT's config dict; keys from newer PEFT versions are ignored with a warning."""
        known = {f.name for f in fields(cls)}
        ours = {k: v for k, v in data.items() if k in known}
        unsupported = {
            "use_dora": False, "layers_to_transform": None, "layers_pattern": None,
            "fan_in_fan_out": False, "bias": "none",
        }
        for key, neutral in unsupported.items():
            if data.get(key, neutral) not in (neutral, None, False):
                raise AdapterError(f"{source}: {key}={data[key]!r} is not supported")
        ignored = sorted(k for k in set(data) - known - _PEFT_BOOKKEEPING - set(unsupported)
                         if data[k] not in _NEUTRAL and _PEFT_DEFAULTS.get(k) != data[k])
        if ignored:
            warnings.warn(f"{source}: ignoring unknown LoRA config keys {ignored}", stacklevel=2)
        return cls(**ours)


# Keys PEFT writes that carry no meaning for the computation here.
_PEFT_BOOKKEEPING = {
    "peft_type", "task_type", "base_model_name_or_path", "inference_mode", "revision",
    "auto_mapping", "peft_version",
}
# Values that switch nothing on: a newer PEFT option left at these changes no computation.
_NEUTRAL = (None, False, {}, [], "")
_PEFT_DEFAULTS = {"megatron_core": "megatron.core", "qalora_group_size": 16}
