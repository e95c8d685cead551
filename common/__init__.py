"""Shared by the controller, agents and tools: specs, settings, errors."""
