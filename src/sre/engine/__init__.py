"""The engine: turns (and, later, durable runs) that orchestrate the store and the models.

It owns the order of things in a turn: read state, call the model, commit, announce. It does not
speak HTTP and does not parse wire formats of models.
"""

from sre.engine.turn import PreparedTurn, TurnEngine

__all__ = ["PreparedTurn", "TurnEngine"]
