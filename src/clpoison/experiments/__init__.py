"""Experiments: config schema and presets, the pipeline runner, results and reports."""

from .config import ExperimentConfig, build_config, list_presets, load_config
from .runner import run_experiment

__all__ = ["ExperimentConfig", "build_config", "list_presets", "load_config", "run_experiment"]
