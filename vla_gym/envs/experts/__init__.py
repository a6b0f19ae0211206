"""Scripted experts on privileged simulator state, composed from shared skills."""

from vla_gym.envs.experts.scripted import ScriptedExpert

__all__ = ["ScriptedExpert"]
