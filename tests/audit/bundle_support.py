"""Running a bundle's verifier in a Python that has only `cryptography` (and the packages
it imports) besides the standard library, as an auditor's machine may."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest

# The packages that `cryptography` imports at run time.
ISOLATED_DISTRIBUTIONS = ("cryptography", "cffi", "pycparser")


@pytest.fixture(scope="module")
def isolated_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder that links only the top-level modules of ISOLATED_DISTRIBUTIONS."""
    folder = tmp_path_factory.mktemp("isolated")
    for name in ISOLATED_DISTRIBUTIONS:
        distribution = importlib.metadata.distribution(name)
        tops = {
            Path(str(file)).parts[0]
            for file in distribution.files or []
            if not Path(str(file)).parts[0].endswith(".dist-info")
            and Path(str(file)).parts[0] not in ("..", "__pycache__")
        }
        for top in tops:
            source = Path(str(distribution.locate_file(top)))
            if source.exists() and not (folder / top).exists():
                (folder / top).symlink_to(source)
    return folder


def run_isolated(
    isolated: Path, code: str, *args: str, cwd: Path
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` with -I -S, so that neither site-packages nor PYTHONPATH are used."""
    bootstrap = (
        f"import sys; sys.path.insert(0, {str(isolated)!r}); sys.argv[1:] = {list(args)!r}\n"
    )
    return subprocess.run(
        [sys.executable, "-I", "-S", "-c", bootstrap + code],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def run_verifier(isolated: Path, bundle: Path) -> tuple[int, str]:
    code = (
        "import runpy; sys.argv[0] = 'verify.py'\n"
        "runpy.run_path('verify.py', run_name='__main__')\n"
    )
    result = run_isolated(
        isolated, code, "records.jsonl", "checkpoints.txt", "keys", cwd=bundle
    )
    return result.returncode, (result.stdout + result.stderr).strip()
