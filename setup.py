"""el-plugins: the encouraging loss for fairseq and timm.

Besides the package, the wheel carries ``el_plugins.pth`` at the root of site-packages: at
interpreter start-up it installs the small import hook of ``el_plugins/_activation.py``, which
registers the fairseq criterion and the timm loss when (and only when) those frameworks are
imported. The ``el_plugins.activate`` entry points say what to load for which module.
"""
import os

import setuptools
from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
PTH = "el_plugins.pth"


BUILD_INFO = os.path.join("el_plugins", "_build_info.json")


def git_state():
    """{'commit': HEAD of the checkout being built, 'dirty': uncommitted changes under el_plugins/ or setup.py}
    (both None outside a git checkout, e.g. a build from the sdist)."""
    import subprocess

    def git(*args):
        return subprocess.run(["git", "-C", HERE, *args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              text=True, check=True).stdout.strip()
    try:
        if os.path.realpath(git("rev-parse", "--show-toplevel")) != os.path.realpath(HERE):
            raise ValueError("not this project's checkout")
        return {"commit": git("rev-parse", "HEAD"),
                "dirty": bool(git("status", "--porcelain", "--", "el_plugins", "setup.py", PTH))}
    except (OSError, ValueError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}


class BuildPyWithPth(build_py):
    """Copy el_plugins.pth next to the package, so it lands in site-packages itself, and record the git commit
    built in el_plugins/_build_info.json (results files name the code that produced them: el_plugins.provenance)."""

    def run(self):
        import json

        super().run()
        self.copy_file(os.path.join(HERE, PTH), os.path.join(self.build_lib, PTH), preserve_mode=0)
        with open(os.path.join(self.build_lib, BUILD_INFO), "w", encoding="utf-8") as f:
            json.dump(git_state(), f)

    def get_outputs(self, include_bytecode=1):
        return super().get_outputs(include_bytecode) + [os.path.join(self.build_lib, PTH),
                                                        os.path.join(self.build_lib, BUILD_INFO)]


if int(setuptools.__version__.split(".")[0]) < 77:  # older ones ignore license_expression with a warning
    raise SystemExit(f"el-plugins: building needs setuptools >= 77 (this is {setuptools.__version__}): "
                     "pip install -U setuptools")


def read_text(name):
    with open(os.path.join(HERE, name), encoding="utf-8") as f:
        return f.read()


def read_version():
    """The one version: ``__version__`` in el_plugins/__init__.py (read, not imported)."""
    for line in read_text(os.path.join("el_plugins", "__init__.py")).splitlines():
        if line.startswith("__version__"):
            return line.split("=")[1].strip().strip("\"'")
    raise RuntimeError("no __version__ in el_plugins/__init__.py")


setup(
    name="el-plugins",
    version=read_version(),
    description="The encouraging loss (Zhao et al., AAAI 2022) as a fairseq criterion and a timm loss",
    long_description=read_text("README.md"),
    long_description_content_type="text/markdown",
    license_expression="MIT",  # core metadata 2.4 (setuptools >= 77); no licence classifier, which it replaces
    license_files=["LICENSE"],
    # No project URLs: el-plugins has no public home page yet (README.md and CHANGELOG.md travel in the sdist).
    classifiers=[
        "Development Status :: 3 - Alpha",
        "Intended Audience :: Science/Research",
        "Intended Audience :: Developers",
        "Operating System :: POSIX :: Linux",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3 :: Only",
        "Programming Language :: Python :: 3.11",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
    python_requires=">=3.9",
    packages=find_packages(include=["el_plugins", "el_plugins.*"]),
    cmdclass={"build_py": BuildPyWithPth},
    install_requires=["torch>=2.9", "numpy"],  # the oldest tested: scripts/check_torch_versions.py
    extras_require={
        # fairseq 0.12.2 does not import on Python >= 3.11; fairseq-fixed is a packaged later
        # snapshot that does (install it with --no-build-isolation after torch, cython, numpy).
        "fairseq": ["fairseq>=0.12; python_version<'3.11'", "fairseq-fixed>=0.12.3; python_version>='3.11'"],
        "timm": ["timm>=1.0.23", "torchvision"],
        "hf": ["transformers>=5.0", "accelerate"],  # el_plugins.hf (accelerate: Trainer); tested with 5.25.0
        "scripts": ["sacrebleu>=2.0", "sacremoses", "sentencepiece", "tqdm", "matplotlib", "scikit-learn", "pyyaml"],
        "test": ["pytest", "scikit-learn", "pillow"],
    },
    entry_points={
        "el_plugins.activate": [
            "fairseq.criterions = el_plugins.fairseq_plugin.criterion",
            "timm.loss = el_plugins.timm_plugin.loss_factory",
        ],
        "console_scripts": [
            "el-demo = el_plugins.demo.__main__:main",
            "el-timm-train = el_plugins.timm_plugin.launcher:main",
            "el-prepare-iwslt = el_plugins.translation.prepare:main",
            "el-average-checkpoints = el_plugins.translation.average_checkpoints:main",
            "el-bleu = el_plugins.translation.bleu:main",
            "el-translation-train = el_plugins.translation.recipe:main",
            "el-analyze = el_plugins.analysis.cli:main",
        ],
    },
)
