"""The README's "Authentication and tenants" commands run as written against the API in process:
`kronos-jobs` lines run the CLI on the same database, `curl` lines become the same requests on a
TestClient, and `$KEY` is the token the first line printed."""

from __future__ import annotations

import re
import shlex

from click.testing import CliRunner
from fastapi.testclient import TestClient

from api.main import create_app
from kronos_jobs.cli import main
from tests.readme import ROOT, code_blocks, section
from tests.test_readme_series import curl


def test_authentication_examples_run_as_written(settings, tmp_path, monkeypatch) -> None:
    block = code_blocks(section("Authentication and tenants"), "bash")[0]
    lines = [line for line in (raw.split("  #")[0].strip() for raw in block.splitlines()) if line]
    monkeypatch.chdir(ROOT)
    env: dict[str, str] = {}
    configured = settings
    client: TestClient | None = None

    def run_cli(argv: list[str], api_key: str | None = None):
        used = configured.model_copy(update={"api_key": api_key}) if api_key else configured
        obj = {"settings": used, **({"http": client} if client is not None else {})}
        result = CliRunner().invoke(main, argv, obj=obj, catch_exceptions=False)
        assert result.exit_code == 0, (argv, result.output)
        return result

    try:
        for line in lines:
            line = line.replace("<key-id>", env.get("KEY", "kj_x_")[3:].split("_")[0])
            if line.startswith("export KRONOS_AUTH="):
                # no key cache, so the revoke at the end applies at once rather than within 5 s
                configured = settings.model_copy(update={"auth": line.split("=", 1)[1], "auth_cache_seconds": 0})
                client = TestClient(create_app(configured)).__enter__()
                continue
            if match := re.fullmatch(r"KEY=\$\((kronos-jobs .*)\)", line):
                env["KEY"] = run_cli(shlex.split(match[1])[1:]).stdout.strip()
                continue
            argv = shlex.split(line.replace("$KEY", env["KEY"]))
            if argv[0] == "curl":
                argv = [a if a != "--data" else "-d" for a in argv]
                if "-d" in argv and argv[argv.index("-d") + 1].startswith("@"):
                    i = argv.index("-d") + 1
                    argv[i] = (ROOT / argv[i][1:]).read_text()
                response = curl(client, argv, tmp_path)
                assert response.status_code < 400, (line, response.text)
                continue
            api_key = None
            if argv[0].startswith("KRONOS_API_KEY="):
                api_key = argv.pop(0).split("=", 1)[1]
            assert argv[0] == "kronos-jobs", line
            result = run_cli(argv[1:], api_key)
            if argv[1:3] == ["keys", "list"]:
                assert env["KEY"][3:].split("_")[0] in result.stdout and env["KEY"] not in result.stdout
        assert client is not None and configured.auth_required
        revoked = client.get("/v1/jobs", headers={"Authorization": f"Bearer {env['KEY']}"})
        assert revoked.status_code == 401  # the block ends by revoking the key it made
        assert client.get("/v1/jobs").status_code == 401  # and without a key nothing answers
    finally:
        if client is not None:
            client.__exit__(None, None, None)
