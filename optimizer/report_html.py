"""Kept for callers not yet moved to `soce.report`."""

from soce.report import render_report_html as render_report_html
