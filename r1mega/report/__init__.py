"""Run reports (``r1mega report``): stage status and wall times, held-out eval table, learning-target checks
and GRPO training curves of a run directory. See :func:`write_report`."""
from r1mega.report.writer import write_report

__all__ = ["write_report"]
