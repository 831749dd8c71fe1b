"""Placing the actor and the critic on their own ranks: a Lightning strategy, registered by name."""

from lit_rl.distributed.placement import ActorCriticPlacement

__all__ = ["ActorCriticPlacement"]
