"""Distributed GB-CosFace training: `gbcosface train`, `gbcosface.train.trainer.train(cfg)`.

See docs/training.md. Nothing is imported here on purpose: the CLI registry imports
`gbcosface.train.cli` for every verb, and that must not pull in torch or boto3.
"""
