"""How far two runs of one model may differ and still be the same model.

Used wherever the gateway compares logits: an adapter's recorded reference outputs at intake
(edge/adapters.py) and each provider against the CPU (edge/doctor.py). The export side's
parity tolerance against torch follows the same precisions (export/onnx/merge.py).
"""

from __future__ import annotations

from .provider_options import CPU

FP32_CPU = 1e-4  # the same graph in fp32 on the CPU: summation order only
FP32_GPU = 1e-3  # GPU kernels may use TF32 matmuls (10-bit mantissa inputs)
FP16 = 1e-2  # fp16 weights round to ~1e-3 relative: logits of O(10) move by ~1e-2


def logits_tolerance(precision: str, provider: str, fp16_engine: bool = False) -> float:
    """Max |logit difference| allowed for a bundle of `precision` run on `provider`;
    `fp16_engine`: the provider computes in fp16 whatever the bundle holds (TensorRT with
    trt_fp16_enable)."""
    if precision == "fp16" or fp16_engine:
        return FP16
    return FP32_CPU if provider == CPU else FP32_GPU
