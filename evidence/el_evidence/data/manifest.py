"""The SOURCES.json manifest of an el-data folder, read the same way for every corpus."""
import json
import os

from el_evidence.data.idx import DataError


def read_manifest(folder: str, name: str, fill_command: str) -> dict:
    """The parsed manifest ``folder/name``; a DataError naming ``fill_command`` (what fills the folder) when it is
    missing, or saying why when it cannot be read."""
    path = os.path.join(folder, name)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise DataError(f"{folder}: no {name} (fill the folder with `{fill_command} --out {folder}`)") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable ({exc})") from None
