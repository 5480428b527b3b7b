"""The HTML report of a run (``eval/report.html``) and of several runs (``selfplay eval compare --html``).

Layering: read by :mod:`selfplay.stages.report` and the CLI; reads run directories and
:mod:`selfplay.envs.verifiers` only. It never imports the stages, and never branches on a method's name.
"""

from selfplay.htmlreport.build import MAX_PROMPTS, write_compare_html, write_html_report

__all__ = ["MAX_PROMPTS", "write_compare_html", "write_html_report"]
