"""Progress bars: tqdm in an interactive terminal, nothing in notebooks and logs."""
from invar_rag_lib import progress as P


def test_quiet_unless_interactive(monkeypatch, capsys):
    monkeypatch.delenv("INVAR_RAG_PROGRESS", raising=False)
    items = range(3)
    assert P.progress(items, "x") is items  # pytest's stderr is not a terminal
    bar = P.step_bar(3, 0, "x")
    bar.set_postfix(loss="1.000", refresh=False)
    bar.update()
    bar.close()
    assert capsys.readouterr().err == ""


def test_forced_bar_yields_the_same_items(monkeypatch, capsys):
    monkeypatch.setenv("INVAR_RAG_PROGRESS", "1")
    assert list(P.progress(range(3), "counting")) == [0, 1, 2]
    bar = P.step_bar(2, 0, "steps")
    bar.set_postfix(loss="0.500", refresh=False)
    bar.update()
    bar.close()
    err = capsys.readouterr().err
    assert "counting" in err and "steps" in err
