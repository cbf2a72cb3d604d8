"""Files of a Debian package, offline: the installed package, else ``apt-get download`` + ``dpkg-deb -x``.

The data sets of el-data that Debian carries (Fashion-MNIST, the SWORD Bibles) are read from the installed
package when it is there (``scripts/setup.sh`` installs them as root); otherwise the .deb is downloaded into
the cache and unpacked there without installing it (no root needed, but current apt lists).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from typing import Callable, Optional, Tuple

from el_evidence.data.idx import DataError

INSTALLED_ROOT = "/"
"""Where installed packages' files are (a test points it elsewhere to take the not-installed path)."""


def installed_version(package: str) -> Optional[str]:
    """The installed version of ``package`` (dpkg-query), or None."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run(["dpkg-query", "-W", "-f=${Status} ${Version}", package], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True)
        words = done.stdout.split()
        if done.returncode == 0 and "installed" in words[:3] and len(words) >= 4:
            return words[-1]
    return None


def package_root(package: str, probe: str, cache: str, log: Callable[[str], None]) -> Tuple[str, str]:
    """(root, origin): the folder under which the package's files lie with their absolute paths (``/`` when
    installed, else the unpacked copy in ``cache``), and a description of where they came from.

    probe: a path inside the package (relative to /) that must exist, to tell an installed package."""
    if os.path.exists(os.path.join(INSTALLED_ROOT, probe)):
        return INSTALLED_ROOT, f"Debian package {package} {installed_version(package) or '(installed)'}, installed"
    download = os.path.join(cache, "deb")
    unpacked = os.path.join(download, package)
    if not os.path.exists(os.path.join(unpacked, probe)):
        if not (shutil.which("apt-get") and shutil.which("dpkg-deb")):
            raise DataError(f"{package} is not installed and this system has no apt-get/dpkg-deb")
        os.makedirs(download, exist_ok=True)
        log(f"apt-get download {package} (into {download})")
        done = subprocess.run(["apt-get", "download", package], cwd=download, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
        debs = _debs(download, package)
        if done.returncode != 0 or not debs:
            raise DataError(f"apt-get download {package} failed (are the apt lists current? `apt-get update` "
                            f"as root):\n{done.stdout.strip()[-600:]}")
        tmp = tempfile.mkdtemp(prefix=".unpack-", dir=download)
        try:
            subprocess.run(["dpkg-deb", "-x", os.path.join(download, debs[-1]), tmp], check=True,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            shutil.rmtree(unpacked, ignore_errors=True)
            os.replace(tmp, unpacked)  # the unpacked copy appears whole or not at all
        except subprocess.CalledProcessError as exc:
            raise DataError(f"dpkg-deb -x {debs[-1]} failed: {exc.stdout.decode(errors='replace')[-400:]}") from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        if not os.path.exists(os.path.join(unpacked, probe)):
            raise DataError(f"the unpacked {package} ({debs[-1]}) has no {probe}")
    debs = _debs(download, package)
    return unpacked, f"Debian package {package} ({debs[-1] if debs else 'downloaded'}), unpacked without installing"


def _debs(folder: str, package: str):
    return sorted(f for f in os.listdir(folder) if f.startswith(package + "_") and f.endswith(".deb"))
