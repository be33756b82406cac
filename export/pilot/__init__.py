"""`edge-export pilot`: a line's pilot, its adapter chosen, and the KPI report."""
