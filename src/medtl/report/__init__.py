"""Self-contained HTML reports of runs and studies (``medtl report``)."""

from medtl.report.build import REPORT_NAME, write_report

__all__ = ["REPORT_NAME", "write_report"]
