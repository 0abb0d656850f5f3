"""Reading the evaluation and fine-tuning text files line by line, with errors that
name the file and the line."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Union


def numbered_lines(path: Union[str, Path]) -> Iterator[tuple[int, str]]:
    """``(line number, stripped text)`` of every line of ``path``.

    Raises:
      ValueError: ``path:line: not valid UTF-8 (byte N)``.
    """
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                yield number, raw.decode("utf-8").strip()
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}:{number}: not valid UTF-8 (byte {e.start})") from None
