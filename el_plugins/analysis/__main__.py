"""python -m el_plugins.analysis: the same as el-analyze."""
import sys

from el_plugins.analysis.cli import main

sys.exit(main())
