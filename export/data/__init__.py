"""Sensor data loading: turning files into validated (N, C, L) float32 arrays.

Sources: `.npz` files (arrays `X` (N, C, L), `y` (N,), optional `class_names`, `channel_names`),
UCR/UEA `.ts` files, `ucr:NAME:train|test` for the datasets bundled in the sktime wheel (read
directly from the file: sktime is never imported), and CSV / Parquet tables as plants export
them, wide or long (docs/DATA.md; `TableColumns` names their columns).

This package imports only numpy, the standard library and edge/ (pyarrow only when a table
is read): `ChannelStats` is the gateway's normalisation (edge/contract/preprocessing.py), so it
has to stay torch-free.
"""

from __future__ import annotations

from .columns import TableColumns
from .dataset import SensorDataset, load_dataset
from .split import ChannelStats, stratified_indices, train_val_split
from .ts import bundled_dataset_path, read_ts

__all__ = [
    "ChannelStats",
    "SensorDataset",
    "TableColumns",
    "bundled_dataset_path",
    "load_dataset",
    "read_ts",
    "stratified_indices",
    "train_val_split",
]
