"""Control of the agent's serving state: the reconciler is its one owner; engine loading is in ``edge_agent.swap``."""

from edge_agent.control.reconciler import OutcomeReporter, Reconciler, ReconcilerCounters

__all__ = ["OutcomeReporter", "Reconciler", "ReconcilerCounters"]
