"""Training data from the trees: preference pairs, labelled completions, trajectories,
critiques and step labels, in the column layouts TRL's trainers read."""

from deliberate.export.base import ExportOptions
from deliberate.export.kinds import kind_names
from deliberate.export.runner import ExportResult, aexport_run, export_run

__all__ = ["ExportOptions", "ExportResult", "aexport_run", "export_run", "kind_names"]
