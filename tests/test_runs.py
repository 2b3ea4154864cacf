"""Dataset runs (jscopes_tl.runs): records on disk that readers load directly, equal to the
scopes called one prompt at a time; bad rows in an errors table; one argument set per directory."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from jscopes_tl import cli, fisher_scope, models, run_dataset, semantic_scope, temperature_scope
from jscopes_tl.runs import RunConflictError
from jscopes_tl.runs.prompts import read_prompt_dataset

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "demos" / "prompts_recall.jsonl"
SCOPES = {"semantic": semantic_scope, "fisher": fisher_scope, "temperature": temperature_scope}


@pytest.fixture(scope="module")
def recall():
    return models.load("recall")


def recall_prompts(n: int, seed: int = 0) -> list[str]:
    return [prompt.text for prompt in models.get_task("recall").labelled_prompts(n, seed=seed)]


def test_records_equal_the_scopes_called_one_prompt_at_a_time(recall, tmp_path):
    summary = run_dataset(recall, DEMO, tmp_path / "run", kinds="all", position=[-1, -2], progress=False)
    assert summary.ok and summary.prompts == summary.prompts_done == 8
    records = summary.records_frame()
    assert len(records) == summary.records == 8 * 3 * 2
    texts = [json.loads(line)["text"] for line in DEMO.read_text().splitlines()]
    for record in records.itertuples():
        assert record.text == texts[record.prompt_id]
        alone = SCOPES[record.kind](recall, record.text, position=record.position)
        assert list(record.str_tokens) == alone.str_tokens and list(record.tokens) == alone.tokens.tolist()
        torch.testing.assert_close(torch.tensor(record.scores), alone.scores, rtol=1e-4, atol=1e-7)
        assert list(record.prediction_token_ids) == alone.prediction.token_ids.tolist()
        if record.kind == "semantic":
            assert list(record.target) == alone.target.tolist()
        metadata = json.loads(record.metadata)
        assert metadata["numerics"] == alone.metadata["numerics"]
        if record.kind == "fisher":
            assert metadata["rank"] == 1 and metadata["eigenvalues"] == pytest.approx(alone.metadata["eigenvalues"].tolist(), rel=1e-4)


def test_pandas_and_datasets_read_the_records_directly(recall, tmp_path):
    import datasets

    summary = run_dataset(recall, DEMO, tmp_path / "run", kinds=["semantic", "temperature"], progress=False)
    by_pandas = pd.read_parquet(tmp_path / "run" / "records")
    loaded = datasets.load_dataset(
        "parquet", data_files=str(tmp_path / "run" / "records" / "*.parquet"), split="train",
        cache_dir=str(tmp_path / "hf-cache"),
    )
    assert len(by_pandas) == len(loaded) == summary.records == 16
    by_datasets = loaded.to_pandas().sort_values(["prompt_id", "kind"]).reset_index(drop=True)
    by_pandas = by_pandas.sort_values(["prompt_id", "kind"]).reset_index(drop=True)
    assert by_pandas["scores"].map(list).tolist() == by_datasets["scores"].map(list).tolist()
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["model"]["name"] == "recall" and manifest["model"]["weight_hash"].startswith("sha256:")
    assert manifest["model"]["dtype"] == "float32" and manifest["run"]["kinds"] == ["semantic", "temperature"]
    assert manifest["versions"]["torch"] == torch.__version__
    assert "load_mode" in manifest["model"]


@pytest.mark.parametrize("form", ["jsonl", "csv", "txt", "datasets", "list"])
def test_every_dataset_form_gives_the_same_prompts(tmp_path, form):
    texts = ["a=3 b=7 c=1 b=", 'x=1, "quoted" y=2', "k=5 k="]
    if form == "jsonl":
        source = tmp_path / "p.jsonl"
        source.write_text("\n".join(json.dumps({"text": t}) for t in texts) + "\n\n")
    elif form == "csv":
        source = tmp_path / "p.csv"
        pd.DataFrame({"id": [1, 2, 3], "text": texts}).to_csv(source, index=False)
    elif form == "txt":
        source = tmp_path / "p.txt"
        source.write_text("\n\n".join(texts) + "\n")
    elif form == "datasets":
        import datasets

        source = datasets.Dataset.from_dict({"text": texts})
    else:
        source = texts
    rows = read_prompt_dataset(source).rows
    assert [(row.prompt_id, row.text, row.error) for row in rows] == [(i, t, None) for i, t in enumerate(texts)]


def test_bad_rows_go_to_the_errors_table_and_the_run_goes_on(recall, tmp_path, capsys):
    lines = [
        json.dumps({"text": "a=3 b=7 c=1 b="}).encode(),
        json.dumps({"text": ""}).encode(),  # empty prompt
        b'{"text": "a=1 \xff\xfe b="}',  # not UTF-8
        b"{not json",
        json.dumps({"text": "a=3 " * 200}).encode(),  # 201 tokens > n_ctx = 128
        json.dumps({"prompt": "a=1"}).encode(),  # no text field
        json.dumps({"text": "k=5 k="}).encode(),
    ]
    (tmp_path / "bad.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    code = cli.main(["run", str(tmp_path / "bad.jsonl"), "--model", "recall", "--out-dir", str(tmp_path / "run"), "--no-progress"])
    assert code == 3
    assert "2 of 7 prompts have records" in capsys.readouterr().out
    errors = pd.read_parquet(tmp_path / "run" / "errors").sort_values("prompt_id")
    assert errors["prompt_id"].tolist() == [1, 2, 3, 4, 5]
    reasons = dict(zip(errors["prompt_id"], errors["error"]))
    assert reasons[1] == "empty prompt" and "not UTF-8" in reasons[2] and "not JSON" in reasons[3]
    assert "201 tokens" in reasons[4] and "n_ctx=128" in reasons[4] and '"text"' in reasons[5]
    assert errors["line"].tolist() == [2, 3, 4, 5, 6]
    assert sorted(set(pd.read_parquet(tmp_path / "run" / "records")["prompt_id"])) == [0, 6]


def test_a_prompt_the_scope_rejects_is_an_error_row_not_a_stopped_run(recall, tmp_path):
    # position -5 exists in the longer prompts only; the batch of short prompts fails one by one.
    prompts = ["a=3 b=7 c=1 d=2 b=", "k=5 k=", "a=3 b=7 c=1 d=4 c=", "x=1 x="]
    summary = run_dataset(recall, prompts, tmp_path / "run", position=-5, batch_size=2, progress=False)
    assert not summary.ok and summary.complete
    errors = summary.errors_frame()
    assert errors["prompt_id"].tolist() == [1, 3] and set(errors["stage"]) == {"scope"}
    assert errors["error"].str.contains("ScopeInputError").all()
    assert sorted(summary.records_frame()["prompt_id"]) == [0, 2]


def test_other_arguments_on_the_same_directory_are_refused_unless_overwrite(recall, tmp_path, capsys):
    out = tmp_path / "run"
    run_dataset(recall, DEMO, out, progress=False)
    with pytest.raises(RunConflictError, match=r"run.kinds: \['semantic'\] → \['fisher'\].*--overwrite"):
        run_dataset(recall, DEMO, out, kinds="fisher", progress=False)
    with pytest.raises(RunConflictError, match="run.batch_size: 16 → 4"):
        run_dataset(recall, DEMO, out, batch_size=4, progress=False)
    other = tmp_path / "other.txt"
    other.write_text("a=3 b=7 c=1 b=\n")
    with pytest.raises(RunConflictError, match="dataset.fingerprint"):
        run_dataset(recall, other, out, progress=False)
    with pytest.raises(RunConflictError, match="model.weight_hash"):
        run_dataset(models.load("induction"), DEMO, out, progress=False, model_name="recall")
    # the command line refuses before it loads a model: a model name that cannot load is never reached
    code = cli.main(["run", str(DEMO), "--model", "not/a/model/dir", "--out-dir", str(out), "--kind", "fisher"])
    captured = capsys.readouterr()
    assert code == 2 and "run.kinds" in captured.err and len(captured.err.strip().splitlines()) == 1
    summary = run_dataset(recall, DEMO, out, kinds="fisher", overwrite=True, progress=False)
    assert summary.ok and set(summary.records_frame()["kind"]) == {"fisher"}
    assert json.loads((out / "manifest.json").read_text())["run"]["kinds"] == ["fisher"]


def test_resuming_a_finished_run_computes_nothing_and_keeps_the_records(recall, tmp_path):
    first = run_dataset(recall, DEMO, tmp_path / "run", kinds="all", progress=False)
    before = {path.name: path.read_bytes() for path in (tmp_path / "run" / "records").iterdir()}
    again = run_dataset(recall, DEMO, tmp_path / "run", kinds="all", progress=False)
    assert again.computed_prompts == 0 and again.records == first.records
    assert {path.name: path.read_bytes() for path in (tmp_path / "run" / "records").iterdir()} == before


def test_batches_group_prompts_of_equal_length_so_no_prompt_is_padded(recall, tmp_path):
    prompts = recall_prompts(40)
    run_dataset(recall, prompts, tmp_path / "run", batch_size=8, progress=False)
    records = pd.read_parquet(tmp_path / "run" / "records")
    for _, group in records.groupby("batch"):
        assert len(group) <= 8 and group["tokens"].map(len).nunique() == 1
    assert sorted(records["prompt_id"]) == list(range(40))
    for shard in (tmp_path / "run" / "records").iterdir():
        assert pq.read_table(shard).num_rows >= 1
