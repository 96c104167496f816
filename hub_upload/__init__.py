"""Export a trained Speeder run to a self-sufficient Hub model folder (card, item cache, remote code) and push it."""

from .card import model_card
from .export import EXPORT_INFO, TrainingRun, export_run, read_run
from .upload import PushError, push

__all__ = ["EXPORT_INFO", "PushError", "TrainingRun", "export_run", "model_card", "push", "read_run"]
