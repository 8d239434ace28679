"""The fleet test's room: its namespace harness (netns.py) is imported by name."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.append(str(Path(__file__).parent))
