"""``jscopes eval --out-dir`` / run_faithfulness: the faithfulness rows on disk equal the in-memory
report's, the table printed from them equals the in-memory table, a killed run resumes to exactly
the rows of an uninterrupted one, and one argument set per directory (as for ``jscopes run``)."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from jscopes_tl import cli, evaluate_faithfulness, models, run_faithfulness
from jscopes_tl.runs import RunConflictError
from jscopes_tl.runs.prompts import read_prompt_dataset
from conftest import once_per_suite
from run_processes import assert_no_partial_files, environment, interrupt_run, torchrun

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "demos" / "prompts_recall.jsonl"
TEXTS = [json.loads(line)["text"] for line in DEMO.read_text().splitlines()]
N_PROMPTS = 60


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Rows are compared bit for bit across processes, and a float sum's order depends on the
    number of threads: every process here uses one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def recall():
    return models.load("recall")


def comparable(rows: list[dict]) -> list[dict]:
    """NaN equals NaN (a one-candidate prompt has no Spearman ρ)."""
    return [{key: "NaN" if isinstance(value, float) and math.isnan(value) else value for key, value in row.items()} for row in rows]


def records(out: Path) -> list[dict]:
    rows = []
    for path in sorted((out / "records").glob("*.parquet")):
        rows.extend(pq.read_table(path).to_pylist())
    return comparable(sorted(rows, key=lambda row: (row["prompt_id"], row["scorer"])))


@pytest.mark.parametrize("protocol", ["default", "paper"])
def test_rows_on_disk_equal_the_in_memory_report(recall, tmp_path, protocol):
    report = evaluate_faithfulness(recall, TEXTS, protocol=protocol, progress=False)
    run = run_faithfulness(recall, DEMO, tmp_path / "eval", protocol=protocol, shard_size=3, progress=False)
    assert run.ok and run.prompts == run.prompts_done == len(TEXTS) and run.records == len(report.rows)
    assert comparable(run.report_rows()) == comparable(report.rows)
    assert run.summary() == report.summary()
    frame = run.records_frame()
    assert frame["scorer"].tolist() == [row["scorer"] for row in report.rows]
    for row in frame.itertuples():
        evaluation = report.prompts[row.prompt_id]
        assert row.text == TEXTS[row.prompt_id] and list(row.str_tokens) == evaluation.str_tokens
        assert list(row.candidates) == evaluation.candidates.tolist()
        assert torch.equal(torch.tensor(list(row.scores)), evaluation.scores[row.scorer])
        assert torch.equal(torch.tensor(list(row.loo_scores)), evaluation.loo_scores[row.scorer])
        assert [list(positions) for positions in row.ablated] == [p.tolist() for p in evaluation.ablated[row.scorer]]
        assert torch.equal(torch.tensor(list(row.leave_one_out_kl)), evaluation.leave_one_out_kl)
    manifest = json.loads((tmp_path / "eval" / "manifest.json").read_text())
    assert manifest["run"] == {
        "command": "eval", "scorers": list(run.scorers), "fractions": [0.05, 0.1, 0.2], "ablation": "zero",
        "protocol": protocol, "batch_size": 64, "seed": 42 if protocol == "paper" else 0, "shard_size": 3,
    }
    assert manifest["model"]["weight_hash"].startswith("sha256:")


def test_pandas_and_datasets_read_the_rows_directly(recall, tmp_path):
    import datasets

    run = run_faithfulness(recall, DEMO, tmp_path / "eval", ["semantic", "random"], progress=False)
    by_pandas = pd.read_parquet(tmp_path / "eval" / "records")
    loaded = datasets.load_dataset(
        "parquet", data_files=str(tmp_path / "eval" / "records" / "*.parquet"), split="train",
        cache_dir=str(tmp_path / "hf-cache"),
    )
    assert len(by_pandas) == len(loaded) == run.records == 2 * len(TEXTS)
    by_datasets = loaded.to_pandas().sort_values(["prompt_id", "scorer"]).reset_index(drop=True)
    by_pandas = by_pandas.sort_values(["prompt_id", "scorer"]).reset_index(drop=True)
    assert by_pandas["aopc"].tolist() == by_datasets["aopc"].tolist()
    assert by_pandas["scores"].map(list).tolist() == by_datasets["scores"].map(list).tolist()


def test_the_table_printed_from_the_rows_on_disk_equals_the_in_memory_table(tmp_path, capsys):
    common = [str(DEMO), "--model", "recall", "--scorers", "semantic", "fisher", "random", "--no-progress"]
    assert cli.main(["eval", *common, "--json", str(tmp_path / "memory.json")]) == 0
    in_memory = capsys.readouterr().out
    assert cli.main(["eval", *common, "--out-dir", str(tmp_path / "eval"), "--json", str(tmp_path / "disk.json")]) == 0
    on_disk = capsys.readouterr().out
    table = [line for line in in_memory.splitlines() if line.startswith("|")]
    assert len(table) == 2 + 3 and "| semantic | 8 |" in in_memory
    assert [line for line in on_disk.splitlines() if line.startswith("|")] == table
    assert "8 of 8 prompts evaluated (24 rows)" in on_disk
    memory, disk = (json.loads((tmp_path / name).read_text()) for name in ("memory.json", "disk.json"))
    assert disk["summary"] == memory["summary"] and comparable(disk["rows"]) == comparable(memory["rows"])


def test_other_arguments_on_the_same_directory_are_refused_unless_overwrite(recall, tmp_path, capsys):
    out = tmp_path / "eval"
    run_faithfulness(recall, DEMO, out, ["semantic", "random"], progress=False)
    with pytest.raises(RunConflictError, match=r"run.scorers: \['semantic', 'random'\] → \['random'\].*--overwrite"):
        run_faithfulness(recall, DEMO, out, ["random"], progress=False)
    with pytest.raises(RunConflictError, match="run.protocol: 'default' → 'paper'"):
        run_faithfulness(recall, DEMO, out, ["semantic", "random"], protocol="paper", progress=False)
    with pytest.raises(RunConflictError, match="run.shard_size: 8 → 2"):
        run_faithfulness(recall, DEMO, out, ["semantic", "random"], shard_size=2, progress=False)
    with pytest.raises(RunConflictError, match="dataset.fingerprint"):
        run_faithfulness(recall, TEXTS[:3], out, ["semantic", "random"], progress=False)
    # eval rows and run records never share a directory
    code = cli.main(["run", str(DEMO), "--model", "recall", "--out-dir", str(out)])
    assert code == 2 and "run.command: 'eval' → 'run'" in capsys.readouterr().err
    # the command line refuses before it loads a model: a model name that cannot load is never reached
    code = cli.main(["eval", str(DEMO), "--model", "not/a/model/dir", "--out-dir", str(out), "--scorers", "random"])
    captured = capsys.readouterr()
    assert code == 2 and "run.scorers" in captured.err and len(captured.err.strip().splitlines()) == 1
    code = cli.main(["eval", str(DEMO), "--model", "recall", "--out-dir", str(out), "--scorers", "random", "--overwrite", "--no-progress"])
    assert code == 0 and "| random | 8 |" in capsys.readouterr().out
    assert set(pd.read_parquet(out / "records")["scorer"]) == {"random"}


def test_bad_rows_go_to_the_errors_table_and_the_exit_code_says_so(tmp_path, capsys):
    lines = [
        json.dumps({"text": TEXTS[0]}).encode(),
        json.dumps({"text": ""}).encode(),  # empty prompt
        b'{"text": "a=1 \xff\xfe b= 1"}',  # not UTF-8
        json.dumps({"text": "a=3 " * 200}).encode(),  # 201 tokens > n_ctx = 128
        json.dumps({"text": "a"}).encode(),  # BOS and one token: no context before the answer
        json.dumps({"text": TEXTS[1]}).encode(),
    ]
    (tmp_path / "bad.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    argv = ["eval", str(tmp_path / "bad.jsonl"), "--model", "recall", "--scorers", "semantic", "random", "--no-progress"]
    code = cli.main([*argv, "--out-dir", str(tmp_path / "eval")])
    captured = capsys.readouterr()
    assert code == 3, captured.err
    assert "2 of 6 prompts evaluated (4 rows); 4 failed" in captured.out and "| semantic | 2 |" in captured.out
    errors = pd.read_parquet(tmp_path / "eval" / "errors").sort_values("prompt_id")
    assert errors["prompt_id"].tolist() == [1, 2, 3, 4]
    reasons = dict(zip(errors["prompt_id"], errors["error"]))
    assert reasons[1] == "empty prompt" and "not UTF-8" in reasons[2] and "201 tokens" in reasons[3]
    assert "prompt 4 has 2 token(s)" in reasons[4] and errors["stage"].tolist() == ["read", "read", "tokenize", "eval"]
    assert sorted(set(pd.read_parquet(tmp_path / "eval" / "records")["prompt_id"])) == [0, 5]
    # Without --out-dir a bad row stops eval before the model loads, naming the argument and line.
    code = cli.main(argv)
    assert code == 2 and "PROMPTS" in capsys.readouterr().err


def test_eval_and_run_read_a_prompt_file_identically(tmp_path):
    path = tmp_path / "prompts.csv"
    pd.DataFrame({"id": [1, 2], "prompt": ["a=3 b=7 b= 7", 'x=1, "q" x= 1']}).to_csv(path, index=False)
    assert cli.read_prompts(path) == [row.text for row in read_prompt_dataset(path).rows] == ["a=3 b=7 b= 7", 'x=1, "q" x= 1']
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a=3 b= 3"}\n{not json\n')
    with pytest.raises(cli.UsageError, match=r"PROMPTS .*bad.jsonl' line 2: not JSON"):
        cli.read_prompts(bad)
    assert cli.read_prompts(bad, limit=1) == ["a=3 b= 3"]


def test_a_paper_passage_longer_than_the_context_is_refused_not_truncated(recall):
    from jscopes_tl.errors import ScopeInputError

    with pytest.raises(ScopeInputError, match=r"prompts\[1\] has 202 tokens"):
        evaluate_faithfulness(recall, [TEXTS[0], "a=3 " * 200 + "a= 3"], ["random"], protocol="paper", progress=False)


# --------------------------------------------------------------------------------- killed and resumed
@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("prompts") / "recall.jsonl"
    texts = [prompt.text + prompt.answer for prompt in models.get_task("recall").labelled_prompts(N_PROMPTS, seed=1)]
    path.write_text("".join(json.dumps({"text": text}) + "\n" for text in texts))
    return path


@pytest.fixture(scope="module")
def reference(recall, prompt_file, tmp_path_factory) -> list[dict]:
    """The rows of an uninterrupted single-process run (one prompt a shard: many commits)."""
    out = tmp_path_factory.mktemp("reference") / "eval"
    run_faithfulness(recall, prompt_file, out, shard_size=1, progress=False)
    return records(out)


def command(prompt_file: Path, out: Path) -> list[str]:
    return ["eval", str(prompt_file), "--model", "recall", "--out-dir", str(out), "--shard-size", "1", "--no-progress"]


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL], ids=lambda s: s.name)
@once_per_suite
def test_a_killed_eval_resumes_to_exactly_the_uninterrupted_rows(recall, prompt_file, reference, tmp_path, stop):
    out = tmp_path / "eval"
    interrupt_run(command(prompt_file, out), out, stop)
    shards = sorted((out / "records").glob("*.parquet"))
    assert all(pq.read_table(shard).num_rows == 6 for shard in shards)  # none torn: six scorers a prompt
    assert 3 <= len(shards) < N_PROMPTS, "the run was not stopped mid-run"
    done = subprocess.run(
        [sys.executable, "-m", "jscopes_tl", *command(prompt_file, out)],
        env=environment(), capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert f"this run evaluated {N_PROMPTS - len(shards)} prompts" in done.stdout
    assert records(out) == reference
    assert_no_partial_files(out)


@once_per_suite
def test_two_ranks_on_gloo_write_exactly_the_single_process_rows(prompt_file, reference, tmp_path):
    out = tmp_path / "eval"
    done = subprocess.run(torchrun(2, command(prompt_file, out)), env=environment(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"{N_PROMPTS} of {N_PROMPTS} prompts evaluated" in done.stdout and "on 2 ranks" in done.stdout
    assert done.stdout.count("| random |") == 1  # rank 0 prints the table
    assert records(out) == reference


def test_the_command_lines_seed_sets_the_random_baseline_in_memory_and_on_disk(tmp_path, capsys):
    def random_rows(*extra: str) -> list:
        path = tmp_path / f"rows{len(list(tmp_path.iterdir()))}.json"
        argv = ["eval", str(DEMO), "--model", "recall", "--scorers", "random", "--no-progress", "--json", str(path), *extra]
        assert cli.main(argv) == 0
        capsys.readouterr()
        return comparable(json.loads(path.read_text())["rows"])

    default, seed_1, seed_1_again = random_rows(), random_rows("--seed", "1"), random_rows("--seed", "1")
    assert seed_1 == seed_1_again and seed_1 != default
    assert random_rows("--seed", "1", "--out-dir", str(tmp_path / "eval")) == seed_1  # the same rows, from disk
    code = cli.main(["eval", str(DEMO), "--model", "recall", "--scorers", "random", "--out-dir", str(tmp_path / "eval"), "--seed", "2"])
    assert code == 2 and "run.seed: 1 → 2" in capsys.readouterr().err  # a resumed run keeps its seed
