"""report.html of a run or compare folder: saved inputs (artifacts, read back by inputs), figures,
HTML, number formatting, the sections both reports share (sections), each report's own sections
(run_sections, compare_sections) and the entry point (build)."""
