"""analysis: experiment folder -> report tables, figures and the exported best model (reads files only, starts no trial)."""
