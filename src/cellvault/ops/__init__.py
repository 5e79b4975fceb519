"""The operations a :class:`~cellvault.Vault` runs, one module each.

Each public method of the vault opens one :class:`~cellvault.run.Run` and
hands it, with the vault's :class:`~cellvault.ops.resources.Resources`, to a
function here:

* :mod:`~cellvault.ops.backup`: pack each cell once, store it (:mod:`~cellvault.ops.store`);
* :mod:`~cellvault.ops.verify`: the four verify levels (the drill in :mod:`~cellvault.ops.drill`);
* :mod:`~cellvault.ops.restore`: plan (:mod:`~cellvault.ops.plan`), stage, load, swap;
* :mod:`~cellvault.ops.prune`: apply each target's retention policy;
* :mod:`~cellvault.ops.listing`: archives, cells, status and metrics, read without a run.
"""
