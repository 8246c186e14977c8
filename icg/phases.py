"""Phase timestamps of a cold start, for ``icg bench --suite coldstart``.

``mark(name)`` appends ``name<TAB>unix time`` to the file named by ``$ICG_PHASES`` and does nothing when
it is unset; ``mark(name, modules=True)`` also records the names of the modules imported so far (the
bench times importing them apart, in a fresh process). Standard library only: the CLI imports it first.
"""

from __future__ import annotations

import json
import os
import sys
import time

ENV = "ICG_PHASES"


#: The marks whose modules were listed already: a mark reached again (each batch of a folder) adds only
#: its time, so the listing (about a thousand names) is written once per mark.
_listed: set[str] = set()


def mark(name: str, *, modules: bool = False) -> None:
    path = os.environ.get(ENV)
    if not path:
        return
    now = time.time()
    with open(path, "a", encoding="utf-8") as out:
        out.write(f"{name}\t{now:.6f}\n")
        if modules and name not in _listed:
            _listed.add(name)
            out.write(f"modules\t{json.dumps(list(sys.modules))}\n")
