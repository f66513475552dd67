"""File-system helpers shared by the stages that write folders (data cache, tokenizer, model)."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def replace_folder(staging: Path, target: Path) -> None:
    """Rename the finished folder `staging` to `target` atomically.

    An existing target is moved aside first and removed afterwards; if the rename fails it is put back,
    so `target` is always either the old folder or the new one, never half of each.
    """
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.replace(target, old / target.name)
    try:
        os.replace(staging, target)
    except BaseException:
        if old is not None:
            os.replace(old / target.name, target)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
