"""bigmodel-course serve / registry / bench serve."""

import pytest

from bigmodel_course.cli import main
from bigmodel_course.serving import ModelRegistry, publish_tiny_models


@pytest.fixture
def root(tmp_path):
    reg = ModelRegistry(tmp_path / "registry")
    publish_tiny_models(reg)  # v1 of each, promoted
    publish_tiny_models(reg, seed=1)  # v2 of each, promoted
    return str(reg.root)


def test_registry_list_promote_rollback(root, capsys):
    assert main(["registry", "list", "--registry", root]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and [line[0] for line in lines] == [" ", "*", " ", "*"]
    assert "tiny-digits" in lines[0] and " v1 " in lines[0] and "vit" in lines[0] and "sha256 " in lines[0]
    assert main(["registry", "promote", "tiny-text", "v1", "--registry", root]) == 0
    assert capsys.readouterr().out.startswith("promoted tiny-text v1 (sha256 ")
    assert ModelRegistry(root).promoted_version("tiny-text") == "v1"
    assert main(["registry", "rollback", "tiny-text", "--registry", root]) == 0
    assert capsys.readouterr().out.startswith("rolled back tiny-text to v2")
    assert main(["registry", "rollback", "tiny-text", "--registry", root]) == 0
    assert main(["registry", "rollback", "tiny-text", "--registry", root]) == 2
    assert "no previously promoted version" in capsys.readouterr().err


def test_registry_errors_exit_2_with_a_message(root, tmp_path, capsys, monkeypatch):
    assert main(["registry", "promote", "tiny-text", "v9", "--registry", root]) == 2
    assert "model 'tiny-text' has no version 'v9'; versions: v1, v2" in capsys.readouterr().err
    assert main(["registry", "promote", "nope", "v1", "--registry", root]) == 2
    assert "unknown model 'nope'" in capsys.readouterr().err
    assert main(["registry", "promote", "tiny-text", "latest", "--registry", root]) == 2
    assert "invalid version 'latest'" in capsys.readouterr().err
    monkeypatch.setenv("BIGMODEL_REGISTRY", str(tmp_path / "empty"))
    assert main(["registry", "list"]) == 0
    assert capsys.readouterr().out.startswith("no models in ")
    with pytest.raises(SystemExit) as exit_info:
        main(["registry", "promote", "tiny-text"])
    assert exit_info.value.code == 2 and "the following arguments are required: version" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["registry", "delete", "tiny-text"])
    assert exit_info.value.code == 2 and "invalid choice: 'delete'" in capsys.readouterr().err


def test_serve_help_and_bad_arguments(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0 and "--port" in out and "--registry" in out and "--port-file" not in out
    for args, message in [
        (["serve", "--port", "70000"], "port must be in 0..65535, got 70000"),
        (["serve", "--port", "http"], "expected a port number, got 'http'"),
        (["serve", "--max-batch", "0"], "expected a positive integer, got 0"),
        (["serve", "--log-level", "loud"], "invalid choice: 'loud'"),
        (["serve", "--threads", "0"], "expected a positive integer, got 0"),
        (["bench", "serve", "--requests", "0"], "expected a positive integer, got 0"),
        (["bench", "serve", "--concurrency", "many"], "expected a positive integer, got 'many'"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            main(args)
        assert exit_info.value.code == 2 and message in capsys.readouterr().err, args


def test_bench_serve_runs_a_small_load_test(capsys):
    assert main(["bench", "serve", "--requests", "40", "--concurrency", "4"]) == 0
    out = capsys.readouterr().out
    assert "tiny randomly initialised (untrained) models" in out
    assert "40 requests, 4 concurrent: p50 " in out and "requests/s, 0 errors" in out
