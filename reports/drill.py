def build_drill_report(path, pdf=True):
    return path / "report.html", None
