"""KFP v2 components for the gbcosface pipeline: thin wrappers, all logic is in `gbcosface.steps`."""
