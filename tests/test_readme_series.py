"""The README's "Series store and schedules" commands run as written, against the API in process:
each `curl` line becomes the same request on a TestClient, `kronos-jobs` lines run the CLI."""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from urllib.parse import urlsplit

from click.testing import CliRunner
from fastapi.testclient import TestClient

from api.main import create_app
from kronos_jobs.cli import main
from tests.readme import ROOT, code_blocks, section


def commands() -> list[list[str]]:
    """Each command of the block as argv (continuation lines and multi-line quotes joined)."""
    block = code_blocks(section("Series store and schedules"), "bash")[0].replace("\\\n", " ")
    argvs, pending = [], ""
    for line in block.splitlines():
        pending = f"{pending}\n{line}" if pending else line
        try:
            argv = shlex.split(pending, comments=True)
        except ValueError:  # an open quote: the command goes on
            continue
        pending = ""
        if argv:
            argvs.append(argv)
    return argvs


def curl(client: TestClient, argv: list[str], out_dir: Path):
    method, headers, data, files, output, url = None, {}, None, None, None, None
    args = iter(argv[1:])
    for arg in args:
        if arg == "-X":
            method = next(args)
        elif arg == "-H":
            name, value = next(args).split(":", 1)
            headers[name.strip()] = value.strip()
        elif arg == "-d":
            data = next(args)
        elif arg == "-F":
            name, path = next(args).split("=@", 1)
            files = {name: (Path(path).name, (ROOT / path).read_bytes())}
        elif arg == "-o":
            output = out_dir / next(args)
        else:
            url = arg
    parts = urlsplit(url if "://" in url else f"http://{url}")
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    method = method or ("POST" if data or files else "GET")
    response = client.request(method, target, headers=headers, content=data, files=files)
    if output is not None:
        output.write_bytes(response.content)
    return response


def test_series_and_schedule_examples_run_as_written(settings, tmp_path) -> None:
    with TestClient(create_app(settings)) as client:
        env = {"ID": ""}
        for raw in commands():
            argv = [a.replace("$ID", env["ID"]) for a in raw]
            line = " ".join(argv)
            if argv[0].startswith("ID="):  # the README's placeholder; the test keeps the real id
                continue
            if argv[0] == "kronos-jobs":
                cwd = os.getcwd()
                os.chdir(ROOT)
                try:
                    result = CliRunner().invoke(main, argv[1:], obj={"settings": settings, "http": client})
                finally:
                    os.chdir(cwd)
                assert result.exit_code == 0, (line, result.output)
                continue
            response = curl(client, argv, tmp_path)
            assert response.status_code < 400, (line, response.text)
            if response.request.method == "POST" and response.request.url.path == "/v1/schedules":
                env["ID"] = response.json()["id"]
        assert env["ID"], "the README creates a schedule"
        assert (tmp_path / "latest.parquet").stat().st_size > 0
