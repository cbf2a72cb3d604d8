"""The import order of the whole package, checked by import-linter against the contracts in .importlinter (the
layers of the loss stack, the adapters and tools apart from each other, the framework-free core, the utilities, the
start-up hook, the product apart from the evidence). Fast: import-linter reads the sources, it imports nothing."""
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
LINT_IMPORTS = shutil.which("lint-imports", path=os.path.dirname(sys.executable)) or shutil.which("lint-imports")


def lint(config):
    if LINT_IMPORTS is None:
        pytest.skip("import-linter is not installed (scripts/setup.sh installs it)")
    return subprocess.run([LINT_IMPORTS, str(config)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=120)


def test_every_import_contract_is_kept():
    proc = lint(ROOT / ".importlinter")
    assert proc.returncode == 0, proc.stdout[-6000:]
    assert "0 broken" in proc.stdout and "KEPT" in proc.stdout, proc.stdout[-3000:]


def test_a_broken_contract_is_reported(tmp_path):
    """The checker sees this package's imports: a contract that the code breaks (functional imports core) fails."""
    config = tmp_path / "broken.ini"
    config.write_text("[importlinter]\nroot_packages =\n    el_plugins\n\n[importlinter:contract:x]\n"
                      "name = functional without core\ntype = forbidden\nsource_modules =\n    el_plugins.functional\n"
                      "forbidden_modules =\n    el_plugins.core\n")
    proc = lint(config)
    assert proc.returncode != 0 and "BROKEN" in proc.stdout, proc.stdout[-3000:]
