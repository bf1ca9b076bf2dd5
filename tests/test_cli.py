"""The befa command line, through typer's runner (same code path as the console script)."""

from typer.testing import CliRunner

from pipeline.cli import app

runner = CliRunner()


def test_help_lists_every_command():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("datasets", "download", "ingest", "split", "stats", "demo", "export-mmrec"):
        assert command in result.output


def test_ingest_split_stats_on_movielens(tmp_path, datasets_root):
    env = {"BEFA_DATASETS_ROOT": str(datasets_root), "BEFA_HOME": str(tmp_path)}
    result = runner.invoke(app, ["ingest", "movielens-100k-posters"], env=env)
    assert result.exit_code == 0, result.output
    assert "55375" in result.output.replace(",", "")
    result = runner.invoke(app, ["split", "movielens-100k-posters", "--seed", "7"], env=env)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "catalogs/movielens-100k-posters/splits/random-s7.parquet").exists()
    result = runner.invoke(app, ["stats", "movielens-100k-posters"], env=env)
    assert result.exit_code == 0, result.output
    assert "1682" in result.output and "random-s7" in result.output


def test_ingest_missing_dataset_is_a_clear_error(tmp_path):
    env = {"BEFA_DATASETS_ROOT": str(tmp_path / "nowhere"), "BEFA_HOME": str(tmp_path)}
    result = runner.invoke(app, ["ingest", "movielens-100k-posters"], env=env)
    assert result.exit_code == 2
    assert "error" in result.output and "nowhere" in result.output


def test_ingest_rejects_bad_column_option(tmp_path):
    result = runner.invoke(app, ["ingest", "generic", "--column", "oops"], env={"BEFA_HOME": str(tmp_path)})
    assert result.exit_code == 2 and "--column" in result.output
