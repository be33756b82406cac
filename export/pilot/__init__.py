"""The pilot: candidates searched within a budget, the recommended adapter, the KPI report."""
