"""The demo (`make demo`, `python -m export.demo`), its gateway half, and a private Mosquitto
for the demo, the tests and the benchmarks."""
