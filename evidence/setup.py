"""el-plugins-evidence: the reproductions, their data, the README's headlines and the test helpers of el-plugins.

Not a product: it lives in el-plugins' repository and is installed from the checkout by scripts/setup.sh
(``pip install ./evidence``), so that its commands (el-data, el-reproduce) and the tests run as the docs say.
"""
from setuptools import find_packages, setup

setup(
    name="el-plugins-evidence",
    version="0.1.0",
    description="el-plugins' evidence: the paper's experiments rerun, their data, and the test helpers "
                "(from el-plugins' repository; not published)",
    license_expression="MIT",
    python_requires=">=3.9",
    packages=find_packages(include=["el_evidence", "el_evidence.*"]),
    install_requires=["el-plugins"],
    extras_require={
        # torchattacks declares requests~=2.25.1, which it does not use: scripts/setup.sh installs it with --no-deps
        "reproduce": ["torchvision", "torchattacks>=3.5.1", "scipy", "tqdm", "matplotlib"],
    },
    entry_points={"console_scripts": [
        "el-data = el_evidence.data.__main__:main",
        "el-reproduce = el_evidence.reproduce.__main__:main",
    ]},
)
