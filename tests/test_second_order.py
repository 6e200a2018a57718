"""bench.second_order: the fused op's two torch statements of its second derivatives, timed."""
import json

import pytest

from bench.second_order import main, second_order_times


def test_both_statements_agree_and_are_timed():
    times = second_order_times(64, hidden_channels=2, repeats=1)
    assert set(times) == {"edge-wise", "pooled", "diff"}
    assert times["edge-wise"] > 0 and times["pooled"] > 0 and times["diff"] < 1e-4


def test_cli_writes_its_table_as_json(tmp_path, capsys):
    out = tmp_path / "so.json"
    assert main(["--edges", "40", "--widths", "2", "--repeats", "1", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["edges"] == 32 and [r["hidden_channels"] for r in data["rows"]] == [2]
    assert "| 2 |" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--edges", "8"])
    with pytest.raises(SystemExit):
        main(["--degree", "0"])


def test_low_and_random_in_degrees():
    """At in-degree 1 the pooled statement's runs are single edges, with random targets many runs of different
    in-degrees (and targets without edges); both statements still agree."""
    for kw in (dict(degree=1), dict(degree=2, random=True)):
        assert second_order_times(24, hidden_channels=2, repeats=1, **kw)["diff"] < 1e-4
