"""Reading a study: report data from pure functions, drawn into one offline HTML file.

:func:`write_report` is what the search calls at its end and ``autosculpt report`` runs;
:func:`get_report_data` gives the same content as plain values (no HTML), and
:func:`render_report` turns it into the page. Everything the page needs (plotly.js,
styles, images) is inline: it opens from a file on a machine with no network.
"""

from ._data import ReportData, get_report_data
from ._render import render_report, write_report
from ._samples import QualitativeSample

__all__ = ["QualitativeSample", "ReportData", "get_report_data", "render_report", "write_report"]
