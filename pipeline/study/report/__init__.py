"""The study's report: its typed input (``tables.StudyData``), the tables, the plots, the
HTML page and the markdown, written by ``write.write_study_report``.

It lives with the study because it renders the study's own records (search winners,
paired tests, sweeps); what it shares with the pipeline report (markdown tables, figure
saving, labels) comes from ``pipeline.reporting.common``.
"""
