"""report.html of a run or compare folder: saved inputs (artifacts), figures, HTML, build."""
