"""Progress: tqdm bars in an interactive terminal; elsewhere one plain line per interval."""
from invar_rag_lib import progress as P


def test_no_bar_and_no_line_within_the_interval_when_not_interactive(monkeypatch, capsys):
    monkeypatch.delenv("INVAR_RAG_PROGRESS", raising=False)
    monkeypatch.delenv("INVAR_RAG_HEARTBEAT_S", raising=False)
    assert list(P.progress(range(3), "x")) == [0, 1, 2]  # pytest's stderr is not a terminal
    bar = P.step_bar(3, 0, "x")
    bar.set_postfix(loss="1.000", refresh=False)
    bar.update()
    bar.close()
    out = capsys.readouterr()
    assert out.err == "" and out.out == ""  # under a minute: nothing to say


def test_a_long_step_prints_its_progress_when_piped(monkeypatch, capsys):
    """Outside a terminal (a notebook kernel, `make reproduce > log`) a long loop prints a line per
    interval with its name, count and elapsed minutes, and the training loss when it has one."""
    monkeypatch.delenv("INVAR_RAG_PROGRESS", raising=False)
    monkeypatch.setenv("INVAR_RAG_HEARTBEAT_S", "0")
    assert list(P.progress(range(2), "trunk states", unit="batch")) == [0, 1]
    bar = P.step_bar(4, 0, "training generator")
    bar.set_postfix(loss="2.500", refresh=False)
    bar.update()
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("  trunk states: batch 1/2, ") and lines[1].startswith("  trunk states: batch 2/2")
    assert lines[2].startswith("  training generator: step 1/4, ") and lines[2].endswith("(loss 2.500)")


def test_forced_bar_yields_the_same_items(monkeypatch, capsys):
    monkeypatch.setenv("INVAR_RAG_PROGRESS", "1")
    assert list(P.progress(range(3), "counting")) == [0, 1, 2]
    bar = P.step_bar(2, 0, "steps")
    bar.set_postfix(loss="0.500", refresh=False)
    bar.update()
    bar.close()
    err = capsys.readouterr().err
    assert "counting" in err and "steps" in err
