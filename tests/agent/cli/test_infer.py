"""`lepton-agent infer`: every variant through the engine on the same frames; bad input is
one line and exit status 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lepton_edge.agent.cli import main
from tests.agent.inference_bundle import Bundle, fm_bundle  # noqa: F401


def test_infer_prints_one_row_per_variant(
    fm_bundle: Bundle,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    ids = [fm_bundle.ids("onnx", "fp32")[0], fm_bundle.ids("tflite", "int8")[0]]
    argv = ["infer", str(fm_bundle.dir), "--frames", "300", "--threads", "1", "--json"]
    assert main([*argv, "--variant", ids[0], "--variant", ids[1]]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["variant"] for r in rows] == ids
    for row in rows:
        assert row["frames"] == 300 and row["errors"] == 0
        assert row["accuracy"] > 0.8 and 0 < row["p50_ms"] <= row["p99_ms"]
    # same frames, fp32 and int8: accuracy within a point
    assert abs(rows[0]["accuracy"] - rows[1]["accuracy"]) < 0.01


def test_infer_user_errors(
    fm_bundle: Bundle,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["infer", str(tmp_path)]) == 2
    assert "not a bundle" in capsys.readouterr().err
    assert main(["infer", str(fm_bundle.dir), "--variant", "nope"]) == 2
    err = capsys.readouterr().err
    assert "no variant nope" in err and len(err.strip().splitlines()) == 1
    (tmp_path / "manifest.json").write_text("{}")
    assert main(["infer", str(tmp_path)]) == 2
    assert "not a valid manifest" in capsys.readouterr().err
