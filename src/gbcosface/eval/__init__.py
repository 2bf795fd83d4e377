"""Evaluation: .bin verification (10-fold), IJB-B/IJB-C 1:1 (templates, scores, TAR@FAR), reports, ONNX export.

Modules: `verification` (LFW-style sets), `roc` (TAR@FAR conventions, AUC), `ijb` (template and pair
maths, `evaluate_ijb`), `features` (embedding and the feature cache), `run_ijb` (one evaluation end
to end), `report` (tables, roc.png, report.html), `export` (ONNX), `cli` (the verbs). Submodules are
imported on use so that `import gbcosface.eval.roc` stays light.
"""
