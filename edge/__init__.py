"""Gateway runtime: runs adapter bundles with onnxruntime and serves them over MQTT.

Imports numpy, onnxruntime, paho-mqtt and small pure libraries only: never torch or onnx.
"""

from __future__ import annotations

__version__ = "0.1.0"
