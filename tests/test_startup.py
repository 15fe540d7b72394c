"""Start-up refuses bsv-sdk without its native extension, in one line.

(Refusals for keys, policies and settings are in test_cli.py.)
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

PATCHED = """
import sys
import bsv
bsv.native_status = lambda: {"available": False}  # as on a build without libsecp256k1
from gateway.cli import main
sys.argv = ["farebox", "serve", "--policies", sys.argv[1], "--port", "0"]
main()
"""


def test_serve_refuses_bsv_sdk_without_its_native_extension(tmp_path: Path) -> None:
    folder = tmp_path / "policies"
    folder.mkdir()
    (folder / "p.yaml").write_text(
        "services:\n  s:\n    upstream: http://127.0.0.1:1\n    routes: [{path: /x, price: free}]\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", PATCHED, str(folder)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == ["farebox: bsv-sdk was installed without its native extension (libsecp256k1)"]
