"""The package stays light to import and exposes its public API lazily."""

from __future__ import annotations

import subprocess
import sys

import ricordo


def run_python(code: str) -> str:
    return subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout.strip()


def test_import_does_not_load_torch_or_lightning() -> None:
    loaded = run_python(
        "import sys, ricordo; print(','.join(m for m in ('torch', 'lightning', 'sklearn')"
        " if m in sys.modules))"
    )
    assert loaded == ""


def test_cli_version_does_not_load_torch() -> None:
    loaded = run_python(
        "import sys; sys.argv = ['ricordo', '--version']\n"
        "from ricordo.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print('torch' in sys.modules)"
    )
    assert loaded.splitlines() == [f"ricordo {ricordo.__version__}", "False"]


def test_lazy_public_api() -> None:
    from ricordo import UpdateConfig, Updater

    assert Updater.__name__ == "Updater" and UpdateConfig().method == "er"
    try:
        ricordo.NotAThing  # noqa: B018
    except AttributeError as error:
        assert "NotAThing" in str(error)
    else:  # pragma: no cover
        raise AssertionError("unknown attributes must raise AttributeError")


def test_report_module_does_not_load_torch() -> None:
    """`ricordo report` only reads JSON and draws plots."""
    assert run_python("import sys, ricordo.bench.report; print('torch' in sys.modules)") == "False"
