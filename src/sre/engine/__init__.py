"""The engine: every turn, from its request to its last commit, over the store and the models.

It owns the order of things in a turn: prepare (validate and read), then the step loop (model steps
through the context layer and tool steps), each step's commit, the turn's one ending. Plain turns,
agent turns and background runs share the loop and the model step; what differs is the ledger their
events and commits go through. It does not speak HTTP and does not parse wire formats of models.
"""

from sre.engine.turn import PreparedTurn, TurnEngine

__all__ = ["PreparedTurn", "TurnEngine"]
