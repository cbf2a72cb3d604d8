#!/usr/bin/env python3
"""The wheels carried to the GPU machine in .whl/ (fetch_wheels.sh fills it): complete, small enough, recorded.

    python3 benchmarks/gpu/wheelset.py check      # every requirement met, the size under the limit (exit 1 if not)
    python3 benchmarks/gpu/wheelset.py manifest   # check, then write .whl/manifest.json (what check.py records)

Complete: every Requires-Dist of every carried wheel that applies on the machine (CPython 3.12, x86-64 Linux, no
extras) names a package that is carried (at a version the specifier takes) or in machine-packages.txt (at a version
it takes, where the list gives one). Size: what a call of the device tool sends, the working tree (tracked files
and untracked ones git does not ignore) plus .whl/, at most 64 MiB.
"""
from __future__ import annotations

import argparse
import datetime
import email.parser
import hashlib
import json
import os
import re
import subprocess
import sys
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
WHL = os.path.join(REPO, ".whl")
MACHINE_PACKAGES = os.path.join(HERE, "machine-packages.txt")
LIMIT_BYTES = 64 * 2**20
MACHINE_ENV = {"python_version": "3.12", "python_full_version": "3.12.3", "implementation_name": "cpython",
               "platform_python_implementation": "CPython", "sys_platform": "linux", "platform_system": "Linux",
               "platform_machine": "x86_64", "os_name": "posix", "extra": ""}

try:
    from packaging.markers import Marker
    from packaging.requirements import Requirement
    from packaging.version import Version
except ImportError:  # pip carries its own copy
    from pip._vendor.packaging.markers import Marker  # type: ignore
    from pip._vendor.packaging.requirements import Requirement  # type: ignore
    from pip._vendor.packaging.version import Version  # type: ignore


def canonical(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def wheel_metadata(path):
    """The METADATA of a wheel, parsed (email.message.Message)."""
    with zipfile.ZipFile(path) as z:
        names = [n for n in z.namelist() if n.endswith(".dist-info/METADATA") and n.count("/") == 1]
        if len(names) != 1:
            raise ValueError(f"{os.path.basename(path)}: expected one .dist-info/METADATA, found {names}")
        return email.parser.Parser().parsestr(z.read(names[0]).decode("utf-8"))


def machine_packages(path=MACHINE_PACKAGES):
    """{canonical name: version or None} of the machine's own packages."""
    packages = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if line:
                name, _, version = line.partition(" ")
                packages[canonical(name)] = version.strip() or None
    return packages


def applies(requirement):
    """Whether a requirement applies on the machine (its marker, without extras)."""
    return requirement.marker is None or requirement.marker.evaluate(MACHINE_ENV)


def unmet_requirements(wheels, machine):
    """[(wheel, requirement, why)] for each applicable Requires-Dist met neither by a carried wheel nor the machine."""
    carried = {}
    for path in wheels:
        meta = wheel_metadata(path)
        carried[canonical(meta["Name"])] = meta["Version"]
    unmet = []
    for path in wheels:
        for text in wheel_metadata(path).get_all("Requires-Dist") or []:
            requirement = Requirement(text)
            if not applies(requirement):
                continue
            name = canonical(requirement.name)
            version = carried.get(name, machine.get(name, "absent"))
            if name not in carried and name not in machine:
                unmet.append((os.path.basename(path), text, "neither carried nor on the machine"))
            elif version and requirement.specifier and not requirement.specifier.contains(Version(version),
                                                                                          prereleases=True):
                where = "carried" if name in carried else "on the machine"
                unmet.append((os.path.basename(path), text, f"{version} {where}"))
    return unmet


def duplicates(wheels):
    """Names carried more than once (two versions of one package stop the whole install)."""
    seen = {}
    for path in wheels:
        seen.setdefault(canonical(wheel_metadata(path)["Name"]), []).append(os.path.basename(path))
    return {name: files for name, files in seen.items() if len(files) > 1}


def travelling_size(repo=REPO, carried=(".whl",)):
    """Bytes a call sends: tracked files and untracked files git does not ignore, plus the carried folders."""
    listed = subprocess.run(["git", "-C", repo, "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            stdout=subprocess.PIPE, check=True).stdout.decode().split("\0")
    total = sum(os.path.getsize(os.path.join(repo, p)) for p in listed
                if p and os.path.isfile(os.path.join(repo, p)) and not os.path.islink(os.path.join(repo, p)))
    for folder in carried:
        for dirpath, _, filenames in os.walk(os.path.join(repo, folder)):
            total += sum(os.path.getsize(os.path.join(dirpath, f)) for f in filenames)
    return total


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check(whl=WHL, machine_path=MACHINE_PACKAGES, repo=REPO):
    """(problems, facts): what stops the carried set from working, and what it is."""
    wheels = sorted(os.path.join(whl, f) for f in os.listdir(whl) if f.endswith(".whl")) if os.path.isdir(whl) else []
    problems = []
    if not wheels:
        problems.append(f"no wheels in {whl}")
    for name, files in duplicates(wheels).items():
        problems.append(f"{name} carried more than once: {', '.join(files)}")
    for wheel, requirement, why in unmet_requirements(wheels, machine_packages(machine_path)):
        problems.append(f"{wheel} requires {requirement}: {why}")
    size = travelling_size(repo)
    if size > LIMIT_BYTES:
        problems.append(f"a call would send {size / 2**20:.1f} MiB, over the {LIMIT_BYTES // 2**20} MiB limit")
    return problems, {"wheels": wheels, "travelling_mib": round(size / 2**20, 2)}


def manifest(facts, repo=REPO):
    sys.path.insert(0, HERE)
    from check import tree_digest

    def git(*args):
        return subprocess.run(["git", "-C", repo, *args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              text=True, check=True).stdout.strip()
    timm_train = os.path.join(WHL, "timm_train.py")
    source_note = os.path.join(WHL, "timm_train.py.source")
    doc = {"created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "git_commit": git("rev-parse", "HEAD"),
           "git_dirty": bool(git("status", "--porcelain", "--", "el_plugins", "benchmarks", "tests", "setup.py")),
           "tree_sha256": tree_digest(repo), "travelling_mib": facts["travelling_mib"], "wheels": [], "files": {}}
    for path in facts["wheels"]:
        meta = wheel_metadata(path)
        doc["wheels"].append({"file": os.path.basename(path), "name": meta["Name"], "version": meta["Version"],
                              "bytes": os.path.getsize(path), "sha256": sha256(path),
                              "requires": meta.get_all("Requires-Dist") or []})
    if os.path.isfile(timm_train):
        source = open(source_note).read().strip() if os.path.isfile(source_note) else None
        doc["files"]["timm_train.py"] = {"bytes": os.path.getsize(timm_train), "sha256": sha256(timm_train),
                                         "source": source}
    return doc


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("check", "manifest"))
    args = parser.parse_args(argv)
    problems, facts = check()
    for wheel in facts["wheels"]:
        print(f"  {os.path.basename(wheel)} ({os.path.getsize(wheel) / 2**20:.2f} MiB)")
    print(f"a call sends {facts['travelling_mib']} MiB (limit {LIMIT_BYTES // 2**20} MiB)")
    for problem in problems:
        print(f"PROBLEM: {problem}")
    if problems:
        return 1
    if args.what == "manifest":
        doc = manifest(facts)
        tmp = os.path.join(WHL, ".manifest.json.tmp")
        with open(tmp, "w") as f:
            json.dump(doc, f, indent=1)
        os.replace(tmp, os.path.join(WHL, "manifest.json"))
        print(f"written {os.path.join(WHL, 'manifest.json')} (commit {doc['git_commit'][:12]}"
              f"{', uncommitted changes' if doc['git_dirty'] else ''})")
    print("the wheel set is complete")
    return 0


if __name__ == "__main__":
    sys.exit(main())
