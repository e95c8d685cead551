"""report: PNG plots of the paper's figures and a Markdown page (placeholder)."""
def add_arguments(p):
    pass
