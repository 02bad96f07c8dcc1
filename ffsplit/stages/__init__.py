"""The stages of one export, in order, each taking the plan and returning a small dataclass.

``prepare`` (load, find the adapter, profile), ``split`` (the SplitFFNs and
their weights), ``capture`` (one exporter strategy and the graph passes) and
``verify`` (the separation guard and the three-way parity). ``api.export``
runs them, trying the next exporter when one fails to capture or misses
fidelity.
"""
