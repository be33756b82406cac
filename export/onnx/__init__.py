"""torch -> ONNX: merged models, bundles with adapter slots, and the parity check."""
