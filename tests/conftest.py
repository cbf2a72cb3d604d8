import pytest

# The helpers live in el_evidence.testing; these names stay importable from here for older tests.
from el_evidence.testing.programs import BIN, run_cli  # noqa: F401
from el_evidence.testing.toy_fairseq import TINY_TRANSFORMER, binarize_toy_corpus  # noqa: F401


@pytest.fixture(scope="session")
def toy_data_bin(tmp_path_factory):
    """The toy parallel corpus, binarized by the real fairseq-preprocess."""
    return binarize_toy_corpus(tmp_path_factory.mktemp("toy"), sizes=(("train", 600), ("valid", 60), ("test", 40)))


# --------------------------------------------------------------------------- test tiers
# Each test says its tier with explicit markers (pytest.ini): @pytest.mark.e2e (or a module's pytestmark) when it
# runs a program or needs data one builds, @pytest.mark.slow when it is heavy, @pytest.mark.cuda when it needs a GPU.
# ``pytest -m "not slow and not e2e"`` is the fast core.
E2E_FIXTURES = {"toy_data_bin", "digits_folder", "joined_data_bin", "mnist_data"}  # built by running real programs


def pytest_collection_modifyitems(config, items):
    """A test that takes a fixture built by running programs must say it is e2e: an error at collection, not a fast
    tier that quietly runs fairseq-preprocess."""
    unmarked = [item.nodeid for item in items if E2E_FIXTURES & set(getattr(item, "fixturenames", ()))
                and item.get_closest_marker("e2e") is None]
    if unmarked:
        raise pytest.UsageError("these tests use a fixture built by running programs but are not marked e2e: "
                                + ", ".join(unmarked))
