"""Which execution provider runs each node of a session, read from onnxruntime's profile.

On a GPU gateway the providers split the graph: TensorRT takes what it can (as fused
subgraphs), CUDA the rest, and the CPU whatever neither can run, silently. A session opened
with profiling on records, per node run, its provider and op type; after the warm-up the
engine stops profiling, reads that record once, deletes it, and the service logs the split
and puts it in its status (docs/JETSON.md, "Which provider runs what").
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import onnxruntime as ort


def profiling_options(opts: ort.SessionOptions) -> Path:
    """Turn profiling on in `opts`; the folder the profile will be written to."""
    folder = Path(tempfile.mkdtemp(prefix="edge-placement-"))
    opts.enable_profiling = True
    opts.profile_file_prefix = str(folder / "profile")
    return folder


def read_placement(session: ort.InferenceSession, folder: Path) -> dict[str, dict[str, int]]:
    """End profiling and return {provider: {op type: nodes}} over the runs made so far; the
    profile is deleted. Empty when nothing ran or the profile cannot be read."""
    try:
        path = session.end_profiling()
        events = json.loads(Path(path).read_text()) if path else []
    except (OSError, ValueError, RuntimeError):
        events = []
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    seen: dict[str, tuple[str, str]] = {}  # node name -> (provider, op type)
    for event in events if isinstance(events, list) else []:
        args = event.get("args") if isinstance(event, dict) else None
        if event.get("cat") == "Node" and isinstance(args, dict) and args.get("provider"):
            seen[event.get("name", "").removesuffix("_kernel_time")] = (
                str(args["provider"]), str(args.get("op_name", "?")))
    out: dict[str, Counter] = {}
    for provider, op in seen.values():
        out.setdefault(provider, Counter())[op] += 1
    return {provider: dict(ops) for provider, ops in out.items()}


def describe(placement: dict[str, dict[str, int]]) -> str:
    """One line: nodes per provider, with the op types of those off the first one."""
    if not placement:
        return "node placement unknown"
    parts = []
    for provider, ops in placement.items():
        parts.append(f"{provider} {sum(ops.values())} node(s) "
                     f"({', '.join(f'{op} x{n}' for op, n in sorted(ops.items()))})")
    return "; ".join(parts)
