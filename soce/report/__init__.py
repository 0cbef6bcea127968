"""The run report as a self-contained HTML page, and the SVG charts it draws (`soce.report.charts`).

Light to import (Jinja2 and the standard library only), so the API's dashboard can draw the same
sections and charts as report.html.
"""

from soce.report.page import SECTIONS, render_report_html, render_report_sections

__all__ = ["SECTIONS", "render_report_html", "render_report_sections"]
