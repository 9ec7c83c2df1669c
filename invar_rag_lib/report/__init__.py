"""Tables and figures built from saved results files only (no model, no data), by topic."""
