"""The compiled DAG follows the rules of a real KFP backend (gbcosface.pipeline_rules).

Why a rule check and not a run: no KFP backend can run here, and the local runner substitutes
placeholders anywhere, so a local run cannot see the bug these rules catch. The rules are taken
from the backend driver's source (resolve.go: whole-value substitution); the checker is shown to
catch the exact construct the pipeline once used (an f-string run prefix with the display name).
These placeholder rules are checked on 2.17 (a backend that substitutes run placeholders at all);
the per-version rules are in test_backend_matrix.py.
"""

# (No `from __future__ import annotations`: KFP reads the component annotations as real types.)

import yaml
from kfp import compiler, dsl

from gbcosface.pipeline_cli import compile_pipeline
from gbcosface.pipeline_rules import problems as all_problems

NEWEST = "2.17"


def problems(ir):
    return all_problems(ir, backend=NEWEST)


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def _echo(text: str) -> str:
    return text


def _ir(pipeline, tmp_path) -> dict:
    path = tmp_path / "ir.yaml"
    compiler.Compiler().compile(pipeline, package_path=str(path))
    return next(yaml.safe_load_all(path.read_text()))


def test_the_shipped_pipeline_follows_the_backend_rules(tmp_path):
    ir, platform = yaml.safe_load_all(compile_pipeline(tmp_path / "p.yaml", backend=NEWEST).read_text())
    assert all_problems(ir, backend=NEWEST, platform=platform) == []


def test_an_embedded_run_placeholder_is_caught(tmp_path):
    """The old DAG's construct: `f"{output_uri}/runs/{RUN_ID}"` with the display name."""

    @dsl.pipeline(name="old-style")
    def old_style(output_uri: str):
        _echo(text=f"{output_uri}/runs/{dsl.PIPELINE_JOB_NAME_PLACEHOLDER}")

    found = problems(_ir(old_style, tmp_path))
    assert any("embeds" in p and "longer string" in p for p in found), found
    assert any("display name" in p for p in found), found


def test_even_the_unique_id_is_caught_inside_a_longer_string(tmp_path):
    @dsl.pipeline(name="uuid-in-path")
    def uuid_in_path():
        _echo(text=f"s3://bucket/runs/{dsl.PIPELINE_JOB_ID_PLACEHOLDER}")

    found = problems(_ir(uuid_in_path, tmp_path))
    assert len(found) == 1 and "{{$.pipeline_job_uuid}}" in found[0]


def test_a_whole_unique_id_passes_and_the_display_name_alone_does_not(tmp_path):
    @dsl.pipeline(name="whole")
    def whole():
        _echo(text=dsl.PIPELINE_JOB_ID_PLACEHOLDER)

    assert problems(_ir(whole, tmp_path)) == []

    @dsl.pipeline(name="display-name")
    def display_name():
        _echo(text=dsl.PIPELINE_JOB_NAME_PLACEHOLDER)

    found = problems(_ir(display_name, tmp_path))
    assert len(found) == 1 and "not unique" in found[0]


def test_a_placeholder_in_a_parameter_default_is_caught(tmp_path):
    @dsl.pipeline(name="default")
    def with_default(run_id: str = dsl.PIPELINE_JOB_ID_PLACEHOLDER):
        _echo(text=run_id)

    found = problems(_ir(with_default, tmp_path))
    assert any("default" in p for p in found), found
