"""The compiled contraction executor, as the layers of :mod:`trkit.nn` import it.

The executor is the ``"compiled"`` backend of :func:`trkit.contract.contract` and lives in
:mod:`trkit.contract.compiled`; the layers keep their plans from :func:`get_plan` and run them with
:func:`execute` so a forward pays no cache lookup.
"""

from trkit.contract.compiled import COST, ExecCost, describe, execute, get_plan, plan_cost, run

__all__ = ["run", "execute", "get_plan", "describe", "plan_cost", "COST", "ExecCost"]
