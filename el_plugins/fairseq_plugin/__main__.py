"""Print the directory to pass as ``fairseq-train --user-dir`` (the fallback to automatic activation)."""
import os

print(os.path.dirname(os.path.abspath(__file__)))
