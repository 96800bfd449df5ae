"""Help texts render as written: click does no %-formatting, so '%%' would show as is."""

from __future__ import annotations

from click.testing import CliRunner

from lowrank.cli import main


def test_spectrum_help_shows_95_percent_not_a_doubled_sign():
    res = CliRunner().invoke(main, ["spectrum", "--help"])
    assert res.exit_code == 0, res.output
    assert "95%%" not in res.output
    assert "95% half-width" in res.output


def test_no_help_text_shows_a_doubled_percent_sign():
    for name in ["", *main.commands]:
        res = CliRunner().invoke(main, [name, "--help"] if name else ["--help"])
        assert res.exit_code == 0, (name, res.output)
        assert "%%" not in res.output, name
