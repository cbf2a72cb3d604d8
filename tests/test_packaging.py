"""el-plugins as a user installs it: the wheel and the sdist that ``python -m build`` makes from this checkout,
each installed with ``--no-deps`` into a fresh virtual environment that sees this environment's torch,
fairseq and timm. There, only the installed ``el_plugins.pth`` may activate el-plugins: the fresh
environment reaches this one's site-packages through a plain path line in a ``.pth`` file, and Python
does not run the ``.pth`` files of a directory added that way. Also: the package metadata, what the
archives hold, and the CHANGELOG's versions against ``el_plugins.__version__``."""
import email.parser
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHECK_TIMEOUT = 300


def source_version():
    """``__version__`` as el_plugins/__init__.py of this checkout sets it."""
    text = (ROOT / "el_plugins" / "__init__.py").read_text(encoding="utf-8")
    found = re.findall(r'^__version__ = "([^"]+)"$', text, flags=re.M)
    assert len(found) == 1, f"el_plugins/__init__.py must set __version__ exactly once, found {found}"
    return found[0]


def clean_env():
    """The caller's environment without what would let a fresh environment import anything else."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "EL_PLUGINS_DISABLE")}
    env["PYTHONWARNINGS"] = "ignore"
    return env


def run(cmd, cwd, timeout=CHECK_TIMEOUT):
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=clean_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} exited {proc.returncode}:\n{proc.stdout[-6000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def dists(tmp_path_factory):
    """The sdist and the wheel, built by ``python -m build --no-isolation`` (the wheel from the unpacked sdist)
    with this environment's setuptools, nothing downloaded, from a copy of the checkout's top-level files
    and its package: what the sdist takes from them is setuptools' and MANIFEST.in's choice, and a build
    that needs anything else fails here."""
    work = tmp_path_factory.mktemp("packaging")
    src = work / "src"
    shutil.copytree(ROOT / "el_plugins", src / "el_plugins", ignore=shutil.ignore_patterns("__pycache__"))
    for path in ROOT.iterdir():
        if path.is_file():
            shutil.copy2(path, src / path.name)
    run([sys.executable, "-m", "build", "--no-isolation", "--outdir", work / "dist", src], cwd=work, timeout=600)
    sdists, wheels = sorted((work / "dist").glob("*.tar.gz")), sorted((work / "dist").glob("*.whl"))
    version = source_version()
    assert [p.name for p in sdists] == [f"el_plugins-{version}.tar.gz"], sdists
    assert [p.name for p in wheels] == [f"el_plugins-{version}-py3-none-any.whl"], wheels
    return {"sdist": sdists[0], "wheel": wheels[0]}


def package_modules():
    """The package's .py files, as paths relative to the repository root (el_plugins/...)."""
    return {p.relative_to(ROOT).as_posix() for p in (ROOT / "el_plugins").rglob("*.py")}


@pytest.mark.e2e
@pytest.mark.slow
def test_archives_hold_what_an_install_needs(dists):
    version = source_version()
    with zipfile.ZipFile(dists["wheel"]) as whl:
        names = set(whl.namelist())
        info = f"el_plugins-{version}.dist-info"
        record = whl.read(f"{info}/RECORD").decode()
        pth = whl.read("el_plugins.pth") if "el_plugins.pth" in names else None
    assert pth == (ROOT / "el_plugins.pth").read_bytes(), "the wheel's root (site-packages) must hold el_plugins.pth"
    assert re.search(r"^el_plugins\.pth,sha256=", record, flags=re.M), "el_plugins.pth missing from RECORD"
    assert package_modules() <= names, sorted(package_modules() - names)
    assert {f"{info}/METADATA", f"{info}/entry_points.txt"} <= names
    assert any(n.startswith(f"{info}/") and n.endswith("/LICENSE") for n in names), \
        sorted(n for n in names if n.startswith(info))

    with tarfile.open(dists["sdist"]) as tar:
        top = f"el_plugins-{version}/"
        members = {m.name[len(top):] for m in tar.getmembers() if m.name.startswith(top)}
    needed = {"setup.py", "PKG-INFO", "MANIFEST.in", "README.md", "CHANGELOG.md", "LICENSE", "el_plugins.pth"}
    assert needed <= members, sorted(needed - members)
    assert package_modules() <= members, sorted(package_modules() - members)


def fresh_venv(path):
    """A new virtual environment (no pip of its own) whose site-packages reaches this environment's
    through a plain path line; returns its python and its site-packages."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    python = path / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, stdout=subprocess.PIPE, text=True).stdout.strip())
    ours = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    (site / "project_venv.pth").write_text("".join(f"{p}\n" for p in ours))
    return python, site


# Run by the fresh environment's python: what its start-up did, and the installed distribution.
PROBE = r"""
import importlib.metadata, json, sys
hooks = [type(f).__module__ for f in sys.meta_path]
started = {name: getattr(sys.modules[name], "__file__", None) for name in sys.modules if name.startswith("el_plugins")}
out = dict(hooks=hooks, modules=started)
if sys.argv[1] == "installed":
    import el_plugins, timm.loss
    dist = importlib.metadata.distribution("el-plugins")
    out["installed"] = dict(
        package=el_plugins.__file__, version=el_plugins.__version__, el_in_timm="el" in timm.loss.LOSS_TYPES,
        location=str(dist.locate_file("")), files=[str(f) for f in dist.files], metadata=dist.read_text("METADATA"),
        console_scripts=sorted(ep.name for ep in dist.entry_points if ep.group == "console_scripts"))
print(json.dumps(out))
"""


def probe(python, cwd, what):
    out = run([python, "-c", PROBE, what], cwd=cwd)
    return json.loads(out.strip().splitlines()[-1])


def check_metadata(text):
    """The package metadata the wheel carries (METADATA of the installed distribution)."""
    msg = email.parser.Parser().parsestr(text)
    assert msg["Name"] == "el-plugins" and msg["Version"] == source_version()
    assert msg["Summary"] and "encouraging loss" in msg["Summary"]
    assert msg["License-Expression"] == "MIT", msg["License-Expression"]
    assert "LICENSE" in (msg.get_all("License-File") or []), msg.get_all("License-File")
    assert msg["Requires-Python"] == ">=3.9"
    requires = msg.get_all("Requires-Dist") or []
    assert any(re.fullmatch(r"torch\s*>=\s*2\.9", r) for r in requires), requires  # results/torch-versions
    classifiers = set(msg.get_all("Classifier") or [])
    assert {"Programming Language :: Python :: 3", "Programming Language :: Python :: 3.11"} <= classifiers, classifiers
    # There is no public home page: no URL in the metadata may point at a host.
    urls = (msg.get_all("Project-URL") or []) + (msg.get_all("Home-page") or [])
    assert not [u for u in urls if "://" in u], urls
    assert msg["Description-Content-Type"] == "text/markdown"
    assert msg.get_payload().strip() == (ROOT / "README.md").read_text(encoding="utf-8").strip(), \
        "the long description is not README.md"


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.parametrize("kind", ["wheel", "sdist"])
def test_installed_activates_without_user_dir(kind, dists, tmp_path):
    python, site = fresh_venv(tmp_path / "venv")
    before = probe(python, tmp_path, "bare")
    assert "el_plugins._activation" not in before["hooks"] and not before["modules"], \
        f"el-plugins is active in the fresh environment before it is installed: {before}"

    run([python, "-m", "pip", "install", "--no-deps", "--no-index", "--no-build-isolation", "--ignore-installed",
         "--no-cache-dir", "--disable-pip-version-check", "-q", dists[kind]], cwd=tmp_path, timeout=600)

    # The hook: el_plugins.pth in the fresh site-packages, recorded, run at start-up from there.
    assert (site / "el_plugins.pth").read_bytes() == (ROOT / "el_plugins.pth").read_bytes()
    after = probe(python, tmp_path, "installed")
    installed = after["installed"]
    assert "el_plugins._activation" in after["hooks"], after
    assert after["modules"]["el_plugins._activation"] == str(site / "el_plugins" / "_activation.py"), after
    assert installed["location"] == str(site) and "el_plugins.pth" in installed["files"], installed["location"]
    assert installed["package"] == str(site / "el_plugins" / "__init__.py"), installed["package"]
    assert installed["version"] == source_version()
    assert installed["el_in_timm"], "'el' is not in timm.loss.LOSS_TYPES in the fresh environment"
    check_metadata(installed["metadata"])

    # fairseq's train (its console scripts belong to the other environment) and every el-* script of this one,
    # run at the same time.
    scripts = sorted(p.name for p in python.parent.glob("el-*"))
    assert scripts == installed["console_scripts"] == PRODUCT_COMMANDS, (scripts, installed["console_scripts"])
    commands = {"fairseq-train": [python, "-m", "fairseq_cli.train", "--help"],
                **{name: [python.parent / name, "--help"] for name in scripts}}
    procs = {name: subprocess.Popen([str(c) for c in cmd], cwd=tmp_path, env=clean_env(), text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for name, cmd in commands.items()}
    outputs = {}
    for name, proc in procs.items():
        outputs[name] = proc.communicate(timeout=CHECK_TIMEOUT)[0]
        assert proc.returncode == 0, f"{name} --help exited {proc.returncode}:\n{outputs[name][-4000:]}"
        assert "usage:" in outputs[name], f"{name} --help printed no usage:\n{outputs[name][-4000:]}"
    assert "label_smoothed_encouraging_loss" in outputs["fairseq-train"], outputs["fairseq-train"][-4000:]


PRODUCT_COMMANDS = ["el-analyze", "el-average-checkpoints", "el-bleu", "el-demo", "el-prepare-iwslt", "el-timm-train",
                    "el-translation-train"]
"""The console scripts of el-plugins' wheel: what a user runs on their own work; el-data and el-reproduce are the
repository's evidence (./evidence), not the product's (issue 27)."""


@pytest.mark.e2e
def test_the_wheel_holds_the_product_only(dists, tmp_path):
    """No module of the evidence (el_evidence: the reproductions, their data, the headlines, the test helpers) in
    el-plugins' wheel, and its console scripts are the product's."""
    import zipfile

    names = zipfile.ZipFile(dists["wheel"]).namelist()
    assert not [n for n in names if n.startswith(("el_evidence/", "el_plugins/reproduce/", "el_plugins/data/",
                                                  "evidence/el_evidence/testing/"))], names
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    text = zipfile.ZipFile(dists["wheel"]).read(entry_points).decode()
    scripts = sorted(line.split("=")[0].strip() for line in text.split("[console_scripts]")[1].split("[")[0].splitlines()
                     if "=" in line)
    assert scripts == PRODUCT_COMMANDS, scripts


CHANGELOG_HEADING = re.compile(r"^## (Unreleased|(\d+(?:\.\d+)*) - \d{4}-\d{2}-\d{2})$")


def test_changelog_newest_release_is_the_version():
    """The rule a release keeps: the CHANGELOG's sections are an optional ``## Unreleased`` on top, then
    ``## X.Y.Z - YYYY-MM-DD`` newest first; the newest of those is ``el_plugins.__version__`` (a release
    renames Unreleased and sets the version in the same commit). Every section lists something."""
    text = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    headings = [line for line in text.splitlines() if line.startswith("## ")]
    bad = [h for h in headings if not CHANGELOG_HEADING.match(h)]
    assert not bad, f"CHANGELOG.md: headings must be '## Unreleased' or '## X.Y.Z - YYYY-MM-DD': {bad}"
    sections = [CHANGELOG_HEADING.match(h) for h in headings]
    if sections and sections[0].group(1) == "Unreleased":
        sections = sections[1:]
    assert sections, "CHANGELOG.md has no released version"
    assert all(s.group(1) != "Unreleased" for s in sections), "'## Unreleased' must be the first section"
    versions = [s.group(2) for s in sections]
    as_tuples = [tuple(map(int, v.split("."))) for v in versions]
    assert as_tuples == sorted(as_tuples, reverse=True) and len(set(as_tuples)) == len(as_tuples), \
        f"CHANGELOG.md: versions must be newest first, each once: {versions}"
    import el_plugins

    assert versions[0] == source_version() == el_plugins.__version__, \
        f"CHANGELOG.md's newest release is {versions[0]}, el_plugins.__version__ is {source_version()} " \
        f"(installed: {el_plugins.__version__})"
    bodies = re.split(r"^## .*$", text, flags=re.M)[1:]
    empty = [h for h, body in zip(headings, bodies) if not re.search(r"^- \S", body, flags=re.M)]
    assert not empty, f"CHANGELOG.md: sections without an entry: {empty}"


@pytest.mark.e2e
def test_the_installed_package_records_the_commit_it_was_built_from():
    """results files name the code that produced them (el_plugins.provenance): the version, and the commit that
    setup.py recorded when it built the installed package (this checkout's HEAD when scripts/setup.sh built it)."""
    import el_plugins
    from el_plugins.provenance import describe, provenance

    here = provenance()
    assert here["el_plugins_version"] == el_plugins.__version__
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    head = subprocess.run(["git", "-C", repo, "rev-parse", "HEAD"], stdout=subprocess.PIPE, text=True)
    if head.returncode == 0 and os.path.isfile(os.path.join(os.path.dirname(el_plugins.__file__), "_build_info.json")):
        assert here["git_commit"] == head.stdout.strip()  # scripts/setup.sh reinstalls on every new commit
    assert describe({"el_plugins_version": "9.9", "git_commit": "0123456789abcdef", "git_dirty": True}) == \
        "el-plugins 9.9, commit 0123456789ab, uncommitted changes"
    assert describe(None) == \
        "an el-plugins that did not record its version and commit (a run from before they were recorded)"
