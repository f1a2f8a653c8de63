"""The command's surface: help says what each subcommand does and writes; errors are one line."""

from conftest import run_cli


def test_help_lists_subcommands():
    proc = run_cli("--help")
    assert proc.returncode == 0 and "prepare" in proc.stdout and "assets" in proc.stdout


def test_prepare_help_says_what_it_writes():
    proc = run_cli("prepare", "--help")
    assert proc.returncode == 0
    assert "TOWERLITE_HOME" in proc.stdout and "sha256" in proc.stdout


def test_missing_subcommand_is_a_usage_error():
    proc = run_cli()
    assert proc.returncode == 2 and "usage: towerlite" in proc.stderr
