"""The API process never imports torch (DESIGN: `api/` is thin; inference lives in workers)."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_importing_and_serving_the_api_does_not_import_torch(tmp_path) -> None:
    # A fresh interpreter: other tests in this process may have imported torch already.
    script = textwrap.dedent(f"""
        import sys
        from fastapi.testclient import TestClient
        from api.main import app, create_app
        from kronos_jobs.core.settings import Settings
        with TestClient(create_app(Settings(data_dir={str(tmp_path)!r})), base_url="http://127.0.0.1") as client:
            for path in ("/healthz", "/readyz", "/metrics", "/v1/jobs", "/v1/models", "/v1/workers", "/openapi.json"):
                assert client.get(path).status_code == 200, path
        heavy = sorted(m for m in sys.modules if m == "torch" or m.startswith(("torch.", "model.")))
        assert not heavy, heavy
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
