"""README's two commands stay true: CI runs exactly the README's test command, the server command is valid."""

from __future__ import annotations

import re
from pathlib import Path

from tts_server.cli import build_parser

REPO = Path(__file__).resolve().parents[1]


def _bash_blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)```", (REPO / "README.md").read_text(encoding="utf-8"), re.S)


def test_ci_runs_the_readme_test_command() -> None:
    blocks = _bash_blocks()
    test_cmd = next(b.strip() for b in blocks if "pytest" in b)
    ci_lines = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    assert test_cmd in ci_lines


def test_readme_serve_command_parses() -> None:
    serve_cmd = next(b.strip() for b in _bash_blocks() if " serve " in b)
    argv = serve_cmd.split(".venv/bin/tts-server ", 1)[1].split()
    args = build_parser().parse_args(argv)
    assert args.command == "serve"
    assert (REPO / args.config).exists()
