"""Exports the strategy that places the actor and the critic on their own ranks, registered by name."""

from lit_rl.distributed.placement import ActorCriticPlacement

__all__ = ["ActorCriticPlacement"]
