"""Pipeline steps: the logic behind each KFP component (components/ only call these)."""
