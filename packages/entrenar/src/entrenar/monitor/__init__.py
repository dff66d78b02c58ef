"""Watching a run from its own files: the run-state file (`entrenar.monitor.state`) and ``entrenar monitor``."""
