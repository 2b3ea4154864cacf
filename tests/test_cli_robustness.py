"""The command line never computes on a model or input the user did not mean, and fails before any
computation when an argument is wrong (exit 2, one line on stderr); checkpoints load unprocessed
(hub names, for real through an offline hub cache: tests/test_load_paths.py)."""

from __future__ import annotations

import warnings

import pytest
import torch

from jscopes_tl import cli, models, temperature_scope
from jscopes_tl.adapter import ModelAdapter, load_pretrained

RECALL = "a=3 b=7 c=1 b="


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("command", [["scope", RECALL], ["eval", "PROMPTS"]])
def test_model_is_required_and_the_message_lists_the_choices(capsys, tmp_path, no_model_loading, command):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a=3 b=7 b=7\n")
    code, out, err = run(capsys, *[str(prompts) if a == "PROMPTS" else a for a in command])
    assert code == 2 and out == ""
    assert "--model is required" in err and "recall" in err and "toy-gpt2" in err


@pytest.mark.parametrize("name, suggestion", [("recal", "recall"), ("inducton", "induction"), ("toy-gtp2", "toy-gpt2")])
def test_misspelled_model_name_suggests_the_bundled_one(capsys, no_model_loading, name, suggestion):
    code, _, err = run(capsys, "scope", RECALL, "--model", name)
    assert code == 2
    assert f"did you mean {suggestion!r}" in err and "periodic" in err


def test_model_that_cannot_be_loaded_lists_the_models_that_need_no_download(capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, err = run(capsys, "scope", RECALL, "--model", "jscopes-tl-tests/not-a-model")
    assert code == 1 and "need no download" in err and "recall" in err


@pytest.mark.parametrize(
    "option, make_path, message",
    [
        ("--out", lambda tmp: tmp, "is a directory"),
        ("--json", lambda tmp: tmp, "is a directory"),
        ("--json", lambda tmp: tmp / "missing" / "x.json", "does not exist"),
        ("--out", lambda tmp: tmp / "file.txt" / "view.html", "file.txt' is a file, not a directory"),
    ],
)
def test_output_paths_are_checked_before_any_computation(capsys, tmp_path, no_model_loading, option, make_path, message):
    (tmp_path / "file.txt").write_text("x")
    code, out, err = run(capsys, "scope", RECALL, "--model", "recall", option, str(make_path(tmp_path)))
    assert code == 2 and out == "" and message in err and option in err


def test_eval_and_ground_truth_check_json_paths_first(capsys, tmp_path, no_model_loading):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a=3 b=7 b=7\n")
    assert run(capsys, "eval", str(prompts), "--model", "recall", "--json", str(tmp_path))[0] == 2
    code, _, err = run(capsys, "ground-truth", "--models", "recall", "--json", str(tmp_path))
    assert code == 2 and "is a directory" in err


@pytest.mark.parametrize("option", [["--overwrite"], ["--shard-size", "4"]])
def test_eval_options_of_a_run_directory_need_out_dir(capsys, tmp_path, no_model_loading, option):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a=3 b=7 b=7\n")
    code, out, err = run(capsys, "eval", str(prompts), "--model", "recall", *option)
    assert code == 2 and out == "" and option[0] in err and "--out-dir" in err


@pytest.mark.parametrize("content", [b"\x00\x01\x02binary\xff", "caf\u00e9".encode("latin-1")])
def test_binary_prompt_file_is_a_clear_error(capsys, tmp_path, no_model_loading, content):
    prompts = tmp_path / "prompts.txt"
    prompts.write_bytes(content)
    code, out, err = run(capsys, "eval", str(prompts), "--model", "recall")
    assert code == 2 and out == ""
    assert "not a UTF-8 text file" in err and "Traceback" not in err


def test_prompt_longer_than_the_context_exits_2_naming_the_limit(capsys):
    code, out, err = run(capsys, "scope", "a=3 " * 200, "--model", "recall")
    assert code == 2 and out == ""
    assert "n_ctx=128" in err


def test_eval_refuses_a_prompt_longer_than_the_context_by_its_line_before_any_forward_pass(capsys, tmp_path, monkeypatch):
    def no_forward(self, tokens):
        raise AssertionError("a forward pass ran before the prompts were checked")

    monkeypatch.setattr(ModelAdapter, "forward", no_forward)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a=3 b=7 b= 7\n\n" + "a=3 " * 200 + "\n")
    code, _, err = run(capsys, "eval", str(prompts), "--model", "recall", "--scorers", "random")
    assert code == 2 and f"PROMPTS '{prompts}' line 3 (prompt 1) has 201 tokens" in err and "n_ctx=128" in err


@pytest.mark.parametrize("command", [["eval"], ["run", "--out-dir", "OUT"]])
def test_a_csv_without_a_text_or_prompt_column_is_refused_naming_its_columns(capsys, tmp_path, no_model_loading, command):
    prompts = tmp_path / "prompts.csv"
    prompts.write_text("foo,bar\na=3 b=7 b= 7,x\n")
    argv = [command[0], str(prompts), "--model", "recall", *[str(tmp_path / "out") if a == "OUT" else a for a in command[1:]]]
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert "no 'text' or 'prompt' column: its first line (line 1) names the columns ['foo', 'bar']" in err
    assert not (tmp_path / "out").exists()


def test_a_csv_header_behind_a_byte_order_mark_is_read_as_the_header(tmp_path):
    prompts = tmp_path / "prompts.csv"
    prompts.write_text("\ufefftext,source\na=3 b=7 b= 7,x\n", encoding="utf-8")
    assert cli.read_prompts(prompts) == ["a=3 b=7 b= 7"]


def test_a_library_warning_prints_as_one_jscopes_line(capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        code, _, err = run(capsys, "scope", "zzz qqq", "--model", "recall")
        assert warnings.showwarning is not cli._show_warning  # main() gave it back
    assert code == 0
    assert err.startswith("jscopes: warning: inputs 'zzz qqq' tokenises to") and "UserWarning" not in err, err


def test_load_pretrained_keeps_the_final_norm_unfolded_so_temperature_is_meaningful():
    """A local checkpoint loads with the Hugging Face model's own numerics on every TransformerLens
    generation: logits equal HF's, and the final norm keeps its gain (no folding into W_U)."""
    directory = models.files.model_directory("induction")
    model = load_pretrained(str(directory))
    hf_model, _ = models.load_hf("induction")
    tokens = model.to_tokens("cat sun map cat sun")
    with torch.no_grad():
        torch.testing.assert_close(model(tokens).float(), hf_model(tokens).logits.float(), rtol=1e-4, atol=1e-4)
    assert not ModelAdapter(model).final_norm_has_no_gain()
    bundled = temperature_scope(models.load("induction"), "cat sun map cat sun").scores
    torch.testing.assert_close(temperature_scope(model, "cat sun map cat sun").scores, bundled, rtol=1e-4, atol=1e-6)


def test_bundled_model_directory_path_is_not_taken_for_a_typo(capsys, tmp_path, monkeypatch):
    local = tmp_path / "recal"
    local.mkdir()
    code, _, err = run(capsys, "scope", RECALL, "--model", str(local))
    assert code == 1 and "config.json" in err  # tried as a directory, not refused as a typo
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "scope", RECALL, "--model", "recal")
    assert code == 1 and "config.json" in err
