"""The local run's console: one line per step on the terminal, everything else in the log file.

Real parts: KFP's own local SubprocessRunner prints what it prints (executor input, streamed step
output, outputs) into the StepConsole; only the terminal is a StringIO.
"""

# (No `from __future__ import annotations`: KFP reads the component annotations as real types.)
import io
import logging
import sys
from pathlib import Path

import kfp
import pytest
from kfp import dsl, local

from gbcosface.console import StepConsole, step_console


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def _say(text: str) -> str:
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for step in (10, 20):
        # What the emulator echoes for the leader replica's progress lines.
        print(f"[master-0] 2026-12-01 10:00:00 INFO gbcosface.train: step {step}/20 epoch 1 | 1.0 samples/s | "
              "eta 0:00:10 | loss=16.4157 cos_neg=0.2814 loss_neg=6.6955 cos_v=0.5000 | lr 1.000e-01 | data wait 1%")
        print(f"[worker-0] 2026-12-01 10:00:00 INFO gbcosface.data: staged {step} files")
    return text.upper()


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def _fail(text: str) -> str:
    raise ValueError(f"bad input {text!r}")


@dsl.pipeline(name="console-demo")
def _two_steps(text: str = "hi"):
    first = _say(text=text)
    _say(text=first.output)


@dsl.pipeline(name="console-fail")
def _failing(text: str = "hi"):
    _fail(text=text)


def _run(pipeline, tmp_path):
    terminal = io.StringIO()
    log_path = tmp_path / "pipeline.log"
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"),
               raise_on_error=True)
    old = sys.stdout
    sys.stdout = terminal
    try:
        with step_console(log_path):
            try:
                pipeline()
            except RuntimeError:
                pass
    finally:
        sys.stdout = old
    return terminal.getvalue().splitlines(), log_path.read_text()


def test_a_local_run_prints_one_line_per_step_and_logs_the_rest(tmp_path):
    lines, log = _run(_two_steps, tmp_path)
    step_lines = [line for line in lines if "SUCCESS" in line and " s" in line and "pipeline" not in line]
    assert [line.split()[0] for line in step_lines] == ["say", "say-2"], lines
    progress = [line for line in lines if line.strip().startswith("train step")]
    assert progress == ["      train step 10/20 epoch 1 | 1.0 samples/s | eta 0:00:10 | loss=16.4157",
                        "      train step 20/20 epoch 1 | 1.0 samples/s | eta 0:00:10 | loss=16.4157"] * 2
    assert any("pipeline console-demo: SUCCESS" in line for line in lines)
    # The machine output stays out of the terminal but is all in the log.
    assert "executor_input" in log or '"inputs"' in log
    assert not any("executor" in line.lower() for line in lines)
    assert len(lines) < 12, lines


def test_a_failed_step_shows_its_error_and_the_log_path(tmp_path):
    lines, log = _run(_failing, tmp_path)
    text = "\n".join(lines)
    assert "fail" in text and "FAILURE" in text
    assert "ValueError: bad input 'hi'" in text
    assert f"full log: {tmp_path / 'pipeline.log'}" in text
    assert "ValueError: bad input 'hi'" in log


@pytest.mark.parametrize("chunks", [["Task 'a' finished with status SUCCESS\n"],
                                    ["Task 'a' fini", "shed with status SUCC", "ESS\nrest"]])
def test_lines_split_across_writes_are_parsed_whole(chunks):
    term, log = io.StringIO(), io.StringIO()
    console = StepConsole(log, term)
    for chunk in chunks:
        console.write(chunk)
    assert term.getvalue().split() == ["a", "SUCCESS", "0.0", "s"]
    assert log.getvalue() == "".join(chunks)


def _record(pathname: str, msg: str, level: int = logging.INFO) -> logging.LogRecord:
    return logging.LogRecord("root", level, pathname, 1, msg, None, None)


def test_kfp_root_logger_lines_go_to_the_log_file_not_the_terminal(tmp_path):
    # KFP 2.17's local orchestrator calls logging.info() for every ParallelFor item and skipped
    # condition; the root handler a CLI set up earlier writes to the terminal.
    kfp_file = str(Path(kfp.__file__).parent / "local" / "dag_orchestrator.py")
    terminal, handler_out = io.StringIO(), io.StringIO()
    root = logging.getLogger()
    handler = logging.StreamHandler(handler_out)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    old_level, old_stdout = root.level, sys.stdout
    root.setLevel(logging.INFO)
    sys.stdout = terminal
    try:
        with step_console(tmp_path / "pipeline.log"):
            root.handle(_record(kfp_file, "Applying expression selector 'x' to parent value"))
            root.handle(_record(__file__, "ours, stays on the terminal"))
        root.handle(_record(kfp_file, "after the block: as before"))
        # The block leaves the root's handlers as it found them.
        assert handler.filters == [] and not any(isinstance(h.stream, StepConsole) for h in root.handlers
                                                 if isinstance(h, logging.StreamHandler))
    finally:
        sys.stdout = old_stdout
        root.removeHandler(handler)
        root.setLevel(old_level)
    log = (tmp_path / "pipeline.log").read_text()
    assert "INFO root: Applying expression selector 'x' to parent value" in log
    assert "Applying expression selector" not in handler_out.getvalue() + terminal.getvalue()
    assert "ours, stays on the terminal" in handler_out.getvalue()
    assert "after the block: as before" in handler_out.getvalue()
