import pytest

# The helpers live in el_plugins.testing; these names stay importable from here for older tests.
from el_plugins.testing.programs import BIN, run_cli  # noqa: F401
from el_plugins.testing.toy_fairseq import TINY_TRANSFORMER, binarize_toy_corpus  # noqa: F401


@pytest.fixture(scope="session")
def toy_data_bin(tmp_path_factory):
    """The toy parallel corpus, binarized by the real fairseq-preprocess."""
    return binarize_toy_corpus(tmp_path_factory.mktemp("toy"), sizes=(("train", 600), ("valid", 60), ("test", 40)))


# --------------------------------------------------------------------------- test tiers
E2E_FIXTURES = {"toy_data_bin", "digits_folder"}  # built by running real programs (fairseq-preprocess, ...)
RUNS_A_PROGRAM = ("run_cli(", "run_module(", "subprocess.", "Popen(", "torchrun")


def _runs_a_program(function, module, depth=2):
    """Whether the function's source, or that of the module's functions it calls (``depth`` levels), runs one."""
    import inspect
    import re

    try:
        source = inspect.getsource(inspect.unwrap(function))
    except (OSError, TypeError):
        return False
    if any(s in source for s in RUNS_A_PROGRAM):
        return True
    called = {getattr(module, name) for name in re.findall(r"\b(\w+)\(", source)
              if inspect.isfunction(getattr(module, name, None)) and getattr(module, name) is not function}
    return depth > 0 and any(_runs_a_program(f, module, depth - 1) for f in called)


def pytest_collection_modifyitems(config, items):
    """The tiers (pytest.ini): ``e2e`` for every test that runs a program (a console script, fairseq's
    commands, a subprocess, torchrun) or needs data built by one; ``cuda`` for tests that need a GPU.
    ``pytest -m "not slow and not e2e"`` is the fast core."""
    for item in items:
        function = getattr(item, "function", None)
        fixtures = set(getattr(item, "fixturenames", ()))
        module_fixtures = {name for name in fixtures if callable(getattr(item.module, name, None))}
        if E2E_FIXTURES & fixtures or function is not None and any(
                _runs_a_program(f, item.module) for f in [function, *(getattr(item.module, n) for n in module_fixtures)]):
            item.add_marker(pytest.mark.e2e)
        if "cuda" in item.name and "needs CUDA" in str(item.keywords.get("skipif", "")) or "_cuda" in item.name:
            item.add_marker(pytest.mark.cuda)
