"""{{name}}: a gale balancer in Python (world `balancer` of gale:plugin).

gale asks `select` once per SMTP session or HTTP request for the backends
to try, best first; it tries them in that order without asking again.
Build with ./build.sh, then `gale plugin check {{name}}.wasm`.
"""

from typing import List, Tuple

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import host
from wit_world.imports.types import Backend, RequestContext

# componentize-py makes a new Selector object for every call: keep state at
# module level.
POOL: List[Backend] = []


class Selector(exports.Selector):
    def init(self, settings: List[Tuple[str, str]]) -> None:
        for key, _ in settings:
            raise Err(f"unknown setting `{key}`")
        host.log(host.Level.INFO, "{{name}} ready", [])

    def set_pool(self, pool: List[Backend], listeners: List[str]) -> None:
        POOL[:] = pool

    def select(self, ctx: RequestContext) -> List[int]:
        # Every backend that may take the session: the lowest priority tier
        # first (standbys after primaries), heavier backends first.
        eligible = [b for b in POOL if b.healthy and not b.draining and b.weight > 0]
        eligible.sort(key=lambda b: (b.priority, -b.weight))
        return [b.id for b in eligible]
