"""Bad usage and configuration end with exit code 2 and a clear message, before any engine starts."""

from typer.testing import CliRunner

from reelflow.flows.cli import app

runner = CliRunner()


def test_unknown_policy_key_exits_2(tmp_path, media):
    pol = tmp_path / "p.yaml"
    pol.write_text("clips:\n  min_secs: 3\n")
    r = runner.invoke(app, ["curate", str(media["root"]), str(tmp_path / "out"), "--policy", str(pol)])
    assert r.exit_code == 2 and "clips.min_secs: unknown key" in r.output


def test_missing_source_exits_2(tmp_path):
    r = runner.invoke(app, ["curate", str(tmp_path / "nope"), str(tmp_path / "out")])
    assert r.exit_code == 2 and "does not exist" in r.output


def test_manifest_without_license_column_exits_2(tmp_path):
    m = tmp_path / "m.csv"
    m.write_text("uri\na.mp4\n")
    r = runner.invoke(app, ["curate", str(m), str(tmp_path / "out")])
    assert r.exit_code == 2 and "license" in r.output


def test_missing_arguments_exit_2():
    r = runner.invoke(app, ["curate"])
    assert r.exit_code == 2


def test_validate_on_a_non_dataset_exits_2(tmp_path):
    r = runner.invoke(app, ["validate", str(tmp_path)])
    assert r.exit_code == 2 and "not a finished reelflow dataset" in r.output


def test_date_template_in_source_and_output():
    from datetime import datetime, timedelta, timezone

    from reelflow.flows.curate_flow import expand_date

    when = datetime(2026, 11, 22, 1, 30, tzinfo=timezone(timedelta(hours=3)))  # 2026-11-21 22:30 UTC
    assert expand_date("s3://curated/nightly/{date}", when) == "s3://curated/nightly/2026-11-21"
    assert expand_date("/data/out", when) == "/data/out"
    today = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    assert expand_date("out-{date}") in (f"out-{today}", f"out-{(datetime.now(timezone.utc)).strftime('%Y-%m-%d')}")


def test_the_command_exits_with_its_code_after_the_exit_handlers_ran(tmp_path):
    """``main`` ends the process with ``os._exit`` (no interpreter teardown): the exit code, the
    exit handlers (Ray's shutdown, the Prefect server's stop) and buffered output must survive it."""
    import subprocess
    import sys

    marker = tmp_path / "handler-ran"
    script = (
        "import atexit, pathlib, sys\n"
        f"atexit.register(lambda: pathlib.Path({str(marker)!r}).write_text('yes'))\n"
        "from reelflow.flows import cli\n"
        "sys.argv = ['reelflow', 'curate', sys.argv[1], sys.argv[2]]\n"
        "print('buffered line', end='')\n"
        "cli.main()\n"
    )
    r = subprocess.run([sys.executable, "-c", script, str(tmp_path / "nope"), str(tmp_path / "out")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "does not exist" in r.stderr and r.stdout.startswith("buffered line")
    assert marker.read_text() == "yes"
