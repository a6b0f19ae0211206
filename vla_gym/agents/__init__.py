"""Agents: scripted experts now; the VLA network, BC and PPO build on the same seams."""

from vla_gym.agents.scripted import ScriptedPickPolicy

__all__ = ["ScriptedPickPolicy"]
