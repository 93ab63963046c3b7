"""The object the compiler stages pass along."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..graph import topo_order


@dataclass
class Module:
    """The derived entry points of a graph as symbolic outputs, and what the stages add to them.

    ``entries`` maps an entry name (loss, output, grad, jv, jtu, gv, hv) to its output Values (``None``
    for an identically zero result); ``vector`` is the set of nodes that depend on a seed v or u
    (filled by the stage pass).
    """
    graph: object
    options: dict = field(default_factory=dict)
    passes: object = None
    entries: dict = field(default_factory=dict)
    vector: set = field(default_factory=set)
    history: list = field(default_factory=list)
    plans: dict = field(default_factory=dict)     # entry -> (batch nodes, vector nodes), scheduled
    live: set = field(default_factory=set)        # every node an entry needs (dce)
    kernels: int = 0                              # fused kernels made (fuse)

    def outputs(self, names=None):
        names = self.entries if names is None else names
        return [v for n in names for v in self.entries[n] if v is not None]

    def nodes(self, names=None):
        """Every node the given entries need, in a deterministic topological order."""
        return topo_order(self.outputs(names))

    def replace(self, mapping):
        """Point the entries at replacement nodes (after a rewriting stage)."""
        for name, outs in self.entries.items():
            self.entries[name] = [None if v is None else mapping.get(v, v) for v in outs]
        if self.passes is not None:
            self.passes.outputs = self.entries
