"""`bench compare`: a markdown report comparing finished runs, with CSV/JSON beside it.

    build.py        build_report: read runs, group into sections, bootstrap, write md/HTML/CSV/JSON
    html.py         the HTML report and its per-image explorer (static/: its template, JS, CSS)
    thumbs.py       the explorer's thumbnails, cached by image content
    load.py         finished runs, read through the run-folder owner (bench.run.folder)
    tokens.py       PTB tokens of the runs, cached in each run's tokens.json
    run_cache.py    the runs with their tokens and degeneration, kept in .cache/compare/ by content
    compute_cache.py  per-run bootstrap samples and per-section reference tables, .cache/compare/
    section.py      comparable sections and every figure their tables need
    bootstrap.py    the seeded image-level bootstrap and paired p-values
    tables.py, figures.py, markdown.py, diagnostics.py, meteor.py, cider_tables.py, cider_chunks.py

The run path never imports this package (pandas, matplotlib); the package imports no torch.
"""

from bench.report.build import ReportResult, SectionSummary, build_report

__all__ = ["ReportResult", "SectionSummary", "build_report"]
