"""`bench compare`: a markdown report comparing finished runs, with CSV/JSON beside it.

    build.py        build_report: read runs, group into sections, bootstrap, write md/CSV/JSON
    load.py         finished runs, read through the run-folder owner (bench.run.folder)
    tokens.py       PTB tokens of the runs, cached in each run's tokens.json
    section.py      comparable sections and every figure their tables need
    bootstrap.py    the seeded image-level bootstrap and paired p-values
    tables.py, figures.py, markdown.py, diagnostics.py, meteor.py, cider_tables.py

The run path never imports this package (pandas, matplotlib, torch).
"""

from bench.report.build import ReportResult, SectionSummary, build_report

__all__ = ["ReportResult", "SectionSummary", "build_report"]
