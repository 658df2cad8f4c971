"""What the notebooks show: their settings, figures, routing analysis, widgets, the pipeline and its report."""
