"""What a rank runs when the package is shipped (``--ship-package``): this module
is pickled by value, so the rank needs nothing of ddp_kbit to load it; it puts the
shipped zip on ``sys.path``, then loads the real entry point and its arguments."""
from __future__ import annotations

import hashlib
import importlib
import os
import pickle
import sys
import tempfile


def run_shipped(zip_bytes: bytes, module: str, name: str, payload: bytes):
    path = os.path.join(tempfile.gettempdir(), f"ddp_kbit-{hashlib.sha256(zip_bytes).hexdigest()[:16]}.zip")
    if not os.path.exists(path):
        tmp = f"{path}.{os.getpid()}"
        with open(tmp, "wb") as fh:
            fh.write(zip_bytes)
        os.replace(tmp, path)
    if path not in sys.path:
        sys.path.insert(0, path)
    fn = getattr(importlib.import_module(module), name)
    return fn(pickle.loads(payload))
