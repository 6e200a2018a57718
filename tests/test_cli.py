import pytest

import fastik
from fastik.cli import check, main


def test_cli_check_and_groups(capsys):
    assert main(["groups"]) == 0
    assert "Oh" in capsys.readouterr().out
    assert main(["check", "D4", "--dim", "2"]) == 0
    assert "equivariant" in capsys.readouterr().out
    assert check("Ih", 3, "2x0e + 1x1o", "reference") < 1e-10


def test_cli_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"fastik {fastik.__version__}"
