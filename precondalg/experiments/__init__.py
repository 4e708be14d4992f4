"""Experiments of the papers precondalg reproduces (tasks, harnesses and derived reference values)."""
