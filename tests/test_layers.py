"""The layers point one way (docs/architecture.md), and the API process never loads torch.

``service/`` (HTTP) and ``workers/`` (rq) both build on ``contract/`` (the job contract);
``workers/`` alone may use ``models/`` (torch); ``cli/`` imports a subcommand's module only when
it runs. Checked on the source (every import statement, also those inside functions) and by
importing the API for real in a fresh interpreter.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("cli", "contract", "models", "service", "workers")
# Which of our packages each package may import.
ALLOWED: dict[str, set[str]] = {
    "contract": set(),
    "models": set(),
    "service": {"contract"},
    "workers": {"contract", "models"},
    "cli": set(),  # imports subcommand modules by name (importlib), never statically
}
TORCH_LIKE = ("torch", "torchvision", "open_clip", "numpy")


class _Imports(ast.NodeVisitor):
    """Collects imported top-level names, leaving out ``if TYPE_CHECKING:`` blocks (annotations
    only: nothing is imported at run time)."""

    def __init__(self) -> None:
        self.names: set[str] = set()

    def visit_If(self, node: ast.If) -> None:
        if isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        self.names.update(alias.name.split(".")[0] for alias in node.names)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.module and node.level == 0:  # the project uses absolute imports only
            self.names.add(node.module.split(".")[0])


def imports_of(path: Path) -> set[str]:
    """Top-level names of every module ``path`` imports at run time, also inside functions."""
    visitor = _Imports()
    visitor.visit(ast.parse(path.read_text(), filename=str(path)))
    return visitor.names


@pytest.mark.parametrize("package", PACKAGES)
def test_a_package_imports_only_the_layers_below_it(package: str) -> None:
    wrong = {
        f"{path.relative_to(REPO)} imports {name}"
        for path in sorted((REPO / package).rglob("*.py"))
        for name in imports_of(path)
        if name in PACKAGES and name != package and name not in ALLOWED[package]
    }
    assert not wrong, sorted(wrong)


@pytest.mark.parametrize("package", ["contract", "service"])
def test_the_api_side_never_imports_torch_in_its_source(package: str) -> None:
    wrong = {
        f"{path.relative_to(REPO)} imports {name}"
        for path in sorted((REPO / package).rglob("*.py"))
        for name in imports_of(path)
        if name in TORCH_LIKE
    }
    assert not wrong, sorted(wrong)


def loaded_after(code: str) -> set[str]:
    """The top-level modules a fresh interpreter has loaded after running ``code``."""
    probe = f"{code}\nimport sys\nprint('\\nLOADED', *sorted({{m.split('.')[0] for m in sys.modules}}))"
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120, check=True
    )
    return set(result.stdout.rsplit("\nLOADED", 1)[1].split())


@pytest.mark.parametrize(
    "code",
    [
        "from service.main import create_app\nfrom contract.settings import Settings\n"
        "create_app(Settings(redis_url='redis://127.0.0.1:6379/0'))",
        "from cli.main import main\ntry:\n    main(['api', '--help'])\nexcept SystemExit:\n    pass",
        "from cli.main import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass",
        "from cli.main import main\ntry:\n    main(['worker', '--help'])\nexcept SystemExit:\n    pass",
    ],
    ids=["app", "unclip api --help", "unclip --help", "unclip worker --help"],
)
def test_the_api_and_the_cli_root_do_not_load_torch(code: str) -> None:
    forbidden = {"torch", "open_clip", "models"} | (set() if "worker" in code else {"workers"})
    assert not loaded_after(code) & forbidden


@pytest.mark.slow  # a fresh interpreter imports torch
def test_the_probe_sees_torch_when_it_is_loaded() -> None:
    assert {"torch", "models"} <= loaded_after("import models.pipeline")


@pytest.mark.slow  # one fresh interpreter per subcommand
def test_the_unclip_console_script_answers_help_for_every_subcommand() -> None:
    from cli.main import SUBCOMMANDS

    for name in SUBCOMMANDS:
        result = subprocess.run(
            [sys.executable, "-m", "cli.main", name, "--help"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0 and f"unclip {name}" in result.stdout, (name, result.stderr)
