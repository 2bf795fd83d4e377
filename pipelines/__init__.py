"""The gbcosface Kubeflow pipeline (DAG) and its compile entry point."""
