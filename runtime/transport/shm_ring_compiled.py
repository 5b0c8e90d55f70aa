"""Whether this process uses the ring's compiled core (``_ringcore*.c``), and the check that
it matches the layout in ``shm_ring.py``.

The compiled core does a message's ring work (write one record, read one, hand it
back) in one call; the Python classes in ``shm_ring_writer.py`` and
``shm_ring_reader.py`` do the same work and are used where the extension was not
built (no C compiler at install time) or ``ACTOREXEC_SHM_PURE_PYTHON=1`` (read at
import; children inherit it). Both read and write the same memory, so a process
of either kind talks to one of the other (tested). A core built for another
layout is refused loudly, never used.
"""

from __future__ import annotations

import os
from types import ModuleType

from . import shm_ring


def _load() -> ModuleType | None:
    if os.environ.get("ACTOREXEC_SHM_PURE_PYTHON", "0") not in ("", "0"):
        return None
    try:
        from . import _ringcore  # type: ignore[attr-defined]
    except ImportError:
        return None
    expected = {
        "LAYOUT_VERSION": shm_ring.LAYOUT_VERSION, "LINE": shm_ring.LINE,
        "RECORD_SIZE": shm_ring.RECORD.size, "W_WRITE": shm_ring.W_WRITE,
        "W_PUBLISHED": shm_ring.W_PUBLISHED, "W_READ0": shm_ring.W_READ0,
        "KIND_MESSAGE": shm_ring.KIND_MESSAGE, "KIND_WRAP": shm_ring.KIND_WRAP,
        "FIRST": shm_ring.FIRST, "LAST": shm_ring.LAST, "CHUNK": shm_ring.CHUNK,
        "LANE1": shm_ring.LANE1, "MAX_FRAMES": shm_ring.MAX_FRAMES,
    }
    differ = {k: (getattr(_ringcore, k, None), v) for k, v in expected.items()
              if getattr(_ringcore, k, None) != v}
    if differ:
        raise ImportError(f"the compiled ring core was built for another layout: {differ} "
                          "(reinstall actorexec)")
    _ringcore.register_corrupt_error(shm_ring.RingCorrupt)
    return _ringcore


CORE = _load()
COMPILED = CORE is not None
